"""What one run records in MLflow: params, dataset, per-epoch history, figures, artifacts, final metrics.

`run.run` owns the run's life (validate, skip, create, end); this module fills a created run.

What a run costs the store is bounded whatever its epoch count: each per-epoch series goes to
MLflow downsampled to at most SERIES_POINTS evenly spaced epochs (first and last included, the
real epoch numbers as steps: enough for the UI's charts), and the exact history goes to the
`history.npz` artifact. The decision boundary is logged with MLflow's `log_image` (key
`decision_boundary`) at the end of every run, so the UI's image grid compares runs side by side,
and, for the seeds in `train.snapshot_seeds` (default: seed 0), at the log-spaced epochs of
`train.snapshot_schedule`, so its step slider shows the boundary forming.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import pickle
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from backprop_lab.config.schema import RunConfig, flatten, public_dict

#: Points per per-epoch series in MLflow (the exact history is the history.npz artifact).
SERIES_POINTS = 500
#: MLflow image key of the decision boundary snapshots (MlflowClient.log_image).
BOUNDARY_KEY = "decision_boundary"
#: The snapshots: the artifact's figure at 64 dpi (256 x 230 px, the size of MLflow's thumbnail,
#: which it then need not rescale) on a 100 x 100 grid (2 px per cell at that size).
SNAPSHOT_DPI, SNAPSHOT_GRID = 64, 100


@dataclass
class Recorded:
    """What `train_and_log` hands back to `run.run`."""

    status: str  # finished | diverged | stopped
    metrics: dict[str, float]  # the final scalars logged last (final/*, gradcheck/*, time/*)
    boundary_png: bytes | None  # the trained model's decision boundary (plots/decision_boundary.png)


def logged_history(history: dict[str, np.ndarray], points: int | None = None) -> dict[str, np.ndarray]:
    """The history as logged to MLflow: at most `points` (default SERIES_POINTS) rows, evenly
    spaced over the recorded epochs, the first and the last included; `history["epoch"]` keeps
    the real epoch numbers."""
    points = SERIES_POINTS if points is None else points
    n = len(history["epoch"])
    if n <= points:
        return history
    rows = np.unique(np.round(np.linspace(0, n - 1, points)).astype(np.int64))  # (points,)
    return {k: np.asarray(v)[rows] for k, v in history.items()}


@dataclass
class Computed:
    """A run's compute done ahead of its logging (`compute_ahead`): what `compute.compute` returned
    and the parameters at each snapshot epoch, for `train_and_log` to log as if computed there."""

    outcome: Any  # compute.Outcome
    snapshots: list[tuple[int, dict[str, np.ndarray]]]


def compute_ahead(rc: RunConfig) -> Computed:
    """The run's whole compute (`compute.compute` of its dataset and model) and copies of the
    parameters at its snapshot epochs: what `train_and_log(..., computed=)` needs to log the run
    exactly as if it computed it (sweep.ahead runs this in a process of its own)."""
    from backprop_lab.core import compute

    snapshots: list[tuple[int, dict[str, np.ndarray]]] = []
    outcome = compute.compute_run(rc, snapshot_epochs=snapshot_epochs(rc),
                                  on_snapshot=lambda epoch, params: snapshots.append(
                                      (epoch, {k: np.array(v, copy=True) for k, v in params.items()})))
    return Computed(outcome, snapshots)


def save_computed(path: Path, key: str, computed: Computed) -> None:
    """Write `computed` (of the run with config key `key`) for `take_computed`; the file appears
    whole or not at all (a temporary file renamed)."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:
        pickle.dump((key, computed), f, protocol=pickle.HIGHEST_PROTOCOL)
    partial.replace(path)


def take_computed(path: str | Path, key: str) -> Computed | None:
    """The Computed `save_computed` wrote for config key `key`, the file removed (it is read once);
    None when the file is missing, unreadable or of another config (the run then computes
    itself). The file is the sweep's own (sweep/ahead.py writes it in a private temporary
    folder): pickle is what it exchanges."""
    try:
        with open(path, "rb") as f:
            stored_key, computed = pickle.load(f)
    except Exception:
        return None
    if stored_key != key or not isinstance(computed, Computed):
        return None
    Path(path).unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # the last one taken: the folder goes too (a sweep killed
        Path(path).parent.rmdir()  # with SIGKILL from then on leaves nothing behind)
    return computed


def train_and_log(client, info, rc: RunConfig, overrides, t0: float, on_epoch=None,
                  computed: Computed | None = None) -> Recorded:
    """Params, dataset, compute, history, figures, artifacts, final metrics; the run ends FINISHED.

    Any exception propagates: run.run ends the run FAILED.
    on_epoch: see `compute.compute` (returning True stops training: status "stopped").
    computed: this run's `compute_ahead`, done elsewhere: logged here instead of computing (the
    same metrics, artifacts and images; `time/wall_s` counts its compute seconds as if spent here).
    """
    from backprop_lab.core import compute
    from backprop_lab.figures import plots, render
    from backprop_lab.tracking import client as tracking

    run_id = info.run_id
    tracking.log_params(client, run_id, flatten(rc))
    dataset = compute.dataset_for(rc)
    tracking.log_dataset(client, run_id, dataset.X_train, dataset.y_train,
                         name=f"{rc.data.name}-train", context="train")
    model = compute.model_for(rc, dataset)

    now_ms = int(time.time() * 1000)
    pending: list[concurrent.futures.Future] = []  # background writes, in the order submitted
    history_write: list[concurrent.futures.Future] = []

    images: list[concurrent.futures.Future] = []  # the boundary images' writes

    def log_boundary(epoch, params, last: bool = False) -> None:
        # Drawn here (one cached figure per dataset, ~10 ms), written on the background thread
        # (PNG + WebP encoding release the GIL) while training goes on. MLflow's image tag is
        # set by the first snapshot (the UI shows the grid while a long run trains) or by the
        # run's last batch.
        pixels = render.decision_boundary_pixels(model, params, dataset, grid=SNAPSHOT_GRID,
                                                 dpi=SNAPSHOT_DPI)
        images.append(tracking.log_images_async(
            client, run_id, BOUNDARY_KEY, [(epoch, pixels)], now_ms, artifact_uri=info.artifact_uri,
            encode_png=lambda px: render.encode_png(px, dpi=SNAPSHOT_DPI), tag=not (last or images)))
        pending.append(images[-1])

    def write_history(per_epoch) -> None:
        # Written on the background thread (one SQLite call, GIL released) while this thread runs
        # the second gradient check and renders the figures; joined before the run's last writes.
        logged = logged_history(per_epoch)
        series = [(k, logged["epoch"], v) for k, v in logged.items() if k != "epoch"]
        history_write.append(tracking.log_history_async(client, run_id, series, now_ms))
        pending.append(history_write[0])

    try:
        if computed is None:
            outcome = compute.compute(rc, dataset, model, compute.progress_for(rc.train.epochs),
                                      on_trained=write_history, on_epoch=on_epoch,
                                      snapshot_epochs=snapshot_epochs(rc),
                                      on_snapshot=log_boundary)
        else:  # the same calls compute.compute would have made, in its order
            outcome = computed.outcome
            for epoch, params in computed.snapshots:
                log_boundary(epoch, params)
            write_history(outcome.history)
            t0 -= outcome.scalars.get("time/total_s", 0.0)
        log_boundary(int(outcome.scalars["final/epochs_run"]), outcome.params, last=True)
        boundary_png = render.decision_boundary_png(model, outcome.params, dataset)
        figures = {  # PNG bytes; render.py reuses one figure per layout (same pictures as plots.py)
            "data": plots.data_png(dataset),
            "curves": render.curves_png(outcome.history),
            "decision_boundary": boundary_png,
        }
        with tempfile.TemporaryDirectory(prefix="bpl-art-") as tmp:
            _write_artifacts(Path(tmp), rc, overrides, outcome, figures)
            tracking.log_artifact_dir(client, run_id, tmp, info.artifact_uri)
        for future in pending:
            future.result()  # raises what a background write raised
        latest = history_write[0].result().latest
    except BaseException:
        _tag_images(client, run_id, images)  # what the last batch would have done
        raise
    finally:
        concurrent.futures.wait(pending)  # never leave it writing after the run ended

    # Last call: scalars, wall time so far and the end status, in one batch.
    final = dict(outcome.scalars)
    final["time/wall_s"] = time.perf_counter() - t0
    end_tags = {"bpl.status": outcome.status, tracking.LOGGED_IMAGES_TAG: True}
    if outcome.diverged_epoch is not None:
        end_tags["bpl.diverged_epoch"] = outcome.diverged_epoch
    metrics = latest + tracking.metric_batch([(k, [0], [v]) for k, v in final.items()], now_ms)
    tracking.write_batch(client, run_id, metrics=metrics, tags=end_tags, end_status="FINISHED")
    return Recorded(outcome.status, final, boundary_png)


def _tag_images(client, run_id: str, images: list[concurrent.futures.Future]) -> None:
    """A run that fails after an image without its tag was written: the tag, best effort (the
    run's end as FAILED is run.run's, whatever this does)."""
    from backprop_lab.tracking import client as tracking

    concurrent.futures.wait(images)
    if any(not f.exception() for f in images):
        with contextlib.suppress(Exception):
            tracking.log_tags(client, run_id, {tracking.LOGGED_IMAGES_TAG: True})


def snapshot_epochs(rc: RunConfig) -> list[int]:
    """The epochs at which this run logs its decision boundary while training: the log-spaced
    `snapshot_schedule` for the seeds in `train.snapshot_seeds` (all seeds when it is None),
    none for the others. Every run logs its final boundary besides (the image grid's last step).

    Why not every seed: one `log_image` costs a PNG and a WebP encoding plus two files and a tag
    (~25-70 ms here), about as much as 1/10 of a default run's compute; the seeds of a
    configuration differ in their end state, which every run shows, far more than in how the
    boundary forms, which one seed per configuration shows (docs/speed.md).
    """
    from backprop_lab.core.train import snapshot_schedule

    seeds = rc.train.snapshot_seeds
    return snapshot_schedule(rc.train.epochs) if seeds is None or rc.seed in seeds else []


def write_history_npz(path: Path, history: dict[str, np.ndarray]) -> None:
    """The exact per-epoch history (float64, every recorded epoch), zip-compressed: one array
    per key (`epoch`, `train/loss`, ...), what `np.savez_compressed` writes but with fixed
    member dates, so the same history gives the same bytes. `read_history_npz` (or np.load)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for key, values in history.items():
            member = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(member, "w", force_zip64=True) as f:
                dtype = np.int64 if key == "epoch" else np.float64
                np.lib.format.write_array(f, np.asarray(values, dtype=dtype), allow_pickle=False)


def read_history_npz(path) -> dict[str, np.ndarray]:
    with np.load(path) as stored:
        return {k: stored[k] for k in stored.files}


def _write_artifacts(folder: Path, rc: RunConfig, overrides, outcome,
                     figures: dict[str, bytes]) -> None:
    (folder / "plots").mkdir()
    (folder / "config").mkdir()
    for name, png in figures.items():
        (folder / "plots" / f"{name}.png").write_bytes(png)
    (folder / "config" / "config.yaml").write_text(
        yaml.safe_dump(public_dict(rc), sort_keys=False))
    (folder / "config" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    write_history_npz(folder / "history.npz", outcome.history)
    np.savez(folder / "params.npz", **outcome.params)
    (folder / "gradcheck.json").write_text(json.dumps(outcome.gradcheck, indent=1))
