"""The store side of `make ui` / `make server`: check it, create it, probe a database server.

Split from serve.py (which starts and stops the MLflow process). Nothing here imports mlflow at
module level: `scripts/serve.py` answers `--help` and bad options without the slow import.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path
from urllib.parse import urlparse

from backprop_lab.config.schema import redact
from backprop_lab.env import QUIET_ENV, check_writable_dir
from backprop_lab.tracking.sqlite_file import StoreError, check_sqlite_store

# Database servers as backend stores (SQLAlchemy URI schemes, with or without +driver).
SQL_SERVER_SCHEMES = ("postgresql", "mysql", "mssql")
# The server's environment: no outbound look-ups (backprop_lab.env), no job-execution workers.
SERVER_ENV = {**QUIET_ENV, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


class ServeError(RuntimeError):
    """A problem the user can fix (busy port, unwritable store, ...); the message is one line,
    with any credentials in a URI redacted."""

    def __init__(self, message: str):
        super().__init__(redact(message))


def local_dir_of(uri: str) -> Path | None:
    """The local folder behind a path or file: URI, None for remote URIs (s3:, http:, ...)."""
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else uri).expanduser().resolve()
    return None


def _ensure_writable_dir(path: Path, what: str, option: str) -> None:
    problem = check_writable_dir(path)
    if problem is not None:
        raise ServeError(f"{what}: {problem}; pass a writable {option}")


def check_store(store_uri: str, artifact_root: str) -> None:
    """Fail early, in one line, on a store or artifact folder that cannot be written."""
    if store_uri.startswith("sqlite:///"):
        db = Path(store_uri[len("sqlite:///"):])
        if not db.is_absolute():
            raise ServeError(f"--store-uri {store_uri} must be absolute (sqlite:////abs/path/mlflow.db)")
        try:  # a folder, random bytes, a damaged or foreign file, missing tables: refused now,
            check_sqlite_store(db)  # not after ~100 s of MLflow's retries in the server
        except StoreError as e:
            raise ServeError(f"{str(e).replace('tracking.uri', '--store-uri')}") from None
        _ensure_writable_dir(db.parent, "store folder", "--store-uri")
        if db.exists() and not os.access(db, os.W_OK):
            raise ServeError(f"store {db} is read-only; pass a writable --store-uri")
    elif store_uri.startswith("sqlite:"):
        raise ServeError(f"--store-uri {store_uri}: use sqlite:////absolute/path/mlflow.db")
    local = local_dir_of(artifact_root)
    if local is not None:
        _ensure_writable_dir(local, "artifact root", "--artifact-root")


def prepare_store(store_uri: str, artifact_root: str) -> None:
    """Create the store with the project's own code before MLflow's server or UI sees it.

    MLflow would give the Default experiment `<cwd>/mlruns` (client) or `mlflow-artifacts:/0`
    (server); `store.prepare_store` gives it an explicit local location and copies a migrated
    schema instead of migrating each new file. A database server (PostgreSQL, MySQL) is probed
    once, then migrated here with the artifact root. Raises ServeError with one line.
    """
    for key, value in SERVER_ENV.items():
        os.environ.setdefault(key, value)
    local = local_dir_of(artifact_root)
    if store_uri.startswith(SQL_SERVER_SCHEMES):
        _prepare_sql_server_store(store_uri, local.as_uri() if local is not None else artifact_root)
        return
    from backprop_lab.tracking.store import StoreError
    from backprop_lab.tracking.store import prepare_store as prepare_tracking_store

    try:
        prepare_tracking_store(store_uri, str(local) if local is not None else artifact_root)
    except StoreError as e:
        raise ServeError(str(e)) from None


def redact_uri(uri: str) -> str:
    """`uri` with its credentials (user:PASSWORD@host) replaced by ***, for messages and logs."""
    return redact(uri)


def _scrub(text: str, uri: str) -> str:
    """`text` without the credentials of `uri`, wherever (and however) they appear in it."""
    password = urlparse(uri).password
    text = redact(text)
    return text.replace(password, "***") if password else text


def _prepare_sql_server_store(store_uri: str, artifact_root: str) -> None:
    """Check a database-server store in seconds, then build MLflow's schema in it.

    MLflow retries a failing connection ~10 times with back-off (~100 s of warnings) before it
    says why; one probe here fails at once (connect timeout 10 s) with the driver's reason. Then
    MLflow's own SqlAlchemyStore runs the migrations (seconds on an empty database, nothing on a
    migrated one) and gives the Default experiment `<artifact_root>/0`, not `<cwd>/mlruns/0`.
    """
    shown = redact_uri(store_uri)
    import sqlalchemy

    try:
        timeout = {} if store_uri.startswith("mssql") else {"connect_timeout": 10}  # psycopg2, pymysql
        engine = sqlalchemy.create_engine(store_uri, connect_args=timeout)
        with engine.connect():
            pass
        engine.dispose()
    except ModuleNotFoundError as e:
        raise ServeError(f"--store-uri {shown} needs the {e.name} driver in this environment "
                         f"(PostgreSQL: pip install psycopg2-binary)") from None
    except Exception as e:  # sqlalchemy / driver errors: bad host, password, database name
        raise ServeError(f"store {shown} cannot be opened: {_scrub(_first_line(e), store_uri)}") from None
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    try:
        SqlAlchemyStore(store_uri, artifact_root).engine.dispose()  # MLflow's server reconnects
    except Exception as e:
        raise ServeError(f"store {shown} cannot be migrated: {_scrub(_first_line(e), store_uri)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def store_exists(store_uri: str) -> bool:
    """True for a SQLite file that already holds MLflow's schema (skips a ~3-10 s mlflow import)."""
    if not store_uri.startswith("sqlite:///"):
        return False
    db = Path(store_uri[len("sqlite:///"):])
    if not db.is_file():
        return False
    try:
        with contextlib.closing(sqlite3.connect(f"{db.as_uri()}?mode=ro", uri=True)) as con:
            names = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.Error:
        return False
    return {"alembic_version", "experiments"} <= names
