"""The compute part of a run: gradient check at init, training, gradient check after training.

Core only (numpy + the engine): no Hydra, no MLflow. `tracking.record` logs what `compute`
returns; `scripts/bench_tracking.py` reuses it for the naive-logging comparison.

Both gradient checks verify the gradients of the path that trains (the fused, cache-blocked
`loss_and_grads(..., ws)`) against finite differences of the plain forward pass, in float64.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from backprop_lab.core.data import load_dataset
from backprop_lab.core.gradcheck import check_gradients
from backprop_lab.core.mlp import MLP
from backprop_lab.core.optim import make_optimizer
from backprop_lab.core.rng import make_rng
from backprop_lab.core.train import train

if TYPE_CHECKING:
    from backprop_lab.config.schema import RunConfig  # type only


@dataclass
class Outcome:
    """What the compute part hands to the logging part."""

    status: str
    diverged_epoch: int | None
    history: dict[str, np.ndarray]
    params: dict[str, np.ndarray]
    scalars: dict[str, float]  # final/*, time/*, gradcheck/*
    gradcheck: dict[str, Any]  # gradcheck.json


def dataset_for(rc: RunConfig):
    """The run's dataset (data.Dataset), drawn from its own "data" stream."""
    return load_dataset(rc.data.name, rng=make_rng(rc.seed, "data"), dtype=rc.train.dtype,
                        n_samples=rc.data.n_samples, noise=rc.data.noise,
                        test_fraction=rc.data.test_fraction)


def model_for(rc: RunConfig, dataset) -> MLP:
    """The run's network for `dataset`'s input width."""
    return MLP(rc.model.layer_sizes(dataset.X_train.shape[1]), activation=rc.model.activation)


def compute_run(rc: RunConfig, progress=None, **hooks) -> Outcome:
    """`compute` of the run's own dataset and model: a run's whole computation, nothing logged
    (the compute floor of the benchmarks, `make reproduce`, a sweep's jobs computed ahead);
    hooks: `compute`'s keyword arguments (snapshot_epochs, on_snapshot, ...)."""
    dataset = dataset_for(rc)
    return compute(rc, dataset, model_for(rc, dataset), progress, **hooks)


def compute(rc: RunConfig, dataset, model, progress=None, on_trained=None, *, on_epoch=None,
            snapshot_epochs=(), on_snapshot=None) -> Outcome:
    """Gradient check at init, training, gradient check of the trained params.

    dataset: data.Dataset (X_train: (N, 2), ...); model: mlp.MLP; progress: a train callback.
    on_epoch(epoch, metrics) -> bool: called after each recorded epoch; True stops training
    (status "stopped", e.g. a search pruning the run).
    on_trained(history): called as soon as training ends, before the second gradient check
    (tracking.record starts writing the history then, on another thread).
    snapshot_epochs, on_snapshot(epoch, params): see `train.train` (the record layer draws
    decision boundaries of those parameters; the trained ones are `Outcome.params`).
    """
    dtype = np.dtype(rc.train.dtype)
    params = model.init_params(rc.init.name, make_rng(rc.seed, "init"), dtype=dtype, std=rc.init.std)
    hp = rc.optim.model_dump(exclude={"name", "lr"})
    optimizer = make_optimizer(rc.optim.name, rc.optim.lr, **hp)

    gc_rng = make_rng(rc.seed, "gradcheck")
    reports, scalars = {}, {}
    gc_s = _gradcheck(rc, model, params, dataset, gc_rng, "init", reports, scalars)
    callback = progress
    if on_epoch is not None:
        def callback(epoch, metrics):
            if progress is not None:
                progress(epoch, metrics)
            return on_epoch(epoch, metrics)

    result = train(model, params, dataset, optimizer, epochs=rc.train.epochs,
                   rng=make_rng(rc.seed, "shuffle"), log_every=rc.train.log_every, callback=callback,
                   snapshot_epochs=snapshot_epochs, on_snapshot=on_snapshot)
    if progress is not None:
        progress.close()
    if on_trained is not None:
        on_trained(result.history)
    gc_s += _gradcheck(rc, model, result.params, dataset, gc_rng, "trained", reports, scalars)

    scalars.update({k: float(v) for k, v in result.final.items()})
    scalars.setdefault("final/epochs_run", float(len(result.history["epoch"])))
    scalars["time/train_s"] = float(result.seconds)
    scalars["time/gradcheck_s"] = gc_s
    scalars["time/total_s"] = float(result.seconds) + gc_s
    return Outcome(result.status, result.diverged_epoch, result.history, result.params,
                   scalars, reports)


def _gradcheck(rc, model, params, dataset, rng, when, reports, scalars) -> float:
    """Check the fused path (what trains) on a fixed float64 subset of the train set; adds
    gradcheck/<when>/* scalars."""
    gc = rc.gradcheck
    if not gc.enabled:
        return 0.0
    n_elements = sum(int(p.size) for p in params.values())
    mode = gc.mode if gc.mode != "auto" else (
        "full" if n_elements <= gc.max_full_elements else "directional")
    X = np.asarray(dataset.X_train[: gc.n_samples], dtype=np.float64)
    y = np.asarray(dataset.y_train[: gc.n_samples], dtype=np.float64)
    if not all(np.isfinite(p).all() for p in params.values()):
        reports[when] = {"skipped": "non-finite parameters (diverged run)"}
        return 0.0
    t = time.perf_counter()
    try:
        # A nearly diverged model may overflow here: reported as skipped, not as log noise.
        with np.errstate(over="ignore", invalid="ignore"):
            report = check_gradients(model, params, X, y, h=gc.h, mode=mode, rng=rng,
                                     n_directions=gc.n_directions, threshold=gc.threshold,
                                     path="fused")
    except ValueError as exc:  # e.g. a non-finite loss after training
        reports[when] = {"skipped": str(exc)}
        return time.perf_counter() - t
    seconds = time.perf_counter() - t
    reports[when] = report.to_dict()
    for name, pc in report.per_param.items():
        scalars[f"gradcheck/{when}/{name}/max_rel_err"] = pc.max_rel_error
        scalars[f"gradcheck/{when}/{name}/median_rel_err"] = pc.median_rel_error
    scalars[f"gradcheck/{when}/max_rel_err"] = report.max_rel_error
    scalars[f"gradcheck/{when}/kink_skipped"] = float(report.n_kink_skipped)
    return seconds


class _Progress:
    """`epoch k/E` on stderr, rewritten in place at most ~5 times a second."""

    def __init__(self, epochs: int, stream):
        self.epochs, self.stream, self.last = epochs, stream, time.perf_counter()
        self.start, self.shown = self.last, False

    def __call__(self, epoch, *args, **kwargs) -> None:
        now = time.perf_counter()
        # Only runs that last (> ~2 s) show anything.
        if now - self.start > 2.0 and now - self.last > 0.2:
            self.stream.write(f"\r  epoch {int(epoch) + 1}/{self.epochs}")
            self.stream.flush()
            self.last, self.shown = now, True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\r" + " " * 40 + "\r")
            self.stream.flush()


def progress_for(epochs: int):
    """A train callback showing progress on stderr, only when it is a TTY (logs stay clean)."""
    return _Progress(epochs, sys.stderr) if sys.stderr.isatty() else None
