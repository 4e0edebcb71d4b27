"""Is this SQLite file an MLflow store we may open? Read once (SELECTs only), before MLflow sees it.

MLflow meets a broken file with ten engine retries and back-off (~100 s), then a traceback; it
migrates ANY SQLite file into its 66 tables (someone else's included) and silently re-creates a
dropped `metrics` or `tags` table in an old shape. `check_sqlite_store` refuses all of these in
one line, in milliseconds, and writes nothing. Plain sqlite3 only: `make ui` checks a store
without importing mlflow.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from pathlib import Path

from backprop_lab.config.schema import UserError

SQLITE_MAGIC = b"SQLite format 3\x00"
# The tables this project and MLflow's tracking API read and write in every run.
MLFLOW_CORE_TABLES = ("alembic_version", "experiments", "experiment_tags", "runs", "tags", "params",
                      "metrics", "latest_metrics")
_NEW_STORE = "point tracking.uri at a new file (sqlite:///path/to/mlflow.db)"


class StoreError(UserError, RuntimeError):
    """The tracking store cannot be used; `str()` is one line naming the URI or path."""


def check_sqlite_store(db: Path) -> None:
    """Raise StoreError (one line) unless `db` is absent, empty, or a complete MLflow store.

    Checks: a folder where the file should be; a file that is not SQLite (random bytes, a
    damaged header); a damaged schema page; a SQLite file of someone else's (no MLflow tables:
    refused, never migrated into); an MLflow store missing tables (reported, never patched).
    """
    if db.is_dir():
        raise StoreError(f"SQLite store {db} is a folder, not a file; use tracking.uri="
                         f"sqlite:///{db / 'mlflow.db'} (or another file)")
    try:
        size = db.stat().st_size
    except (FileNotFoundError, NotADirectoryError):
        return  # a new store: its folder is checked (and created) by prepare_store
    except OSError as exc:
        raise StoreError(f"SQLite store {db} cannot be read ({exc.strerror}); {_NEW_STORE}") from None
    if size == 0:
        return  # an empty file is an empty database: MLflow builds its schema in it
    try:
        with open(db, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise StoreError(f"SQLite store {db} cannot be read ({exc.strerror}); {_NEW_STORE}") from None
    if head != SQLITE_MAGIC:
        raise StoreError(f"SQLite store {db} is not a SQLite database (damaged, or another kind of "
                         f"file); restore it from a backup or {_NEW_STORE}")
    try:
        names, version = _read_schema(db)
    except sqlite3.OperationalError:
        # A WAL store being checkpointed by its last writer (its -shm file vanishing under us)
        # can fail one read with "disk I/O error": one short retry, as the guarantees promise.
        time.sleep(0.2)
        try:
            names, version = _read_schema(db)
        except sqlite3.OperationalError as exc:
            _raise_unreadable(db, exc)
    except sqlite3.DatabaseError as exc:
        raise StoreError(f"SQLite store {db} is damaged ({exc}); restore it from a backup or "
                         f"{_NEW_STORE}") from None
    _check_tables(db, names, version)


def _read_schema(db: Path) -> tuple[set[str], tuple | None]:
    """Table names and alembic version. Opened read-write on purpose: a read-only connection
    cannot create the -shm file a WAL-mode store (every store this project made) needs, and
    fails while another process closes the store; only SELECTs run, so nothing is written."""
    with contextlib.closing(sqlite3.connect(db, timeout=2.0)) as con:
        names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = (con.execute("SELECT version_num FROM alembic_version").fetchone()
                   if "alembic_version" in names else None)
    return names, version


def _raise_unreadable(db: Path, exc: sqlite3.OperationalError) -> None:
    if "locked" in str(exc):
        raise StoreError(f"SQLite store {db} is locked by another process (waited 2 s); "
                         "try again when it is done") from None
    if _disk_full(db.parent):  # SQLite says "disk I/O error": the file is fine, the disk is not
        raise StoreError(f"SQLite store {db} cannot be read ({exc}): the disk holding it is full; "
                         "free some space there and run the same command again") from None
    raise StoreError(f"SQLite store {db} cannot be read ({exc}); restore it from a backup or "
                     f"{_NEW_STORE}") from None


def _disk_full(folder: Path) -> bool:
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 64 * 1024


def _check_tables(db: Path, names: set[str], version: tuple | None) -> None:
    if not names:
        return  # an empty database
    present = [t for t in MLFLOW_CORE_TABLES if t in names]
    if not present:
        shown = ", ".join(sorted(names)[:5]) + (", ..." if len(names) > 5 else "")
        raise StoreError(f"{db} is a SQLite file but not an MLflow store (its tables: {shown}); "
                         f"it is left as it is: {_NEW_STORE}")
    missing = [t for t in MLFLOW_CORE_TABLES if t not in names]
    if missing:
        raise StoreError(f"SQLite store {db} is missing MLflow tables ({', '.join(missing)}); it is "
                         f"left as it is: restore it from a backup or {_NEW_STORE}")
    if version is None:
        raise StoreError(f"SQLite store {db} has no schema version (alembic_version is empty); "
                         f"restore it from a backup or {_NEW_STORE}")
