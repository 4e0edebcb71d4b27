"""Re-run a logged run from its stored config and compare it with what was logged, exactly.

    python scripts/reproduce.py RUN_ID [--tracking-uri URI]      (make reproduce RUN_ID=...)

Reads the run's config/config.yaml artifact, recomputes the run in this process (same code path
as experiment.run: data, init, gradient check, training, gradient check) WITHOUT writing to the
store, then compares every logged metric history (as logged: downsampled by
record.logged_history, rounded by tracking.metric_batch, non-finite values dropped), history.npz
(exact float64) and params.npz (bit for bit).
Wall-clock metrics (time/*) are not compared. Prints MATCH or the first difference.
Exit code: 0 match, 1 difference, 2 bad input (unknown run, missing store or artifact).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

from backprop_lab.config.schema import ConfigError, redact, validate
from backprop_lab.tracking import store
from backprop_lab.tracking.sqlite_file import check_sqlite_store

# mlflow (tracking.client, ~4 s of imports) only once the store is known to exist and be usable:
# a missing or broken store is refused in about a second.

NOT_COMPARED = ("time/",)  # wall-clock seconds differ from run to run by nature


class ReproduceError(Exception):
    """Bad input: one line, exit code 2."""


def open_store(uri: str | None, run_id: str | None = None):
    """A client on an EXISTING store (never creates one: reproduce writes nothing). On SQLite, a
    run_id the store does not hold is refused here, before mlflow is imported."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{store.repo_root() / 'mlflow.db'}"
    db = store.sqlite_path(uri)
    if db is not None and not db.is_file():
        raise ReproduceError(f"tracking store {uri} does not exist; pass --tracking-uri or set "
                             "MLFLOW_TRACKING_URI to the store that holds the run")
    if db is not None:
        try:
            check_sqlite_store(db)  # damaged or foreign file: one line, not MLflow's retries
        except store.StoreError as exc:
            raise ReproduceError(str(exc)) from None
        if run_id is not None and not _holds_run(db, run_id):
            raise ReproduceError(not_found(run_id, uri))
    if uri.startswith(("http://", "https://")):
        try:
            store.check_server(uri)
        except store.StoreError as exc:
            raise ReproduceError(str(exc)) from None
    from backprop_lab.tracking import client as tracking

    return tracking.MlflowClient(tracking_uri=uri), uri


def _holds_run(db: Path, run_id: str) -> bool:
    import contextlib
    import sqlite3

    try:  # SELECT only (opened as check_sqlite_store opens it: a WAL store needs its -shm file)
        with contextlib.closing(sqlite3.connect(db, timeout=2.0)) as con:
            return con.execute("SELECT 1 FROM runs WHERE run_uuid = ?", (run_id,)).fetchone() is not None
    except sqlite3.Error:
        return True  # let MLflow say what is wrong


def not_found(run_id: str, uri: str) -> str:
    return (f"run {run_id!r} not found in {uri}; copy a run id from the UI (make ui) or from a "
            "sweep's summary")


def load_run(client, uri: str, run_id: str, folder: Path):
    """(run, RunConfig, local artifact folder) for run_id, or ReproduceError."""
    from backprop_lab.tracking import client as tracking

    try:
        run = client.get_run(run_id)
    except tracking.MlflowException:
        raise ReproduceError(not_found(run_id, uri)) from None
    if run.data.tags.get("bpl.role") == "parent":
        raise ReproduceError(f"run {run_id} is a sweep parent; pass one of its children "
                             "(see its sweep/children.csv)")
    if run.info.status != "FINISHED":
        raise ReproduceError(f"run {run_id} ended {run.info.status}, not FINISHED; only runs that "
                             "finished (or diverged) can be reproduced")
    try:
        local = Path(client.download_artifacts(run_id, "config", str(folder)))
        rc = validate(yaml.safe_load((local / "config.yaml").read_text()))
    except (tracking.MlflowException, OSError):
        raise ReproduceError(missing_artifact(run, "config/config.yaml")) from None
    except ConfigError as exc:
        raise ReproduceError(f"run {run_id}: stored config no longer valid: {exc}") from None
    return run, rc


def missing_artifact(run, path: str) -> str:
    return (f"run {run.info.run_id}: artifact {path} is missing from {run.info.artifact_uri} "
            "(deleted or moved?); without it the run cannot be compared")


def recompute(rc):
    """The run's computation, as experiment.run does it, without any logging."""
    from backprop_lab.core.compute import compute_run  # the run's own recipe, not a copy of it

    return compute_run(rc)


def expected_metrics(outcome) -> dict[str, list[tuple[int, float]]]:
    """key -> [(step, value)] exactly as a run logs them (downsampled, rounded, finite only)."""
    from backprop_lab.tracking import client as tracking
    from backprop_lab.tracking.record import logged_history

    logged = logged_history(outcome.history)
    series = [(k, logged["epoch"], v) for k, v in logged.items() if k != "epoch"]
    series += [(k, [0], [v]) for k, v in outcome.scalars.items()]
    out: dict[str, list[tuple[int, float]]] = {}
    for m in tracking.metric_batch(series, 0):
        out.setdefault(m.key, []).append((m.step, m.value))
    return out


def compare_metrics(client, run, outcome) -> tuple[str | None, int]:
    """(first difference or None, number of values compared)."""
    expected = {k: v for k, v in expected_metrics(outcome).items() if not k.startswith(NOT_COMPARED)}
    logged_keys = {k for k in run.data.metrics if not k.startswith(NOT_COMPARED)}
    if logged_keys != set(expected):
        only_logged = sorted(logged_keys - set(expected))
        only_rerun = sorted(set(expected) - logged_keys)
        return f"metric keys differ: only logged {only_logged[:5]}, only re-run {only_rerun[:5]}", 0
    n = 0
    for key in sorted(expected):
        history = client.get_metric_history(run.info.run_id, key)
        logged = sorted((m.step, m.value) for m in history)
        rerun = sorted(expected[key])
        for (s1, v1), (s2, v2) in zip(logged, rerun, strict=False):  # lengths compared below
            if s1 != s2 or v1 != v2:
                return f"{key} step {s1}: logged {v1!r}, re-run step {s2} {v2!r}", n
            n += 1
        if len(logged) != len(rerun):
            return f"{key}: {len(logged)} values logged, {len(rerun)} re-run", n
    return None, n


def compare_artifacts(client, run, outcome, folder: Path) -> str | None:
    """history.npz (float64, bit for bit) and params.npz (bit for bit).

    Raises ReproduceError naming the artifact when one is missing (nothing to compare with).
    """
    from backprop_lab.tracking import client as tracking
    from backprop_lab.tracking.record import read_history_npz

    run_id = run.info.run_id
    paths = {}
    for name in ("history.npz", "params.npz"):
        try:
            paths[name] = Path(client.download_artifacts(run_id, name, str(folder)))
        except (tracking.MlflowException, OSError):
            raise ReproduceError(missing_artifact(run, name)) from None
    npz_path = paths["params.npz"]
    logged = read_history_npz(paths["history.npz"])
    if list(logged) != list(outcome.history):
        return f"history.npz keys differ: logged {list(logged)}, re-run {list(outcome.history)}"
    epochs = np.asarray(outcome.history["epoch"])
    for name, rerun in outcome.history.items():
        a, b = logged[name], np.asarray(rerun, dtype=logged[name].dtype)
        if a.shape != b.shape:
            return f"history.npz {name}: {a.shape[0]} epochs logged, {b.shape[0]} re-run"
        diff = np.flatnonzero(~((a == b) | (np.isnan(a) & np.isnan(b))))
        if diff.size:
            i = int(diff[0])
            return f"history.npz {name} epoch {int(epochs[i])}: logged {a[i]!r}, re-run {b[i]!r}"
    with np.load(npz_path) as stored:
        for name, value in outcome.params.items():
            if name not in stored or not np.array_equal(stored[name], value, equal_nan=True) \
                    or stored[name].dtype != value.dtype:
                return f"params.npz {name} differs"
    return None


def reproduce(run_id: str, uri: str | None = None, out=sys.stdout) -> int:
    client, uri = open_store(uri, run_id)
    from backprop_lab.tracking import client as tracking

    with tempfile.TemporaryDirectory(prefix="bpl-repro-") as tmp:
        run, rc = load_run(client, uri, run_id, Path(tmp))
        outcome = recompute(rc)
        diff, n = compare_metrics(client, run, outcome)
        diff = diff or compare_artifacts(client, run, outcome, Path(tmp))
    name = f"run {run_id} ({run.info.run_name})"
    logged_at = (run.data.tags.get("bpl.git_commit"), run.data.tags.get("bpl.git_dirty"))
    now = tracking.environment_tags()
    if logged_at != (now.get("bpl.git_commit"), now.get("bpl.git_dirty")):
        print(f"note: logged at commit {logged_at[0]} (dirty={logged_at[1]}), re-run at "
              f"{now.get('bpl.git_commit')} (dirty={now.get('bpl.git_dirty')})", file=out)
    if diff:
        print(f"DIFFERENT: {name}: {diff}", file=out)
        return 1
    print(f"MATCH: {name}: {n} logged metric values, history.npz and params.npz identical "
          f"(time/* not compared)", file=out)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_id", nargs="?", help="the MLflow run id to reproduce")
    parser.add_argument("--tracking-uri", default=None,
                        help="store holding the run (default: MLFLOW_TRACKING_URI, "
                             "else the repo's mlflow.db)")
    args = parser.parse_args(argv)
    if not args.run_id:
        print("reproduce: RUN_ID is required: make reproduce RUN_ID=<run id>", file=sys.stderr)
        return 2
    try:
        return reproduce(args.run_id, args.tracking_uri)
    except ReproduceError as exc:
        print(f"reproduce: {redact(str(exc))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
