"""The training loop: ``Trainer`` (the bare engine step) and ``train`` (history, diagnostics, divergence).

History row ``i`` describes the parameters at the *start* of epoch ``history["epoch"][i]`` (as
in the seed notebook, whose loss curve records the loss before each update):

- ``train/loss``, ``train/acc``: full batch: taken from the training forward pass itself; mini
  batch: one extra forward + backward over the whole training set at the start of the epoch.
- ``test/loss``, ``test/acc``: the test set at the same parameters.
- ``grad_norm/W{l}``: Frobenius norm of the full-training-set gradient of ``W{l}``.
- ``update_ratio/W{l}``: ||W{l} after the epoch - W{l} before|| / ||W{l} before|| (0/0 -> 0;
  a zero weight matrix that moves gives ||update|| / 1e-12, i.e. huge, on purpose).
- ``dead_relu/layer{l}`` (relu, leaky_relu): fraction of the units of hidden layer l whose
  activation is <= 0 for every training sample.

Stopping early: a ``callback`` that returns True stops training after that recorded epoch, with
``status="stopped"`` and ``stopped_epoch`` = the number of epochs run (a pruner's hook; the
``final/*`` metrics are taken at the parameters reached, as for a finished run).

Divergence: a non-finite training loss, parameter or gradient at the start of an epoch (for
mini-batches: a non-finite parameter at the start, or batch loss during it), checked the same
way every epoch whatever ``log_every`` is, or non-finite parameters at the end, stops the run
with ``status="diverged"`` and ``diverged_epoch`` = the epoch at which it was detected; the
history keeps only the epochs before it (all finite). The ``final/*`` metrics of a diverged run
repeat its last finite history row (NaN if there is none), while ``params`` are returned as
they are (blown up).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .losses import bce_loss
from .mlp import flat_buffer

_TINY = 1e-12


@dataclass
class TrainResult:
    history: dict[str, np.ndarray]
    status: str  # "finished" | "diverged" | "stopped"
    diverged_epoch: int | None
    final: dict[str, float]
    params: dict[str, np.ndarray]
    seconds: float
    metric_names: list[str] = field(default_factory=list)
    stopped_epoch: int | None = None  # status "stopped": epochs run before the callback said stop


def flat_params(model, params):
    """A copy of ``params`` in one flat buffer: ``(flat, views)`` (``mlp.flat_buffer`` in
    ``model.param_names`` order), what ``Trainer(..., flat=flat)`` steps in one call; ``(None,
    plain copies)`` when the params do not share one dtype."""
    dtypes = {v.dtype for v in params.values()}
    if len(dtypes) != 1 or set(params) != set(model.param_shapes):
        return None, {k: v.copy() for k, v in params.items()}
    return flat_buffer(model.param_shapes, dtypes.pop(), values=params)


class Trainer:
    """The bare engine: forward + backward + update, no diagnostics, all buffers reused.

    ``Trainer(model, params, optimizer, X, y, rng=None, flat=None)`` updates ``params`` in place;
    ``epoch()`` runs one epoch (one step for a full-batch optimizer, shuffled mini-batches
    otherwise; ``rng`` is the "shuffle" stream) and returns the last step's loss. This is what
    the speed benchmark times. X: (N, D) and y: (N,) are cast to the params' dtype once.
    ``flat``: the buffer that ``params`` are views of (``flat_params``); an elementwise optimizer
    (``optimizer.elementwise``, all of them) then updates every parameter in one call per
    operation, ``state`` holding one entry ``"all"`` for the whole buffer (same values, entry by
    entry, as one state per name: tests/test_train.py).
    """

    def __init__(self, model, params, optimizer, X, y, rng=None, flat=None):
        self.model, self.params, self.optimizer = model, params, optimizer
        self.dtype = params["W1"].dtype
        self.X = np.ascontiguousarray(X, dtype=self.dtype)
        self.y = np.ascontiguousarray(y, dtype=self.dtype)
        self.n = self.X.shape[0]
        if flat is not None and optimizer.elementwise:
            _check_flat(model, params, flat)
            self.flat = {"all": flat}
            self.state = optimizer.init_state(self.flat)
        else:
            self.flat = None
            self.state = optimizer.init_state(params)
        self.full = optimizer.batch_size is None
        self.ws_full = model.workspace(self.n, self.dtype)
        if not self.full:
            if optimizer.shuffle and rng is None:
                raise ValueError("a shuffling mini-batch optimizer needs rng (the 'shuffle' stream)")
            self.rng = rng
            self.bs = min(int(optimizer.batch_size), self.n)
            sizes = {self.bs, self.n % self.bs or self.bs}
            self.ws = {b: model.workspace(b, self.dtype) for b in sizes}
            self.Xb = {b: np.empty((b, self.X.shape[1]), self.dtype) for b in sizes}
            self.yb = {b: np.empty(b, self.dtype) for b in sizes}
        self.last_logits = None

    def update(self, ws) -> None:
        """The optimizer's step with the gradients the last ``loss_and_grads(..., ws)`` left in ``ws``."""
        if self.flat is not None:
            self.optimizer.step(self.flat, {"all": ws.grad_flat}, self.state)
        else:
            self.optimizer.step(self.params, ws.grads, self.state)

    def step(self) -> float:
        """One full-batch step; returns the loss at the parameters before the update."""
        loss, _ = self.model.loss_and_grads(self.params, self.X, self.y, self.ws_full)
        self.update(self.ws_full)
        return loss

    def epoch(self) -> float:
        if self.full:
            return self.step()
        order = self.rng.permutation(self.n) if self.optimizer.shuffle else np.arange(self.n)
        loss = 0.0
        for start in range(0, self.n, self.bs):
            idx = order[start:start + self.bs]
            b = idx.shape[0]
            Xb, yb = np.take(self.X, idx, axis=0, out=self.Xb[b]), np.take(self.y, idx, out=self.yb[b])
            loss, _ = self.model.loss_and_grads(self.params, Xb, yb, self.ws[b])
            if not math.isfinite(loss):
                return loss
            self.update(self.ws[b])
        return loss


def _check_flat(model, params, flat) -> None:
    start = flat.ctypes.data
    for k, shape in model.param_shapes.items():
        p = params[k]
        if p.base is not flat or p.ctypes.data != start or p.shape != shape or not p.flags.c_contiguous:
            raise ValueError(f"Trainer: params[{k!r}] is not the next view of flat (use flat_params)")
        start += p.nbytes


def _acc(logits, y) -> float:
    # p >= 0.5 exactly when the logit is >= 0; count / n is the same float as np.mean of the
    # booleans, without mean's Python-level wrapper (this runs twice per epoch).
    return np.count_nonzero((logits >= 0) == y) / logits.shape[0]


def _fraction(mask) -> float:
    return np.count_nonzero(mask) / mask.size


#: Below this the sum of squares may have lost digits to underflow (subnormal squares).
_SQ_MIN = 1e-280


def _norm(a) -> float:
    """Frobenius norm that does not overflow for entries up to the float64 maximum.

    One dot product when the sum of squares is a normal float (every epoch of a run that
    neither explodes nor vanishes); otherwise `_norm_scaled`, the reference, which scales by
    the largest entry first (tests/test_train.py holds the two within an ulp or two).
    """
    a = a.ravel()
    sq = float(np.dot(a, a))
    if _SQ_MIN < sq < math.inf:
        return math.sqrt(sq)
    return _norm_scaled(a)


def _norm_scaled(a) -> float:
    a = a.ravel()
    scale = float(np.max(np.abs(a)))
    if scale == 0.0 or not math.isfinite(scale):
        return scale
    a = a / scale
    return scale * math.sqrt(float(np.dot(a, a)))


def _finite(*arrays) -> bool:
    """True if every entry is finite (one reduction per array: an inf or NaN makes the sum
    non-finite; so, harmlessly, would finite entries whose sum overflows float64)."""
    return math.isfinite(sum(float(np.add.reduce(a, axis=None)) for a in arrays))


#: Above this sum of squares an entry may reach ~1e150, where `_finite`'s sums could overflow.
_SQ_SAFE = 1e300


def _finite_flat(flats, arrays) -> bool:
    """``_finite(*arrays)`` for arrays that are views of the buffers ``flats``, in one dot product
    per buffer: a sum of squares <= 1e300 bounds every entry by 1e150, so no sum of a few
    million of them overflows and `_finite` is True; anything else (inf, NaN, huge) asks `_finite`
    itself, so both agree on every input, overflowing sums included (tests/test_train.py)."""
    if all(float(np.dot(f, f)) <= _SQ_SAFE for f in flats):
        return True
    return _finite(*arrays)


def metric_names(model) -> list[str]:
    """The per-epoch history keys (MLflow metric names) ``train`` produces for ``model``."""
    L = model.n_layers
    names = ["train/loss", "train/acc", "test/loss", "test/acc"]
    names += [f"grad_norm/W{l}" for l in range(1, L + 1)]
    names += [f"update_ratio/W{l}" for l in range(1, L + 1)]
    if model.activation in ("relu", "leaky_relu"):
        names += [f"dead_relu/layer{l}" for l in range(1, L)]
    return names


def snapshot_schedule(epochs: int) -> list[int]:
    """Log-spaced epochs at which to look at a model while it trains: 0, 10, 100, ... below
    ``epochs`` (the same steps for every run, so runs line up; the trained parameters are the
    last picture, at step ``epochs``)."""
    out, e = [0], 10
    while e < epochs:
        out.append(e)
        e *= 10
    return out


def train(model, params, dataset, optimizer, *, epochs, rng, log_every=1, callback=None,
          snapshot_epochs=(), on_snapshot=None) -> TrainResult:
    """Train a copy of ``params`` for ``epochs`` epochs; see the module docstring for the history.

    rng: the "shuffle" stream (unused by full-batch optimizers). log_every: record the metrics
    every ``log_every`` epochs (epoch 0 and the last epoch are always recorded).
    callback(epoch, metrics) is called after each recorded epoch; returning True stops training.
    on_snapshot(epoch, params) is called at the start of each epoch in ``snapshot_epochs`` that
    the run reaches with finite parameters (the parameters after ``epoch`` updates); ``params``
    is the live dict: read it or copy it, never modify it. ``TrainResult.seconds`` leaves out
    the time spent in ``on_snapshot`` (the caller's drawing is not training).
    """
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(log_every, bool) or not isinstance(log_every, (int, np.integer)) or log_every < 1:
        raise ValueError(f"log_every must be a positive integer, got {log_every!r}")
    t0 = time.perf_counter()
    flat, params = flat_params(model, params)  # a copy; one buffer, so one call per update rule
    tr = Trainer(model, params, optimizer, dataset.X_train, dataset.y_train, rng, flat=flat)
    X_test = np.ascontiguousarray(dataset.X_test, dtype=tr.dtype)
    y_test = np.ascontiguousarray(dataset.y_test, dtype=tr.dtype)
    test_out = model.forward_buffers(X_test.shape[0], tr.dtype)
    test_scratch = (np.empty(X_test.shape[0], tr.dtype), np.empty(X_test.shape[0], tr.dtype))
    ws = tr.ws_full
    L = model.n_layers
    W_names = [f"W{l}" for l in range(1, L + 1)]
    track_dead = model.activation in ("relu", "leaky_relu")
    hidden = range(1, L) if track_dead else range(0)
    names = metric_names(model)
    logged = [e for e in range(epochs) if e % log_every == 0 or e == epochs - 1]
    rows = []  # one list of the `names` values per recorded epoch
    hist_epoch = np.asarray(logged, dtype=np.int64)
    # The update ratios: a copy of the parameters before the step (one call over the flat
    # buffer), then the update in its place. 1-D views of the weights for the norms.
    before_flat, before = flat_params(model, params)
    flats, all_flats = ([flat], [flat, ws.grad_flat]) if flat is not None else ([], [])
    W_params = [params[k].reshape(-1) for k in W_names]
    W_before = [before[k].reshape(-1) for k in W_names]
    W_grads = [ws.grads[k].reshape(-1) for k in W_names]
    row, status, diverged_epoch, stopped_epoch = 0, "finished", None, None
    values = list(params.values())
    snapshots = set(snapshot_epochs) if on_snapshot is not None else set()
    snapshot_s = 0.0

    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for epoch in range(epochs):
            is_log = row < len(logged) and logged[row] == epoch
            # One divergence rule for every epoch, logged or not: the loss, parameters and
            # gradient at the start of the epoch must be finite (mini-batch: params, and every
            # batch loss during the epoch).
            if tr.full or is_log:
                # Full batch: this is the training step's own forward/backward (Trainer.step).
                loss, grads = model.loss_and_grads(params, tr.X, tr.y, ws, track_units=is_log and track_dead)
                ok = math.isfinite(loss) and (_finite_flat(all_flats, (*values, *grads.values()))
                                              if flats else _finite(*values, *grads.values()))
            else:
                ok = _finite_flat(flats, values) if flats else _finite(*values)
            if not ok:
                status, diverged_epoch = "diverged", epoch
                break
            if epoch in snapshots:
                t_snap = time.perf_counter()
                on_snapshot(epoch, params)
                snapshot_s += time.perf_counter() - t_snap
            if is_log:
                test_logits = model.forward(params, X_test, out=test_out)[0]
                # In the order of `names`: train/*, test/*, grad_norm/*, (after the step)
                # update_ratio/*, dead_relu/*.
                vals = [loss, _acc(ws.logits, tr.y), bce_loss(test_logits, y_test, test_scratch),
                        _acc(test_logits, y_test), *map(_norm, W_grads)]
                if flat is not None:
                    np.copyto(before_flat, flat)
                else:
                    for k in W_names:
                        np.copyto(before[k], params[k])
            if tr.full:
                tr.update(ws)
            elif not math.isfinite(tr.epoch()):
                status, diverged_epoch = "diverged", epoch
                break
            if is_log:
                w_norms = list(map(_norm, W_before))
                # The buffer holds the update from here on.
                if flat is not None:
                    np.subtract(flat, before_flat, out=before_flat)
                else:
                    for w, w0 in zip(W_params, W_before, strict=True):
                        np.subtract(w, w0, out=w0)
                for w, du in zip(w_norms, map(_norm, W_before), strict=True):
                    vals.append(0.0 if du == 0 else du / max(w, _TINY))
                for l in hidden:  # a unit is dead when no training sample activates it
                    vals.append(_fraction(ws.unit_level[l] <= 0))
                if not all(map(math.isfinite, vals)):  # only near float64's limit
                    status, diverged_epoch = "diverged", epoch
                    break
                rows.append(vals)
                row += 1
                if callback is not None and callback(epoch, dict(zip(names, vals, strict=True))):
                    status, stopped_epoch = "stopped", epoch + 1
                    break
        if status != "diverged" and not _finite(*values):
            status, diverged_epoch, stopped_epoch = "diverged", stopped_epoch or epochs, None
        seconds = time.perf_counter() - t0 - snapshot_s
        columns = np.array(rows, dtype=np.float64).reshape(row, len(names)).T.copy()
        history = {"epoch": hist_epoch[:row], **dict(zip(names, columns, strict=True))}
        if status != "diverged":
            final = {
                "final/train_loss": model.loss(params, tr.X, tr.y),
                "final/train_acc": _acc(model.forward(params, tr.X)[0], tr.y),
                "final/test_loss": model.loss(params, X_test, y_test),
                "final/test_acc": _acc(model.forward(params, X_test)[0], y_test),
            }
        else:
            final = {f"final/{k.replace('/', '_')}": float(history[k][-1]) if row else math.nan
                     for k in ("train/loss", "train/acc", "test/loss", "test/acc")}
        final["final/epochs_run"] = float(diverged_epoch if diverged_epoch is not None
                                          else stopped_epoch or epochs)
    return TrainResult(history=history, status=status, diverged_epoch=diverged_epoch, final=final,
                       params=params, seconds=seconds, metric_names=names, stopped_epoch=stopped_epoch)
