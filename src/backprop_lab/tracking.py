"""MLflow plumbing: where the store is, creating it once, experiments, run lookup, batched logging.

Everything here talks to MLflow through an explicit `MlflowClient` (no fluent global state), so
several runs in one process, or several processes on one store, never share an "active run".
Imports no layer internals (core modules); see docs/pipeline.md for the why of each choice.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
import platform
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping

from backprop_lab.config import UserError

# Before mlflow is imported anywhere through us: no outbound telemetry, and a client that gives
# up quickly on a dead server instead of retrying for minutes (users can still override these).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, Run, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

PARAM_CHUNK = 100  # MLflow's log_batch limit for params
METRIC_CHUNK = 1000  # ... and for metrics
PARAM_VALUE_MAX = 6000  # MLflow's param value length limit
HEALTH_TIMEOUT_S = 2.5


class StoreError(UserError, RuntimeError):
    """The tracking store cannot be used; `str()` is one line naming the URI or path."""


def repo_root(start: Path | None = None) -> Path:
    """The folder holding pyproject.toml above src/backprop_lab, else the current directory."""
    here = Path(__file__).resolve().parent  # .../src/backprop_lab
    candidate = here.parent.parent
    if (candidate / "pyproject.toml").is_file() and (candidate / "src" / "backprop_lab").is_dir():
        return candidate
    return (start or Path.cwd()).resolve()


def resolve_tracking(rc: Any) -> tuple[str, str | None]:
    """RunConfig -> (tracking uri, artifact root folder or None when a server stores artifacts)."""
    uri = rc.tracking.uri or f"sqlite:///{repo_root() / 'mlflow.db'}"
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///"))
        # Relative paths are resolved now, so Hydra or a worker's cwd cannot move the store.
        uri = f"sqlite:///{path if path.is_absolute() else path.resolve()}"
        root = rc.tracking.artifact_root or str(repo_root() / "mlartifacts")
        return uri, str(Path(root).resolve())
    root = rc.tracking.artifact_root
    return uri, (str(Path(root).resolve()) if root and "://" not in root else root)


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def prepare_store(uri: str, artifact_root: str | None = None) -> MlflowClient:
    """Create (or check) the store once, in this process, and return a client for it.

    SQLite: create the parent folder and the schema here, so parallel workers never race to
    migrate a fresh file. HTTP: one short GET /health; a dead server fails in ~3 s, not minutes.
    Raises StoreError (one line naming the path or URI).
    """
    # "Creating initial MLflow database tables..." is noise in a sweep's one-line-per-run output.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    db = sqlite_path(uri)
    if db is not None:
        _check_writable_dir(db.parent, f"SQLite store {db}")
        if db.exists() and not os.access(db, os.W_OK):
            raise StoreError(f"SQLite store {db} is not writable; pick another tracking.uri")
        if artifact_root:
            _check_writable_dir(Path(artifact_root), f"artifact root {artifact_root}")
        if not db.exists():
            _copy_schema_template(db, artifact_root)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)  # builds the SQLite schema on first use
    except MlflowException as exc:
        raise StoreError(f"tracking store {uri} cannot be opened: {_first_line(exc)}") from None
    except Exception as exc:  # sqlite/sqlalchemy errors (locked, corrupt, read-only file)
        raise StoreError(f"tracking store {uri} cannot be opened: {_first_line(exc)}") from None
    return client


def _schema_template() -> Path | None:
    """A fresh MLflow SQLite schema for this MLflow version, built once per machine and cached.

    Building the schema runs MLflow's ~60 alembic migrations: 3-15 s here, paid by every new
    store (each test, each cold benchmark). Copying a migrated empty file takes milliseconds.
    None when no cache folder is writable (then MLflow migrates the new file itself).
    """
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "backprop-lab"
    template = cache / f"mlflow-{mlflow.__version__}-schema.db"
    if template.is_file():
        return template
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / f".building-{os.getpid()}.db"
        tmp.unlink(missing_ok=True)
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
        try:
            os.link(tmp, template)  # atomic create-if-absent: racing builders keep the first
        except FileExistsError:
            pass
        tmp.unlink()
        return template
    except (OSError, MlflowException):
        return None


def _copy_schema_template(db: Path, artifact_root: str | None) -> None:
    """Create `db` from the template; never overwrites a store another process just created."""
    template = _schema_template()
    if template is None:
        return
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    shutil.copyfile(template, tmp)
    if artifact_root:
        # The template's "Default" experiment points where it was built; point it at our root,
        # as MLflow would have done had it created this store with that artifact root.
        import sqlite3

        with contextlib.closing(sqlite3.connect(tmp)) as con, con:
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = 0",
                        ((Path(artifact_root) / "0").resolve().as_uri(),))
    try:
        os.link(tmp, db)  # atomic: parallel workers get one complete store, never a half copy
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def _check_writable_dir(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{what}: cannot create folder {folder} ({exc.strerror or exc}); "
                         "pick a writable path") from None
    # os.access lies for root, so really try to write.
    probe = folder / f".bpl-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise StoreError(f"{what}: folder {folder} is not writable ({exc.strerror or exc}); "
                         "pick a writable path") from None


def check_server(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """One GET <uri>/health; raise StoreError naming the URI if it does not answer 200."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (user's own server)
            if resp.status == 200:
                return
            reason = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}"
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
    raise StoreError(f"tracking server {uri} is not reachable ({reason}); "
                     "start it with `make server` or set tracking.uri / MLFLOW_TRACKING_URI")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


# --------------------------------------------------------------------------- experiments and runs


def experiment_artifact_location(artifact_root: str, name: str) -> str:
    """file:// URI of a per-experiment folder under artifact_root (name made path-safe)."""
    safe = re.sub(r"[^A-Za-z0-9._/-]+", "_", name).strip("/") or "default"
    return (Path(artifact_root) / safe).resolve().as_uri()


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """Experiment id for `name`, creating it with an explicit artifact location if needed.

    With SQLite, artifact_root is a folder: the location is a file URI under it (otherwise a
    client drops artifacts under its cwd). With a server (artifact_root None) the server decides.
    Safe when several processes create the same experiment at once.
    """
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


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


def find_parent_run(client: MlflowClient, experiment_id: str, sweep_dir: str) -> Run | None:
    """The parent run of the multirun writing to sweep_dir (tag bpl.sweep_dir), else None.

    sweep_dir is compared as an absolute path (normalize_sweep_dir), whatever cwd it came from.
    """
    flt = (f"tags.`bpl.role` = 'parent' and "
           f"tags.`bpl.sweep_dir` = '{_quote(normalize_sweep_dir(sweep_dir))}'")
    runs = client.search_runs([experiment_id], filter_string=flt, max_results=1,
                              order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def normalize_sweep_dir(sweep_dir: str) -> str:
    return os.path.abspath(str(sweep_dir))


def find_finished_run(client: MlflowClient, experiment_id: str, config_key: str) -> Run | None:
    """A FINISHED run (finished or diverged) of the same config key in the experiment, else None."""
    flt = (f"tags.`bpl.config_key` = '{_quote(config_key)}' and attributes.status = 'FINISHED' "
           "and tags.`bpl.role` != 'parent'")
    runs = client.search_runs([experiment_id], filter_string=flt, max_results=1,
                              order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


# --------------------------------------------------------------------------- batched logging


def round_sig(value: float, digits: int = 6) -> float:
    """Round for display (the UI shows raw floats); the exact history is in history.csv."""
    if value == 0 or not math.isfinite(value):
        return float(value)
    return float(f"{value:.{digits}g}")


def log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> None:
    items = [Param(k, str(v)[:PARAM_VALUE_MAX]) for k, v in params.items()]
    for i in range(0, len(items), PARAM_CHUNK):
        client.log_batch(run_id, params=items[i:i + PARAM_CHUNK], synchronous=True)


def log_tags(client: MlflowClient, run_id: str, tags: Mapping[str, Any]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()], synchronous=True)


def metric_batch(key_steps_values: Iterable[tuple[str, Iterable[int], Iterable[float]]],
                 timestamp_ms: int) -> list[Metric]:
    """[(key, steps, values), ...] -> Metric list; non-finite values are dropped (diverged runs)."""
    out: list[Metric] = []
    for key, steps, values in key_steps_values:
        for step, value in zip(steps, values):
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


def log_history(client: MlflowClient, run_id: str, metrics: list[Metric]) -> None:
    """Per-epoch metrics, fast: one bulk INSERT on SQLite, log_batch elsewhere.

    MLflow's log_batch builds an ORM object per value (~0.3 ms each here: 3 s for a 9-series,
    1000-epoch run). On a SQLite store every row but the newest of each key goes in with one
    executemany through MLflow's own table definition; the newest rows then go through the
    public log_batch, which keeps MLflow's latest-metric table right. Any surprise in MLflow's
    internals falls back to the public path.
    """
    table, engine = _sql_metrics_table(client)
    if table is None:
        log_metrics(client, run_id, metrics)
        return
    latest: dict[str, Metric] = {}
    for m in metrics:
        cur = latest.get(m.key)
        if cur is None or (m.step, m.timestamp, m.value) > (cur.step, cur.timestamp, cur.value):
            latest[m.key] = m
    newest = {id(m) for m in latest.values()}
    rows = [(run_id, m.key, m.value, m.timestamp, m.step, False)
            for m in metrics if id(m) not in newest]
    if rows:
        cols = ("run_uuid", "key", "value", "timestamp", "step", "is_nan")
        assert set(cols) <= set(table.c.keys()), "MLflow's metrics table changed"
        sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        with engine.begin() as conn:
            conn.exec_driver_sql(sql, rows)
    log_metrics(client, run_id, list(latest.values()))


def _sql_metrics_table(client: MlflowClient):
    """(metrics table, engine) of a SQLite store, else (None, None)."""
    if not str(client.tracking_uri).startswith("sqlite:"):
        return None, None
    try:
        from mlflow.store.tracking.dbmodels.models import SqlMetric

        store = client._tracking_client.store  # private, hence the fallback
        return SqlMetric.__table__, store.engine
    except (AttributeError, ImportError):
        return None, None


def log_dataset(client: MlflowClient, run_id: str, X, y, *, name: str, context: str) -> None:
    """The dataset as an MLflow input (name, digest of the arrays, schema, shapes)."""
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import DatasetInput, InputTag

    ds = from_numpy(X, targets=y, name=name, source=_LOCAL_SOURCE())
    entity = DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
    client.log_inputs(run_id, datasets=[entity])


def _LOCAL_SOURCE():  # noqa: N802 - a tiny factory
    # Generated in memory from the seed: no file or URL to point at.
    from mlflow.data.code_dataset_source import CodeDatasetSource

    return CodeDatasetSource(tags={"generator": "backprop_lab.data.load_dataset"})


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


def log_artifact_dir(client: MlflowClient, run_id: str, folder: str | Path) -> None:
    """Upload everything under folder in ONE call (keeps its sub-folders: plots/, config/)."""
    client.log_artifacts(run_id, str(folder))

