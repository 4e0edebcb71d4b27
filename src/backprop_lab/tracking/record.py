"""What one run records in MLflow: params, dataset, per-epoch history, figures, artifacts, final metrics.

`run.run` owns the run's life (validate, skip, create, end); this module fills a created run.
"""

from __future__ import annotations

import concurrent.futures
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from backprop_lab.config.schema import RunConfig, flatten, public_dict


def train_and_log(client, info, rc: RunConfig, overrides, t0: float, on_epoch=None):
    """Params, dataset, compute, history, figures, artifacts, final metrics; the run ends FINISHED.

    Returns (status, final scalars). Any exception propagates: run.run ends the run FAILED.
    on_epoch: see `compute.compute` (returning True stops training: status "stopped").
    """
    from backprop_lab.core import compute
    from backprop_lab.figures import plots
    from backprop_lab.figures import render
    from backprop_lab.tracking import client as tracking
    from backprop_lab.core.data import load_dataset
    from backprop_lab.core.mlp import MLP
    from backprop_lab.core.rng import make_rng

    run_id = info.run_id
    tracking.log_params(client, run_id, flatten(rc))
    dataset = load_dataset(rc.data.name, rng=make_rng(rc.seed, "data"), dtype=rc.train.dtype,
                           n_samples=rc.data.n_samples, noise=rc.data.noise,
                           test_fraction=rc.data.test_fraction)
    tracking.log_dataset(client, run_id, dataset.X_train, dataset.y_train,
                         name=f"{rc.data.name}-train", context="train")
    model = MLP(rc.model.layer_sizes(dataset.X_train.shape[1]), activation=rc.model.activation)

    now_ms = int(time.time() * 1000)
    pending = []

    def write_history(history) -> None:
        # Written on a background thread (one SQLite call, GIL released) while this thread runs
        # the second gradient check and renders the figures; joined before the run's last writes.
        series = [(k, history["epoch"], v) for k, v in history.items() if k != "epoch"]
        pending.append(tracking.log_history_async(client, run_id, series, now_ms))

    try:
        outcome = compute.compute(rc, dataset, model, compute.progress_for(rc.train.epochs),
                                  on_trained=write_history, on_epoch=on_epoch)
        figures = {  # PNG bytes; render.py reuses one figure per layout (same pictures as plots.py)
            "data": plots.data_png(dataset),
            "curves": render.curves_png(outcome.history),
            "decision_boundary": render.decision_boundary_png(model, outcome.params, dataset),
        }
        with tempfile.TemporaryDirectory(prefix="bpl-art-") as tmp:
            _write_artifacts(Path(tmp), rc, overrides, outcome, figures)
            tracking.log_artifact_dir(client, run_id, tmp, info.artifact_uri)
        latest = pending[0].result()
    finally:
        concurrent.futures.wait(pending)  # never leave it writing after the run ended

    # Last call: scalars, wall time so far and the end status, in one batch.
    final = dict(outcome.scalars)
    final["time/wall_s"] = time.perf_counter() - t0
    end_tags = {"bpl.status": outcome.status}
    if outcome.diverged_epoch is not None:
        end_tags["bpl.diverged_epoch"] = outcome.diverged_epoch
    metrics = latest + tracking.metric_batch([(k, [0], [v]) for k, v in final.items()], now_ms)
    tracking.log_metrics(client, run_id, metrics, tags=end_tags)
    client.set_terminated(run_id, "FINISHED")
    return outcome.status, final


def _write_artifacts(folder: Path, rc: RunConfig, overrides, outcome,
                     figures: dict[str, bytes]) -> None:
    (folder / "plots").mkdir()
    (folder / "config").mkdir()
    for name, png in figures.items():
        (folder / "plots" / f"{name}.png").write_bytes(png)
    (folder / "config" / "config.yaml").write_text(
        yaml.safe_dump(public_dict(rc), sort_keys=False))
    (folder / "config" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    history = outcome.history
    names = ["epoch"] + [k for k in history if k != "epoch"]
    table = np.column_stack([np.asarray(history[k], dtype=np.float64) for k in names])  # (E, M+1)
    buf = io.StringIO()
    # %.17g: the exact history (the MLflow metrics are rounded for display).
    np.savetxt(buf, table, delimiter=",", header=",".join(names), comments="", fmt="%.17g")
    (folder / "history.csv").write_text(buf.getvalue())
    np.savez(folder / "params.npz", **outcome.params)
    (folder / "gradcheck.json").write_text(json.dumps(outcome.gradcheck, indent=1))

