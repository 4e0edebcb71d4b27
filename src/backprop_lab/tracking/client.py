"""MLflow plumbing: experiments, the skip lookup, batched logging, tags (store set-up: store.py, re-exported).

Everything here talks to MLflow through an explicit `MlflowClient` (no fluent global state), so
several runs in one process, or several processes on one store, never share an "active run".
Imports no layer internals (core modules); see docs/pipeline.md for the why of each choice.
"""

from __future__ import annotations

import concurrent.futures
import errno
import functools
import io
import itertools
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import mlflow
import numpy as np
import sqlalchemy.exc
from mlflow.entities import Metric, Param, Run, RunInfo, RunStatus, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

from backprop_lab.tracking.store import (  # noqa: F401 - re-exported: the tracking API in one place
    HEALTH_TIMEOUT_S,
    StoreError,
    check_server,
    file_id,
    prepare_store,
    repo_root,
    resolve_tracking,
    sqlite_path,
)

PARAM_CHUNK = 100  # MLflow's log_batch limit for params
METRIC_CHUNK = 1000  # ... and for metrics
PARAM_VALUE_MAX = 6000  # MLflow's param value length limit


# --------------------------------------------------------------------------- experiments and runs


def experiment_artifact_location(artifact_root: str, name: str) -> str:
    """file:// URI of a per-experiment folder under artifact_root (name made path-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._/-]+", "_", name).strip("/") or "default"
    return (Path(artifact_root) / safe).resolve().as_uri()


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """Experiment id for `name`, creating it with an explicit artifact location if needed.

    With SQLite, artifact_root is a folder: the location is a file URI under it (otherwise a
    client drops artifacts under its cwd). With a server (artifact_root None) the server decides.
    Safe when several processes create the same experiment at once. On a SQLite store the id
    is remembered per process (every job of a sweep asks), for as long as the file is the same.
    """
    db = sqlite_path(str(client.tracking_uri))
    memo_key = (str(client.tracking_uri), file_id(db), name, artifact_root) if db else None
    if memo_key in _EXPERIMENT_IDS:
        return _EXPERIMENT_IDS[memo_key]
    experiment_id = _ensure_experiment(client, name, artifact_root)
    if memo_key is not None and memo_key[1] is not None:
        _EXPERIMENT_IDS[memo_key] = experiment_id
    return experiment_id


_EXPERIMENT_IDS: dict[tuple, str] = {}


def _ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is None:
        location = experiment_artifact_location(artifact_root, name) if artifact_root else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException as exc:
            if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
                raise
            exp = client.get_experiment_by_name(name)  # lost the race: someone else created it
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        raise StoreError(f"experiment {name!r} is deleted in {client.tracking_uri}; restore it in "
                         "the UI or pick another experiment_name")
    if artifact_root and exp.artifact_location.startswith("mlflow-artifacts:"):
        raise StoreError(
            f"experiment {name!r} in {client.tracking_uri} stores artifacts at "
            f"{exp.artifact_location}, which only a server can write; use tracking=server or "
            "another experiment_name")
    return exp.experiment_id


def create_run(client: MlflowClient, experiment_id: str, *, tags: Mapping[str, str],
               run_name: str) -> RunInfo:
    """`client.create_run(experiment_id, tags=tags, run_name=run_name).info`, fast on SQLite.

    MLflow's create_run costs ~7-9 ms of CPU a run here (the experiment loaded with its tags,
    an ORM object per tag, the new run's inputs read back). On a SQLite store the run is ONE
    transaction on MLflow's own tables instead (~1 ms): its `runs` row with the values
    SqlAlchemyStore.create_run gives a new run (status RUNNING, source type UNKNOWN, user from
    `mlflow.user` else "unknown", artifact URI `<experiment's location>/<run id>/artifacts`),
    its tags and `mlflow.runName`. Guarded like write_batch: `RUNS_COLUMNS`, `TAGS_COLUMNS`
    pinned; no run name, an experiment not active or another store take create_run silently;
    any other failure rolls back and takes create_run with one warning per process. A store
    refusing the write (full disk, locked) raises.
    """
    tags = {k: str(v) for k, v in tags.items()}
    if str(client.tracking_uri).startswith("sqlite:") and run_name and "mlflow.runName" not in tags:
        try:
            info = _insert_run(client, experiment_id, tags, run_name)
            if info is not None:
                return info
        except Exception as exc:
            if _store_refused(exc):
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0][:160]
            _warn_once(f"fast creation of a run in MLflow's tables failed ({type(exc).__name__}: "
                       f"{first_line}); creating runs with MLflow's create_run (slower); "
                       "see docs/pipeline.md, 'Upgrading MLflow'", topic="runs")
    return client.create_run(experiment_id, tags=tags, run_name=run_name).info


def _insert_run(client: MlflowClient, experiment_id: str, tags: dict[str, str],
                run_name: str) -> RunInfo | None:
    """The new run's info; None (nothing written) when the experiment is not active."""
    import uuid

    from mlflow.store.tracking.dbmodels.models import SqlRun, SqlTag
    from mlflow.utils.uri import append_to_uri_path

    for model, table, columns in ((SqlRun, "runs", RUNS_COLUMNS), (SqlTag, "tags", TAGS_COLUMNS)):
        if model.__tablename__ != table or set(model.__table__.c.keys()) != columns:
            raise LookupError(f"MLflow's {model.__tablename__} table has columns "
                              f"{sorted(model.__table__.c.keys())}, expected {sorted(columns)}")
    engine = client._tracking_client.store.engine  # private: any failure falls back (caller)
    run_id = uuid.uuid4().hex
    user_id = tags.get("mlflow.user", "unknown")
    start_time = get_current_time_millis()
    with engine.begin() as conn:
        experiment = conn.exec_driver_sql(
            "SELECT artifact_location, lifecycle_stage FROM experiments WHERE experiment_id = ?",
            (int(experiment_id),)).first()
        if experiment is None or experiment[1] != "active":
            return None  # MLflow's create_run says why
        artifact_uri = append_to_uri_path(experiment[0], run_id, "artifacts")
        conn.exec_driver_sql(
            "INSERT INTO runs (run_uuid, name, source_type, source_name, entry_point_name, user_id, "
            "status, start_time, end_time, deleted_time, source_version, lifecycle_stage, "
            "artifact_uri, experiment_id) "
            "VALUES (?, ?, 'UNKNOWN', '', '', ?, 'RUNNING', ?, NULL, NULL, '', 'active', ?, ?)",
            (run_id, run_name, user_id, start_time, artifact_uri, int(experiment_id)))
        conn.exec_driver_sql("INSERT INTO tags (key, value, run_uuid) VALUES (?, ?, ?)",
                             [(k, v, run_id) for k, v in {**tags, "mlflow.runName": run_name}.items()])
    return RunInfo(run_id=run_id, experiment_id=str(experiment_id), user_id=user_id,
                   status="RUNNING", start_time=start_time, end_time=None,
                   lifecycle_stage="active", artifact_uri=artifact_uri, run_name=run_name)


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_finished_run(client: MlflowClient, experiment_id: str, config_key: str) -> Run | None:
    """A FINISHED run (finished or diverged) of the same config key in the experiment, else None.

    A run stopped early (bpl.status stopped, or pruned by a search) did not train its config.
    """
    flt = (f"tags.`bpl.config_key` = '{_quote(config_key)}' and attributes.status = 'FINISHED' "
           "and tags.`bpl.role` != 'parent'")
    runs = client.search_runs([experiment_id], filter_string=flt, max_results=100,
                              order_by=["attributes.start_time DESC"])
    # In Python: MLflow's `!=` on a tag also drops the runs without the tag.
    return next((r for r in runs if r.data.tags.get("bpl.status") not in ("stopped", "pruned")), None)


# --------------------------------------------------------------------------- batched logging


def round_sig(value: float, digits: int = 6) -> float:
    """Round for display (the UI shows raw floats); the exact history is in history.npz.

    The same arithmetic as round_sig_array, which rounds the histories: every logged value is
    rounded by one function, so `make reproduce` can compare exactly (a decimal `:.6g` here
    differed from it below ~1e-14 and above ~1e10).
    """
    return float(round_sig_array([value], digits)[0])


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    write_batch(client, run_id, params=[Param(k, str(v)[:PARAM_VALUE_MAX]) for k, v in params.items()])


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    write_batch(client, run_id, tags=tags)


def metric_batch(key_steps_values: Iterable[tuple[str, Iterable[int], Iterable[float]]],
                 timestamp_ms: int) -> list[Metric]:
    """[(key, steps, values), ...] -> Metric list; non-finite values are dropped (diverged runs)."""
    out: list[Metric] = []
    for key, steps, values in key_steps_values:
        for step, value in zip(steps, values, strict=True):
            v = float(value)
            if math.isfinite(v):
                out.append(Metric(key, round_sig(v), timestamp_ms, int(step)))
    return out


def log_metrics(client: MlflowClient, run_id: str, metrics: list[Metric],
                tags: Mapping[str, Any] | None = None) -> None:
    """Metrics in chunks of METRIC_CHUNK; `tags` ride along with the last chunk (no extra call)."""
    chunks = [metrics[i:i + METRIC_CHUNK] for i in range(0, len(metrics), METRIC_CHUNK)] or [[]]
    for n, chunk in enumerate(chunks):
        extra = [RunTag(k, str(v)) for k, v in (tags or {}).items()] if n == len(chunks) - 1 else []
        if chunk or extra:
            client.log_batch(run_id, metrics=chunk, tags=extra, synchronous=True)



def write_batch(client: MlflowClient, run_id: str, *, metrics: list[Metric] = (),
                params: list[Param] = (), tags: Mapping[str, Any] | None = None,
                end_status: str | None = None) -> str:
    """`log_batch(run_id, metrics, params, tags)`, fast on SQLite; returns the path it took:
    "sql" or "log_batch". Metrics also become the run's latest values where newer.
    end_status ("FINISHED", "FAILED", "KILLED"): then `set_terminated(run_id, end_status)`, in
    the same transaction on the fast path (the run's status and end time in MLflow's `runs`
    table, as MLflow's update_run_info sets them: ~7 ms of CPU a run saved, and a run is never
    FINISHED without its final metrics).

    Through `log_batch` a run's last batch is MLflow's most expensive call of a run here (~45 ms
    of CPU for ~40 metrics and two tags: three sessions, the run loaded three times, an ORM
    object and a latest-metric lookup per value), its params ~13 ms. On a SQLite store a batch
    is ONE transaction on MLflow's own tables instead (~3 ms): the metric rows into `metrics`,
    into `latest_metrics` where newer than the key's row (step, timestamp, value: MLflow's
    order), params into `params`, tags into `tags`. Guarded like the history insert: other
    stores, a non-finite value, an over-long tag or more than one log_batch's worth take
    log_batch; so does a run that is not active or a param already logged (log_batch refuses or
    accepts them MLflow's way); any other failure of the statements (columns other than the
    pinned *_COLUMNS, a renamed internal, an error) rolls back and takes log_batch, with one
    warning per process. A store refusing the write (full disk, locked) raises.
    """
    tags = {k: str(v) for k, v in (tags or {}).items()}
    if end_status is not None:
        RunStatus.from_string(end_status)  # MLflow's refusal of a status it does not know
    if (str(client.tracking_uri).startswith("sqlite:") and len(metrics) <= METRIC_CHUNK
            and len(params) <= PARAM_CHUNK and all(math.isfinite(m.value) for m in metrics)
            and all(len(v) <= 5000 for v in tags.values())):
        try:
            if _insert_batch(client, run_id, metrics, params, tags, end_status):
                return "sql"
        except sqlalchemy.exc.IntegrityError:
            pass  # a param logged before: log_batch accepts the same value, refuses another
        except Exception as exc:
            if _store_refused(exc):  # the store failed: the run fails, no slower retry
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0][:160]
            _warn_once(f"fast write of a batch into MLflow's tables failed ({type(exc).__name__}: "
                       f"{first_line}); writing batches with MLflow's log_batch (slower); "
                       "see docs/pipeline.md, 'Upgrading MLflow'")
    for i in range(0, len(params), PARAM_CHUNK):
        client.log_batch(run_id, params=list(params[i:i + PARAM_CHUNK]), synchronous=True)
    if metrics or tags:
        log_metrics(client, run_id, list(metrics), tags=tags)
    if end_status is not None:
        client.set_terminated(run_id, end_status)
    return "log_batch"


def _insert_batch(client: MlflowClient, run_id: str, metrics, params, tags: dict[str, str],
                  end_status: str | None = None) -> bool:
    """True when written; False (nothing written) when the run is not active."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlMetric, SqlParam, SqlRun, SqlTag

    for model, columns in ((SqlMetric, METRICS_COLUMNS), (SqlLatestMetric, LATEST_METRICS_COLUMNS),
                           (SqlParam, PARAMS_COLUMNS), (SqlTag, TAGS_COLUMNS)):
        if set(model.__table__.c.keys()) != columns:
            raise LookupError(f"MLflow's {model.__table__.name} table has columns "
                              f"{sorted(model.__table__.c.keys())}, expected {sorted(columns)}")
    if end_status is not None and (set(SqlRun.__table__.c.keys()) != RUNS_COLUMNS
                                   or SqlRun.__tablename__ != "runs"):
        raise LookupError(f"MLflow's runs table has columns {sorted(SqlRun.__table__.c.keys())}, "
                          f"expected {sorted(RUNS_COLUMNS)}")
    engine = client._tracking_client.store.engine  # private: any failure falls back (caller)
    rows = list(dict.fromkeys((run_id, m.key, float(m.value), int(m.timestamp), int(m.step))
                              for m in metrics))  # log_batch drops repeated rows too
    with engine.begin() as conn:
        stage = conn.exec_driver_sql("SELECT lifecycle_stage FROM runs WHERE run_uuid = ?",
                                     (run_id,)).scalar()
        if stage != "active":
            return False
        if rows:
            values = "(run_uuid, key, value, timestamp, step, is_nan) VALUES (?, ?, ?, ?, ?, 0)"
            conn.exec_driver_sql(f"INSERT INTO {SqlMetric.__tablename__} {values}", rows)
            latest = SqlLatestMetric.__tablename__
            conn.exec_driver_sql(
                f"INSERT INTO {latest} {values} "
                "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value, "
                "timestamp = excluded.timestamp, step = excluded.step, is_nan = 0 "
                "WHERE (excluded.step, excluded.timestamp, excluded.value) > "
                f"({latest}.step, {latest}.timestamp, {latest}.value)",
                rows)
        if params:
            conn.exec_driver_sql(f"INSERT INTO {SqlParam.__tablename__} (run_uuid, key, value) "
                                 "VALUES (?, ?, ?)", [(run_id, p.key, p.value) for p in params])
        if tags:
            conn.exec_driver_sql(
                f"INSERT INTO {SqlTag.__tablename__} (run_uuid, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (key, run_uuid) DO UPDATE SET value = excluded.value",
                [(run_id, k, v) for k, v in tags.items()])
        if end_status is not None:  # MLflow's update_run_info(status, end_time), set_terminated's
            conn.exec_driver_sql("UPDATE runs SET status = ?, end_time = ? WHERE run_uuid = ?",
                                 (end_status, get_current_time_millis(), run_id))
    return True


def round_sig_array(values, digits: int = 6) -> np.ndarray:
    """round_sig for a whole array (non-finite values kept as they are)."""
    v = np.asarray(values, dtype=np.float64)
    out = v.copy()
    ok = np.isfinite(v) & (v != 0)
    with np.errstate(over="ignore"):
        scale = 10.0 ** (digits - 1 - np.floor(np.log10(np.abs(v[ok]))))
    fine = np.isfinite(scale)  # subnormals would overflow the scale: left unrounded
    idx = np.flatnonzero(ok)[fine]
    out[idx] = np.round(v[idx] * scale[fine]) / scale[fine]
    return out


class HistoryWrite(NamedTuple):
    """What a history write did: the newest row of each key (left to the caller) and the path
    its other rows took: "bulk" (one SQL statement) or "log_batch" (MLflow's public API)."""

    latest: list[Metric]
    path: str


def log_history(client: MlflowClient, run_id: str, series, timestamp_ms: int,
                defer_latest: bool = False) -> list[Metric]:
    """Per-epoch metrics [(key, steps (E,), values (E,)), ...], fast; non-finite values dropped.

    defer_latest: leave the newest row of each key to the caller (returned), who logs it with
    its own last log_batch: one MLflow call fewer per run.

    MLflow's log_batch builds an ORM object per value (~0.3 ms each here: 3 s for a 9-series,
    1000-epoch run). On a SQLite store every row but the newest of each key goes into MLflow's
    own metrics table (its columns checked against METRICS_COLUMNS) with ONE statement that
    reads the rows from a JSON array (SQLite's json_each): a single call into SQLite, which
    releases the GIL for all of it, so `log_history_async` really runs beside the caller's work.
    The newest rows then go through the public log_batch, which keeps MLflow's latest-metric
    table right. Other stores use log_batch throughout; so does a SQLite store when the fast
    path fails in any way (MLflow renamed its internals, the table changed, the statement
    raised): that run's rows go through log_batch, and the process says so once on stderr.
    """
    latest = log_history_async(client, run_id, series, timestamp_ms).result().latest
    if defer_latest:
        return latest
    log_metrics(client, run_id, latest)
    return []


def log_history_async(client: MlflowClient, run_id: str, series,
                      timestamp_ms: int) -> concurrent.futures.Future:
    """`log_history(..., defer_latest=True)`, its write on a background thread.

    The rows are rounded and encoded here, in the caller's thread (Python work that would hold
    the GIL anyway); only the write goes to the thread. `.result()` is a HistoryWrite (or
    raises what the write raised). Join it before the run's next write.
    """
    bulk = str(client.tracking_uri).startswith("sqlite:")
    rows, latest = [], []
    for key, steps, values in series:
        values = np.asarray(values, dtype=np.float64)
        keep = np.isfinite(values)
        steps = np.asarray(steps, dtype=np.int64)[keep].tolist()
        rounded = round_sig_array(values[keep]).tolist()
        if not steps:
            continue
        latest.append(Metric(key, rounded[-1], timestamp_ms, steps[-1]))  # steps increase
        rows += zip(itertools.repeat(key), steps[:-1], rounded[:-1])
    blob = json.dumps(rows, allow_nan=False) if rows and bulk else None  # exact floats

    def write() -> HistoryWrite:
        if not rows:
            return HistoryWrite(latest, "none")
        if blob is not None:
            try:
                _insert_metric_rows(client, run_id, timestamp_ms, rows, blob)
                return HistoryWrite(latest, "bulk")
            except Exception as exc:  # any surprise: the public API for this run
                if _store_refused(exc):  # a full disk is no reason to change paths: the run fails
                    raise
                first_line = (str(exc).strip().splitlines() or [""])[0][:160]
                _warn_once(f"fast history insert into MLflow's metrics table failed "
                           f"({type(exc).__name__}: {first_line}); writing histories "
                           "with MLflow's log_batch (slower); see docs/pipeline.md, 'Upgrading MLflow'")
        log_metrics(client, run_id, [Metric(k, v, timestamp_ms, st) for k, st, v in rows])
        return HistoryWrite(latest, "log_batch")

    return _history_pool().submit(write)


#: MLflow's tag saying a run has `log_image` images (the UI's image grid looks for it).
LOGGED_IMAGES_TAG = "mlflow.loggedImages"
#: The MLflow versions (major.minor) whose `log_image(key=, step=)` file layout `_write_image`
#: reproduces (checked against MLflow's own files by tests/test_tracking.py). Any other
#: version: MLflow's log_image, with one warning.
IMAGE_LAYOUT_MLFLOW = ("3.17",)


class ImageWrite(NamedTuple):
    """What an image write did: how many images, and the path they took: "files" (written
    here, MLflow's layout) or "log_image" (MLflow's public API)."""

    count: int
    path: str


def log_images_async(client: MlflowClient, run_id: str, key: str, images, timestamp_ms: int, *,
                     artifact_uri: str | None = None, encode_png=None,
                     tag: bool = True) -> concurrent.futures.Future:
    """MLflow's `log_image(run_id, image, key=key, step=step)` for each (step, image (H, W, 3)
    uint8), on the background thread after the writes queued before: the UI's image grid
    shows `key` per run with a step slider. `.result()` is an ImageWrite.

    MLflow's log_image costs ~22 ms of CPU an image here: a PNG (Pillow, level 6, adaptive
    filters) and a WebP thumbnail (method 4) encoded, each file copied in by a log_artifact,
    and a set_tag transaction per image. When the run's artifacts are a local folder
    (`artifact_uri` file:, what a SQLite store uses) and MLflow is a version whose layout
    `_write_image` reproduces, the same two files (names, folder, pixels) are written here
    with cheaper encoders: `encode_png(pixels) -> bytes` (default Pillow at level 1) and a
    WebP at method 0 (~4 ms in all), and the tag is set only when `tag` is true: the caller
    sets LOGGED_IMAGES_TAG in a batch of its own otherwise (it must, or the UI shows no grid).
    Any failure of that path: the image goes through log_image (which sets the tag), and the
    process says so once on stderr.
    """
    direct = (artifact_uri is not None and str(artifact_uri).startswith("file:")
              and mlflow.__version__.rsplit(".", 1)[0] in IMAGE_LAYOUT_MLFLOW)

    def write() -> ImageWrite:
        path = "files" if direct else "log_image"
        for step, image in images:
            if path == "files":
                try:
                    _write_image(artifact_uri, key, int(step), timestamp_ms, image, encode_png)
                    continue
                except Exception as exc:  # any surprise: the public API for this run's images
                    if _disk_refused(exc):  # a full disk is no reason to change paths: the run fails
                        raise
                    first_line = (str(exc).strip().splitlines() or [""])[0][:160]
                    _warn_once(f"writing MLflow's image files directly failed ({type(exc).__name__}: "
                               f"{first_line}); logging images with MLflow's log_image (slower); "
                               "see docs/pipeline.md, 'Upgrading MLflow'", topic="images")
                    path = "log_image"
            client.log_image(run_id, image, key=key, step=int(step), timestamp=timestamp_ms)
        if path == "files" and tag and images:
            log_tags(client, run_id, {LOGGED_IMAGES_TAG: True})
        return ImageWrite(len(images), path)

    if not direct and artifact_uri is not None and str(artifact_uri).startswith("file:"):
        _warn_once(f"MLflow {mlflow.__version__}'s image file layout is not checked "
                   f"(checked: {', '.join(IMAGE_LAYOUT_MLFLOW)}); logging images with MLflow's "
                   "log_image (slower); see docs/pipeline.md, 'Upgrading MLflow'", topic="images")
    return _history_pool().submit(write)


def _write_image(artifact_uri: str, key: str, step: int, timestamp_ms: int, image,
                 encode_png) -> None:
    """The files `MlflowClient.log_image(run_id, image, key=key, step=step,
    timestamp=timestamp_ms)` of MLflow 3.17 writes, in the run's local artifact folder:
    images/<key, '/' as '~'>+step+<step>+timestamp+<ms>+<uuid4>.png (the image) and the same
    name + '+compressed.webp' (fitted into 256 x 256 as MLflow's compress_image_size does).
    All or nothing: a file written before a failure is removed."""
    import uuid

    from mlflow.tracking.multimedia import compress_image_size, convert_to_pil_image
    from mlflow.utils.file_utils import local_file_uri_to_path

    if not re.fullmatch(r"[a-zA-Z0-9_\-./ ]+", key):
        raise ValueError(f"image key {key!r}: alphanumerics, '_', '-', '.', ' ' and '/' only")
    folder = Path(local_file_uri_to_path(artifact_uri)) / "images"
    name = f"{key.replace('/', '~')}+step+{step}+timestamp+{timestamp_ms}+{uuid.uuid4()}"
    pil = convert_to_pil_image(np.asarray(image))
    if encode_png is None:
        buffer = io.BytesIO()
        pil.save(buffer, format="PNG", compress_level=1)
        png = buffer.getvalue()
    else:
        png = encode_png(np.asarray(image))
    buffer = io.BytesIO()
    compress_image_size(pil).save(buffer, format="WEBP", method=0)  # Pillow's quality 80, as MLflow
    written = []
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for path, data in ((folder / f"{name}.png", png),
                           (folder / f"{name}+compressed.webp", buffer.getvalue())):
            written.append(path)
            path.write_bytes(data)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


@functools.cache
def _history_pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="bpl-history")


# A forked process (the sweep's workers) inherits the pool without its thread: it would never run.
os.register_at_fork(after_in_child=_history_pool.cache_clear)


_WARNED: set[str] = set()


def _warn_once(message: str, topic: str = "tables") -> None:
    """One line on stderr, the first time in this process for `topic` (not once per run of a sweep)."""
    if topic not in _WARNED:
        _WARNED.add(topic)
        print(f"backprop-lab warning: {message}", file=sys.stderr, flush=True)


#: The columns of MLflow's `metrics` table the fast insert writes, and all the table has (MLflow
#: 3.17.2). Any other set means MLflow changed the table: the insert is not attempted.
METRICS_COLUMNS = frozenset({"run_uuid", "key", "value", "timestamp", "step", "is_nan"})
#: ... and those of `latest_metrics`, `params` and `tags`, which `write_batch` writes.
LATEST_METRICS_COLUMNS = METRICS_COLUMNS
PARAMS_COLUMNS = TAGS_COLUMNS = frozenset({"run_uuid", "key", "value"})
#: ... and those of `inputs`, `input_tags` and `datasets`, which `log_dataset` reads and writes.
INPUTS_COLUMNS = frozenset({"input_uuid", "source_type", "source_id", "destination_type",
                            "destination_id", "step"})
INPUT_TAGS_COLUMNS = frozenset({"input_uuid", "name", "value"})
DATASETS_COLUMNS = frozenset({"dataset_uuid", "experiment_id", "name", "digest", "dataset_source_type",
                              "dataset_source", "dataset_schema", "dataset_profile"})
#: ... and those of `runs`, whose status and end_time `write_batch(end_status=...)` sets.
RUNS_COLUMNS = frozenset({"run_uuid", "name", "source_type", "source_name", "entry_point_name",
                          "user_id", "status", "start_time", "end_time", "deleted_time",
                          "source_version", "lifecycle_stage", "artifact_uri", "experiment_id"})


# SQLite's own refusals of a write (sqlite3 error texts): the store failed, not MLflow's schema.
_STORE_REFUSALS = ("disk is full", "disk I/O error", "database is locked", "readonly database")


def _disk_refused(exc: BaseException) -> bool:
    """The artifact folder's file system refused a write (full, quota, read-only, I/O error)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO)


def _store_refused(exc: BaseException) -> bool:
    return isinstance(exc, sqlalchemy.exc.OperationalError) and any(r in str(exc) for r in _STORE_REFUSALS)


def _insert_metric_rows(client: MlflowClient, run_id: str, timestamp_ms: int, rows: list,
                        blob: str) -> None:
    """rows [(key, step, value), ...] (and the same as JSON, `blob`) into MLflow's metrics
    table in one transaction (all or nothing: a failure leaves no row behind)."""
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    table = SqlMetric.__table__
    if set(table.c.keys()) != METRICS_COLUMNS:
        raise LookupError(f"MLflow's metrics table has columns {sorted(table.c.keys())}, "
                          f"expected {sorted(METRICS_COLUMNS)}")
    engine = client._tracking_client.store.engine  # private: any failure falls back (caller)
    cols = ("run_uuid", "key", "value", "timestamp", "step", "is_nan")
    into = f"INSERT INTO {table.name} ({', '.join(cols)})"
    bulk = (f"{into} SELECT ?, json_extract(j.value, '$[0]'), json_extract(j.value, '$[2]'), ?, "
            "json_extract(j.value, '$[1]'), 0 FROM json_each(?) AS j")
    with engine.begin() as conn:
        try:
            conn.exec_driver_sql(bulk, (run_id, timestamp_ms, blob))
            return
        except sqlalchemy.exc.OperationalError as exc:
            if "json_each" not in str(exc):  # an SQLite built without JSON: the slower way
                raise
        conn.exec_driver_sql(f"{into} VALUES (?, ?, ?, ?, ?, 0)",
                             [(run_id, k, v, timestamp_ms, st) for k, st, v in rows])


def log_dataset(client: MlflowClient, run_id: str, X, y, *, name: str, context: str) -> str:
    """The dataset as an MLflow input (name, digest of the arrays, schema, shapes); returns the
    path it took: "sql" or "log_inputs".

    MLflow's log_inputs costs ~6 ms of CPU here (two sessions, the run loaded, ORM objects).
    On a SQLite store whose experiment already holds this dataset (same name and digest: every
    run of a sweep but the first per dataset) the run is linked to it in ONE transaction on
    MLflow's own tables instead (~1 ms), as log_inputs links it: an `inputs` row (DATASET ->
    RUN) and its `input_tags`. Guarded like write_batch: the columns pinned (INPUTS_COLUMNS,
    INPUT_TAGS_COLUMNS, DATASETS_COLUMNS); a new dataset, a run not active or another store take
    log_inputs silently; any other failure rolls back and takes log_inputs with one warning per
    process. A store refusing the write (full disk, locked) raises.
    """
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import DatasetInput, InputTag

    ds = from_numpy(X, targets=y, name=name, source=_LOCAL_SOURCE())
    entity = DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
    if str(client.tracking_uri).startswith("sqlite:"):
        try:
            if _link_known_dataset(client, run_id, entity):
                return "sql"
        except Exception as exc:
            if _store_refused(exc):
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0][:160]
            _warn_once(f"fast link of a dataset input in MLflow's tables failed ({type(exc).__name__}: "
                       f"{first_line}); logging dataset inputs with MLflow's log_inputs (slower); "
                       "see docs/pipeline.md, 'Upgrading MLflow'", topic="inputs")
    for attempt in range(3):
        try:
            client.log_inputs(run_id, datasets=[entity])
            return "log_inputs"
        except MlflowException as exc:
            # Jobs that start together with the same data race on MLflow's unique
            # (experiment, name, digest) dataset row (seen with Ray workers on a server);
            # the loser's retry finds the row and links the run to it.
            if "unique" not in str(exc).lower() or attempt == 2:
                raise
            time.sleep(0.2 * (attempt + 1))


def _link_known_dataset(client: MlflowClient, run_id: str, entity) -> bool:
    """True when linked; False (nothing written) when the run is not active or its experiment
    does not hold the dataset yet (log_inputs creates the dataset's row)."""
    import uuid

    from mlflow.store.tracking.dbmodels.models import SqlDataset, SqlInput, SqlInputTag

    for model, table, columns in ((SqlInput, "inputs", INPUTS_COLUMNS),
                                  (SqlInputTag, "input_tags", INPUT_TAGS_COLUMNS),
                                  (SqlDataset, "datasets", DATASETS_COLUMNS)):
        if model.__tablename__ != table or set(model.__table__.c.keys()) != columns:
            raise LookupError(f"MLflow's {model.__tablename__} table has columns "
                              f"{sorted(model.__table__.c.keys())}, expected {sorted(columns)}")
    engine = client._tracking_client.store.engine  # private: any failure falls back (caller)
    with engine.begin() as conn:
        run = conn.exec_driver_sql("SELECT experiment_id, lifecycle_stage FROM runs WHERE run_uuid = ?",
                                   (run_id,)).first()
        if run is None or run[1] != "active":
            return False
        dataset_uuid = conn.exec_driver_sql(
            "SELECT dataset_uuid FROM datasets WHERE experiment_id = ? AND name = ? AND digest = ?",
            (run[0], entity.dataset.name, entity.dataset.digest)).scalar()
        if dataset_uuid is None:
            return False
        input_uuid = uuid.uuid4().hex
        linked = conn.exec_driver_sql(
            "INSERT INTO inputs (input_uuid, source_type, source_id, destination_type, "
            "destination_id, step) VALUES (?, 'DATASET', ?, 'RUN', ?, 0) ON CONFLICT DO NOTHING",
            (input_uuid, dataset_uuid, run_id)).rowcount
        if linked and entity.tags:  # log_inputs tags only the input it creates
            conn.exec_driver_sql("INSERT INTO input_tags (input_uuid, name, value) VALUES (?, ?, ?)",
                                 [(input_uuid, tag.key, tag.value) for tag in entity.tags])
    return True


def _LOCAL_SOURCE():
    # Generated in memory from the seed: no file or URL to point at.
    from mlflow.data.code_dataset_source import CodeDatasetSource

    return CodeDatasetSource(tags={"generator": "backprop_lab.core.data.load_dataset"})


@functools.cache
def _git_info() -> tuple[str, str]:
    """(commit, dirty) of the repo, once per process ('unknown' outside a git checkout)."""
    root = repo_root()
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=5, check=True).stdout.strip()
        # Tracked files only: run outputs are git-ignored and untracked files never change a run.
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=5, check=True).stdout
        return commit, str(bool(status.strip())).lower()
    except (OSError, subprocess.SubprocessError):
        return "unknown", "unknown"


def environment_tags() -> dict[str, str]:
    """bpl.git_commit / git_dirty / python / numpy / mlflow, plus the UI's own source tags."""
    import numpy

    commit, dirty = _git_info()
    tags = {
        "bpl.git_commit": commit, "bpl.git_dirty": dirty,
        "bpl.python": platform.python_version(), "bpl.numpy": numpy.__version__,
        "bpl.mlflow": mlflow.__version__,
        "mlflow.source.name": "scripts/train.py", "mlflow.source.type": "LOCAL",
    }
    if commit != "unknown":
        tags["mlflow.source.git.commit"] = commit
    return tags


def log_artifact_dir(client: MlflowClient, run_id: str, folder: str | Path,
                     artifact_uri: str | None = None) -> None:
    """Upload everything under folder in ONE call (keeps its sub-folders: plots/, config/).

    artifact_uri: the run's (from create_run); saves MLflow the get_run it does to find it.
    """
    if artifact_uri is None:
        client.log_artifacts(run_id, str(folder))
        return
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    get_artifact_repository(artifact_uri, tracking_uri=client.tracking_uri).log_artifacts(str(folder))
