"""Where the tracking store is, and making it usable before any run starts.

`resolve_tracking(rc) -> (uri, artifact_root)`; `prepare_store(uri, artifact_root) -> MlflowClient`
creates a SQLite store once, in the calling process (folders, schema), or checks a server
quickly. Problems end in `StoreError`, one line naming the path or URI. See docs/pipeline.md.
`exit_quickly()` (an entry point's atexit hook): the stores closed, then no final collections.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import gc
import logging
import os
import shutil
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from backprop_lab.config.schema import redact
from backprop_lab.env import check_writable_dir, repo_root
from backprop_lab.tracking.sqlite_file import StoreError, check_sqlite_store

# A client that gives up quickly on a dead server instead of retrying for minutes (users can
# still override these; MLflow reads them at each request, so any time before the first one works).
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
# MLflow prints "View run ... at: <tracking URI>" for server runs: a password in the URI would be
# printed with it, and a sweep's output is one line per run (ours).
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

if TYPE_CHECKING:  # mlflow is imported only when a store is opened (~3 s of CPU): the checks
    from mlflow.tracking import MlflowClient  # above it (check_store_quickly) run without it

HEALTH_TIMEOUT_S = 2.5
# MLflow opens a SQL engine with up to 10 attempts and back-off (0.1 * (2**n - 1) s: ~100 s in
# all) before it says why. A local file does not heal in 100 s: one short retry is enough.
ENGINE_ATTEMPTS = 2


def bound_engine_retries(attempts: int = ENGINE_ATTEMPTS) -> bool:
    """Cap MLflow's engine retries (private `mlflow.store.db.utils.MAX_RETRY_COUNT`).

    False when that constant is gone (another MLflow): then the retries are MLflow's own, and
    `check_sqlite_store` still refuses the broken files we know of before MLflow opens them.
    """
    try:
        from mlflow.store.db import utils as db_utils
    except ImportError:
        return False
    if not isinstance(getattr(db_utils, "MAX_RETRY_COUNT", None), int):
        return False
    db_utils.MAX_RETRY_COUNT = attempts
    return True



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


def check_store_quickly(uri: str) -> None:
    """The checks that need no mlflow import: a SQLite file read-only, or one GET /health.

    Run before `tracking.client` is imported, so a broken store or a dead server ends in one
    line within a second or two, not after mlflow's import. prepare_store runs them again.
    """
    db = sqlite_path(uri)
    if db is not None and _prepared_here(uri, db):
        # Open in this process (a sweep's every job after its first): checked already, and a
        # second open + close of the file would drop this process's POSIX locks on it, SQLite's
        # own connections' included. Another process closing the store then takes it for the
        # last one and deletes the WAL still in use: a 1,000-job sweep on 2 forked workers
        # kept 11 runs (sqlite.org/howtocorrupt.html, 2.2).
        return
    if db is not None:
        check_sqlite_store(db)
        _check_writable_dir(db.parent, f"SQLite store {db}")  # the folder a run creates anyway
    elif uri.startswith(("http://", "https://")):
        check_server(uri)


def prepare_store(uri: str, artifact_root: str | None = None) -> MlflowClient:
    """Create (or check) the store once, in this process, and return a client for it.

    SQLite: create the parent folder and the schema here, so parallel workers never race to
    migrate a fresh file. HTTP: one short GET /health; a dead server fails in ~3 s, not minutes.
    Raises StoreError (one line naming the path or URI).

    A SQLite store already prepared by this process (same file, same artifact root) is not
    checked again: every job of a sweep calls this, and the checks cost a query and two probes.
    """
    # "Creating initial MLflow database tables..." is noise in a sweep's one-line-per-run output.
    for name in ("mlflow.store.db.utils", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    _drop_mlflow_db_error_logs()
    db = sqlite_path(uri)
    memo_key = (uri, artifact_root)
    known = _PREPARED.get(memo_key) if db is not None else None
    if known is not None and known[0] == file_id(db):
        return known[1]
    if db is not None:
        check_sqlite_store(db)  # before anything writes: refused stores stay as they were
        _sqlite_sync_normal()
        _check_writable_dir(db.parent, f"SQLite store {db}")
        if db.exists() and not os.access(db, os.W_OK):
            raise StoreError(f"SQLite store {db} is not writable; pick another tracking.uri")
        if artifact_root:
            _check_writable_dir(Path(artifact_root), f"artifact root {artifact_root}")
        if not db.exists():
            _copy_schema_template(db, artifact_root)
        if db.exists():  # before MLflow's engine connects, so its connections see WAL
            _switch_to_wal(db)
    elif uri.startswith(("http://", "https://")):
        check_server(uri)
    from mlflow.tracking import MlflowClient

    bound_engine_retries()
    client = MlflowClient(tracking_uri=uri)
    try:
        client.search_experiments(max_results=1)  # builds the SQLite schema on first use
    except Exception as exc:  # MlflowException, sqlite/sqlalchemy errors (locked, read-only file)
        raise StoreError(f"tracking store {uri} cannot be opened: {_first_line(exc)}") from None
    identity = file_id(db) if db is not None else None
    if identity is not None:
        _PREPARED[memo_key] = (identity, client)
    return client


def close_engines() -> int:
    """Close the pooled connections of every SQLAlchemy engine in this process (MLflow keeps one
    per store); the number of engines. `Engine.dispose()` is SQLAlchemy's public call: an engine
    used again opens new connections. On a WAL store the last connection to close checkpoints
    the WAL into mlflow.db and deletes it (SQLite's rule), so a reader finds one finished file."""
    if "sqlalchemy" not in sys.modules:  # no engine can exist; do not import it to find none
        return 0
    from sqlalchemy.engine import Engine

    engines = [obj for obj in gc.get_objects() if isinstance(obj, Engine)]
    for engine in engines:
        with contextlib.suppress(Exception):  # at exit: one broken engine must not keep the others open
            engine.dispose()
    return len(engines)


def exit_quickly() -> None:
    """An entry point's atexit hook: close the stores (`close_engines`), then `gc.freeze()`.

    With MLflow, pandas and matplotlib loaded, the collections Python runs as it finalises walk
    about a million objects (~1 s of a sweep's exit, docs/speed.md); `gc.freeze()` moves them to
    the permanent generation those collections skip, and the OS frees the memory. What it skips
    is finalising objects only a reference cycle kept alive, and SQLAlchemy's SQLite connections
    were such objects: never closed, they left the WAL unmerged and the next reader's close
    rewrote mlflow.db (the revert 2f10d18). So they are closed first, explicitly. Registered
    early (scripts/train.py), this runs after the atexit handlers of what was imported later
    (MLflow's, multiprocessing's) and before logging's flush."""
    close_engines()
    gc.freeze()


def _repeats_a_raised_error(record: logging.LogRecord) -> bool:
    """False for MLflow's "SQLAlchemy database error. The following exception is caught." record:
    MLflow logs it with its whole traceback (~40 lines) and then raises the same error as an
    MlflowException, which our callers turn into one line (a sweep's job: its `failed` line).
    On a full disk every write of every job logged one."""
    return not str(record.msg).startswith("SQLAlchemy database error")


def _drop_mlflow_db_error_logs() -> None:
    logger = logging.getLogger("mlflow.store.db.utils")
    if _repeats_a_raised_error not in logger.filters:
        logger.addFilter(_repeats_a_raised_error)


# (uri, artifact_root) -> ((st_dev, st_ino) of the SQLite file when prepared, client). A store
# deleted or replaced since (tests, `make clean`) has another identity and is prepared again.
_PREPARED: dict[tuple[str, str | None], tuple[tuple[int, int], MlflowClient]] = {}


def _prepared_here(uri: str, db: Path) -> bool:
    """prepare_store already opened this very file (same identity) in this process."""
    identity = file_id(db)
    return identity is not None and any(
        key[0] == uri and known[0] == identity for key, known in _PREPARED.items())


def file_id(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _switch_to_wal(db: Path) -> None:
    """Put the SQLite store in WAL mode (stored in the file; `mlflow ui`/`server` use it too).

    With WAL, readers (the UI, notebooks) never block the writing sweep nor it them, and with
    synchronous=NORMAL (set per connection by _sqlite_sync_normal) a commit does not wait for
    fsync: ~3 ms saved per MLflow call here, a dozen calls per run. That is SQLite's documented
    safe pair (a power cut may lose the last commits, never corrupts the file); the store must sit
    on a local disk, not NFS. A store another process holds locked is switched next time.
    """
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(db, timeout=1.0)) as con:
            con.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass


@functools.cache
def _sqlite_sync_normal() -> None:
    """Every SQLite connection of this process (MLflow's engines) on a WAL store: synchronous=NORMAL."""
    import sqlite3

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        if isinstance(dbapi_connection, sqlite3.Connection):
            mode = dbapi_connection.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() == "wal":  # DELETE mode with NORMAL could corrupt on power loss
                dbapi_connection.execute("PRAGMA synchronous=NORMAL")


def _schema_template() -> Path | None:
    """A fresh MLflow SQLite schema for this MLflow version, built once per machine and cached.

    Building the schema runs MLflow's ~60 alembic migrations: 3-15 s here, paid by every new
    store (each test, each cold benchmark). Copying a migrated empty file takes milliseconds.
    None when no cache folder is writable (then MLflow migrates the new file itself).
    """
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

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
    problem = check_writable_dir(folder)
    if problem is not None:
        raise StoreError(f"{what}: {problem}; pick a writable path")


def health_request(uri: str) -> urllib.request.Request:
    """GET <server>/health for a tracking URI, its credentials sent as MLflow sends them.

    `http://user:password@host:port` is not a URL urllib can open (it would take
    `user:password@host` for the host): the credentials leave the URL and go in a basic-auth
    header, as MLflow's client does; MLFLOW_TRACKING_USERNAME / _PASSWORD win, as in MLflow.
    """
    parsed = urllib.parse.urlsplit(uri)
    host = parsed.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parsed.port is not None:
        netloc += f":{parsed.port}"
    url = urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path.rstrip("/") + "/health", "", ""))
    request = urllib.request.Request(url)
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or urllib.parse.unquote(parsed.username or "")
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or urllib.parse.unquote(parsed.password or "")
    if user or password:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return request


def check_server(uri: str, timeout: float = HEALTH_TIMEOUT_S) -> None:
    """One GET <uri>/health; raise StoreError naming the URI (password hidden) unless 200."""
    try:
        request = health_request(uri)
        with urllib.request.urlopen(request, timeout=timeout) as resp:  # the user's own server
            if resp.status == 200:
                return
            reason = f"HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        reason = f"HTTP {exc.code}" + (": check MLFLOW_TRACKING_USERNAME/PASSWORD" if exc.code in (401, 403)
                                       else "")
    except ValueError as exc:  # a port that is not a number, an unknown scheme
        reason = f"bad URI: {exc}"
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as exc:
        reason = str(getattr(exc, "reason", exc)) or type(exc).__name__
    raise StoreError(f"tracking server {redact(uri)} is not reachable ({redact(reason)}); "
                     "start it with `make server` or set tracking.uri / MLFLOW_TRACKING_URI")


def _first_line(exc: BaseException) -> str:
    text = redact(str(exc).strip())
    return text.splitlines()[0][:300] if text else type(exc).__name__
