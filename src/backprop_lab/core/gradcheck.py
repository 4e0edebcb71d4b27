"""Finite-difference gradient check for an MLP's hand-written backward pass.

Everything runs in float64 on copies of the parameters and data, so float32 models are
checked at the precision that can actually tell a wrong gradient from rounding noise.

Which analytic gradients are checked (``path``): ``"plain"`` = ``model.loss_and_grads(p, X, y)``
(the readable reference), ``"fused"`` = the engine's cache-blocked path that training runs
(``model.loss_and_grads(p, X, y, ws)``), run in at least two blocks so that the accumulation of
block gradients is checked as well. The numerical side is always the plain ``model.loss``:
an independent forward pass. Every run's logged check uses ``"fused"`` (core.compute).

Two modes:

- ``"full"``: central differences ``(f(p + h e_i) - f(p - h e_i)) / 2h`` for EVERY element
  of EVERY parameter, biases included (2 loss evaluations per element).
- ``"directional"``: for random unit directions ``d`` (drawn from the ``"gradcheck"`` rng
  stream) compare ``(f(p + h d) - f(p - h d)) / 2h`` with ``<grad, d>``; once per parameter
  (d restricted to that tensor) and once over all parameters jointly. Cost does not grow with
  the number of elements, so it suits large models.

Relative error (per element, or per direction)::

    rel_error = |a - n| / max(|a| + |n|, REL_ERROR_FLOOR)

The floor exists because the numerical gradient carries ABSOLUTE noise: the loss f is rounded
to ~1e-16 * |f|, so ``(f+ - f-) / 2h`` with h = 1e-6 is only good to ~1e-10 * |f| (measured
<= 2.1e-10 on O(1) losses: see docs/gradcheck.md). Without a floor a correct gradient of size
1e-7 would show a "relative error" near 1e-3. The floor used is
``REL_ERROR_FLOOR * max(1, |f|)`` with REL_ERROR_FLOOR = 1e-3: with the default threshold 1e-6
a gradient smaller than the floor is held to an absolute error of 1e-9 * max(1, |f|) (~5x the
noise), anything larger to a relative error of 1e-6. Both are far stricter than needed to see
a real bug (a wrong factor or a missing term gives errors of 1e-2 .. 1).

Reading the number (float64, h = 1e-6):

- < 1e-7  the gradient is correct (correct nets measure 1e-11 .. 1.5e-7, the top of that range
          being floor-limited tiny gradients);
- 1e-7 .. 1e-6  still correct for our purposes; this is the default threshold (1e-6);
- ~1e-4   typical of a +-h step that crossed a ReLU kink: such elements are detected, not
          counted in the statistics, and reported separately (``n_kink_skipped``,
          ``kink_max_rel_error``);
- > 1e-2  the gradient is wrong.

Kinks: for ``relu``/``leaky_relu`` nets, an element (or direction) whose +h or -h forward
pass changes the sign pattern of any hidden pre-activation (``model.preactivations``) has
crossed the non-differentiable point, so the central difference is not a derivative there.

Dead units: an element whose analytic and numerical gradients are both exactly 0 is counted
in ``n_zero`` and not in ``n_checked``: 0 vs 0 proves nothing about the backward pass (the
seed notebook's check "passed" two of its three samples that way).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np

REL_ERROR_FLOOR = 1e-3
DEFAULT_THRESHOLD = 1e-6
KINK_ACTIVATIONS = ("relu", "leaky_relu")
MODES = ("full", "directional")
PATHS = ("plain", "fused")


@dataclass
class ParamCheck:
    """Result for one parameter tensor.

    In full mode the counts are elements; in directional mode ``n_checked`` counts directions.
    ``worst_index`` is the element (full) or direction number (directional) with the largest
    error, with its analytic and numerical values, so a report points at the bug.
    """

    name: str
    shape: tuple[int, ...]
    n_elements: int
    n_checked: int
    n_kink_skipped: int
    n_zero: int
    max_rel_error: float
    median_rel_error: float
    kink_max_rel_error: float
    passed: bool
    worst_index: tuple[int, ...] | int | None = None
    worst_analytic: float | None = None
    worst_numerical: float | None = None


@dataclass
class GradCheckReport:
    """Outcome of :func:`check_gradients`.

    ``floor`` is the relative-error floor actually used (REL_ERROR_FLOOR * max(1, |loss|)).
    ``per_param[name]`` holds one :class:`ParamCheck` per parameter; ``overall`` is the joint
    all-parameter directional check (directional mode only, else None). ``max_rel_error`` is
    the maximum over everything that was checked (kink-skipped elements excluded).
    """

    mode: str
    h: float
    threshold: float
    floor: float
    passed: bool
    max_rel_error: float
    n_kink_skipped: int
    per_param: dict[str, ParamCheck]
    overall: ParamCheck | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    path: str = "plain"  # which analytic gradients were checked (module docstring)

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict (non-finite floats become None)."""
        return _jsonable(asdict(self))

    def failed_params(self) -> list[str]:
        return [name for name, pc in self.per_param.items() if not pc.passed]


def rel_error(a, n, floor: float = REL_ERROR_FLOOR):
    """Elementwise ``|a - n| / max(|a| + |n|, floor)``; non-finite inputs give inf."""
    a = np.asarray(a, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        err = np.abs(a - n) / np.maximum(np.abs(a) + np.abs(n), floor)
    return np.where(np.isfinite(err), err, np.inf)


def check_gradients(model, params, X, y, *, h=1e-6, mode="full", n_directions=32, rng=None,
                    threshold=DEFAULT_THRESHOLD, path="plain") -> GradCheckReport:
    """Compare ``model.loss_and_grads`` with central differences of ``model.loss``.

    model: an object with ``loss_and_grads(params, X, y) -> (loss, grads)``,
        ``loss(params, X, y) -> float``, ``preactivations(params, X) -> list[(N, H_l)]`` and
        ``activation`` (kink detection runs for relu/leaky_relu only).
    params: ``{name: array}`` (any float dtype; checked on float64 copies, never modified).
    X: (N, D); y: (N,) of 0/1.
    h: finite-difference step. mode: "full" or "directional".
    n_directions: directions per parameter (and for the joint check) in directional mode.
    rng: np.random.Generator for the directions; default ``make_rng(0, "gradcheck")``.
    threshold: pass iff every checked relative error is <= threshold.
    path: "plain" or "fused" (module docstring); "fused" needs ``model.workspace(n, dtype, rows)``.
    """
    if mode not in MODES:
        raise ValueError(f"gradcheck mode={mode!r} is not valid; use one of {', '.join(MODES)}")
    if path not in PATHS:
        raise ValueError(f"gradcheck path={path!r} is not valid; use one of {', '.join(PATHS)}")
    if not h > 0:
        raise ValueError(f"gradcheck h={h!r} is not valid; use a positive step such as 1e-6")
    if mode == "directional" and (isinstance(n_directions, bool)
                                  or not isinstance(n_directions, (int, np.integer))
                                  or n_directions < 1):
        raise ValueError(f"gradcheck n_directions={n_directions!r} is not valid; "
                         "use a positive integer such as 32")
    if not threshold > 0:
        raise ValueError(f"gradcheck threshold={threshold!r} is not valid; "
                         "use a positive number such as 1e-6")
    start = time.perf_counter()
    p64 = {k: np.array(v, dtype=np.float64, copy=True) for k, v in params.items()}
    X64 = np.asarray(X, dtype=np.float64)
    y64 = np.asarray(y, dtype=np.float64)

    loss0, grads = _analytic(model, p64, X64, y64, path)
    if set(grads) != set(p64):
        raise ValueError(f"gradcheck: backward returned gradients for {sorted(grads)} "
                         f"but the parameters are {sorted(p64)}")
    if not np.isfinite(loss0):
        raise ValueError(f"gradcheck: the loss at the given parameters is {loss0}; "
                         "check a finite (not diverged) model")
    grads = {k: np.asarray(g, dtype=np.float64) for k, g in grads.items()}
    for k in p64:
        if grads[k].shape != p64[k].shape:
            raise ValueError(f"gradcheck: gradient {k!r} has shape {grads[k].shape}, "
                             f"parameter has {p64[k].shape}")

    probe = _KinkProbe(model, p64, X64)
    floor = REL_ERROR_FLOOR * max(1.0, abs(float(loss0)))  # noise grows with |f|: see above
    if mode == "full":
        per_param = {k: _check_full(model, p64, X64, y64, k, grads[k], h, threshold, probe,
                                    floor) for k in p64}
        overall = None
    else:
        if rng is None:
            from backprop_lab.core.rng import make_rng  # engine module; imported lazily
            rng = make_rng(0, "gradcheck")
        per_param = {k: _check_directional(model, p64, X64, y64, [k], grads, h, threshold,
                                           probe, floor, n_directions, rng, name=k) for k in p64}
        overall = _check_directional(model, p64, X64, y64, list(p64), grads, h, threshold,
                                     probe, floor, n_directions, rng, name="all")

    checks = list(per_param.values()) + ([overall] if overall is not None else [])
    max_err = max((c.max_rel_error for c in checks), default=0.0)
    notes = [f"{c.name}: nothing checked (all {c.n_zero} zero, {c.n_kink_skipped} at a kink)"
             for c in checks if c.n_checked == 0]
    return GradCheckReport(
        mode=mode, h=h, threshold=threshold, floor=floor,
        passed=all(c.passed for c in checks), max_rel_error=float(max_err),
        n_kink_skipped=sum(c.n_kink_skipped for c in per_param.values()),
        per_param=per_param, overall=overall, seconds=time.perf_counter() - start, notes=notes,
        path=path)


def _analytic(model, params, X, y, path):
    """(loss, grads) of the chosen path, on fresh arrays (the fused path reuses its buffers)."""
    if path == "plain":
        return model.loss_and_grads(params, X, y)
    n = X.shape[0]
    ws = model.workspace(n, np.float64, rows=max(1, (n + 1) // 2))  # >= 2 blocks when n >= 2
    loss, grads = model.loss_and_grads(params, X, y, ws)
    return loss, {k: np.array(g, copy=True) for k, g in grads.items()}


class _KinkProbe:
    """Tells whether a perturbed parameter set changed any hidden pre-activation's sign."""

    def __init__(self, model, params, X):
        self.active = getattr(model, "activation", None) in KINK_ACTIVATIONS
        self.model, self.X = model, X
        self.base = self._pattern(params) if self.active else None

    def _pattern(self, params):
        return [z > 0 for z in self.model.preactivations(params, self.X)]  # list of (N, H_l)

    def loss_and_crossed(self, params, y) -> tuple[float, bool]:
        """``(model.loss(params, X, y), crossed(params))``; for an ``MLP`` (whose ``loss`` and
        ``forward`` are its own) from one forward pass: the input of layer l+1 is A_l, and for
        relu and leaky relu A_l > 0 exactly where Z_l > 0, so the pattern is read off the loss's
        cache instead of a second pass (the same loss, the same booleans: tests/test_gradcheck.py)."""
        from backprop_lab.core.losses import bce_loss  # engine modules; imported lazily
        from backprop_lab.core.mlp import MLP

        model = self.model
        if not (self.active and type(model).loss is MLP.loss and type(model).forward is MLP.forward):
            return model.loss(params, self.X, y), self.crossed(params)
        logits, cache = model.forward(params, self.X)
        pattern = [lin[0] > 0 for lin, _ in cache[1:]]  # A_1 .. A_{L-1} > 0, each (N, H_l)
        crossed = any(not np.array_equal(a, b) for a, b in zip(self.base, pattern, strict=True))
        return bce_loss(logits, y), crossed

    def crossed(self, params) -> bool:
        if not self.active:
            return False
        return any(not np.array_equal(a, b) for a, b in zip(self.base, self._pattern(params), strict=True))


def _check_full(model, params, X, y, name, grad, h, threshold, probe, floor) -> ParamCheck:
    p = params[name]
    flat = p.reshape(-1)  # a view: writing flat[i] perturbs params[name] in place
    numerical = np.empty(flat.size)
    kink = np.zeros(flat.size, dtype=bool)
    for i in range(flat.size):
        orig = flat[i]
        flat[i] = orig + h
        f_plus, kinked = probe.loss_and_crossed(params, y)
        flat[i] = orig - h
        f_minus, kinked_minus = probe.loss_and_crossed(params, y)
        kinked = kinked or kinked_minus
        flat[i] = orig  # restore exactly before the next element
        numerical[i] = (f_plus - f_minus) / (2 * h)
        kink[i] = kinked
    analytic = grad.reshape(-1)
    return _summarise(name, p.shape, flat.size, analytic, numerical, kink, threshold, floor,
                      index_of=lambda i: tuple(int(j) for j in np.unravel_index(i, p.shape)))


def _check_directional(model, params, X, y, names, grads, h, threshold, probe, floor,
                       n_directions, rng, name) -> ParamCheck:
    sizes = [params[k].size for k in names]
    numerical = np.empty(n_directions)
    analytic = np.empty(n_directions)
    kink = np.zeros(n_directions, dtype=bool)
    originals = {k: params[k].copy() for k in names}
    g = np.concatenate([grads[k].reshape(-1) for k in names])  # (P,)
    for j in range(n_directions):
        d = rng.standard_normal(sum(sizes))
        d /= np.linalg.norm(d)  # unit direction over the chosen tensors, (P,)
        analytic[j] = g @ d
        f = []
        for sign in (1.0, -1.0):
            offset = 0
            for k, size in zip(names, sizes, strict=True):
                params[k][...] = originals[k] + sign * h * d[offset:offset + size].reshape(
                    params[k].shape)
                offset += size
            loss, kinked = probe.loss_and_crossed(params, y)
            f.append(loss)
            kink[j] |= kinked
        numerical[j] = (f[0] - f[1]) / (2 * h)
    for k in names:
        params[k][...] = originals[k]
    n_elements = int(sum(sizes))
    shape = params[names[0]].shape if len(names) == 1 else (n_elements,)
    return _summarise(name, shape, n_elements, analytic, numerical, kink, threshold, floor,
                      index_of=int)


def _summarise(name, shape, n_elements, analytic, numerical, kink, threshold, floor, index_of):
    err = rel_error(analytic, numerical, floor)
    zero = (analytic == 0) & (numerical == 0) & ~kink
    checked = ~kink & ~zero
    if checked.any():
        errs = err[checked]
        worst = int(np.flatnonzero(checked)[np.argmax(errs)])
        max_err, median_err = float(errs.max()), float(np.median(errs))
    else:
        worst, max_err, median_err = None, 0.0, 0.0
    return ParamCheck(
        name=name, shape=tuple(int(s) for s in shape), n_elements=int(n_elements),
        n_checked=int(checked.sum()), n_kink_skipped=int(kink.sum()), n_zero=int(zero.sum()),
        max_rel_error=max_err, median_rel_error=median_err,
        kink_max_rel_error=float(err[kink].max()) if kink.any() else 0.0,
        passed=bool(max_err <= threshold),
        worst_index=None if worst is None else index_of(worst),
        worst_analytic=None if worst is None else float(analytic[worst]),
        worst_numerical=None if worst is None else float(numerical[worst]))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
