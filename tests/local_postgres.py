"""A throw-away PostgreSQL (Debian's binaries) on 127.0.0.1 for tests/test_postgres.py.

    pg = start_local_postgres(tmp_path / "pg")   # initdb, postgres in the foreground, CREATE DATABASE
    pg.uri                                       # postgresql+psycopg2://mlflow:<pw>@127.0.0.1:<port>/mlflow
    pg.stop()                                    # fast shutdown (what `pg_ctl stop -m fast` sends)

`postgres` runs as a direct child of this process (no pg_ctl, no runuser in between), in its own
session, so `stop()` ends exactly its tree by PID. As root, initdb and postgres run as the
unprivileged `postgres` user the Debian package creates (initdb refuses root); its data and
socket folders then live in a private folder under /tmp, since pytest's tmp_path sits under
/tmp/pytest-of-root (mode 0700), which that user cannot enter. Test-only settings: a random
password (scram-sha-256) over TCP, trust on the private unix socket, no fsync.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from backprop_lab.env import free_port

PG_ROOT = Path("/usr/lib/postgresql")
PG_USER = "postgres"  # created by Debian's postgresql-common
DB_USER = DB_NAME = "mlflow"


def pg_bindir() -> Path | None:
    """The newest /usr/lib/postgresql/<ver>/bin holding initdb and postgres, else None."""
    found = [d / "bin" for d in PG_ROOT.glob("*")
             if (d / "bin" / "initdb").exists() and (d / "bin" / "postgres").exists()]
    return max(found, key=lambda b: int(b.parent.name) if b.parent.name.isdigit() else 0) if found else None


def missing() -> str | None:
    """Why a local PostgreSQL cannot be used here, or None."""
    if pg_bindir() is None:
        return f"no PostgreSQL server binaries in {PG_ROOT}/<ver>/bin (apt-get install postgresql)"
    if importlib.util.find_spec("psycopg2") is None:
        return "psycopg2 is not installed (uv pip install psycopg2-binary)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(PG_USER)
        except KeyError:
            return f"running as root and no `{PG_USER}` user to run initdb/postgres as"
    return None


@dataclass
class LocalPostgres:
    root: Path  # data/ and sock/ (a private /tmp folder when root, else the caller's folder)
    port: int
    password: str
    proc: subprocess.Popen
    log_path: Path
    owns_root: bool  # root is ours to delete on stop()
    start_seconds: float = 0.0
    _stopped: bool = field(default=False, repr=False)

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://{DB_USER}:{self.password}@127.0.0.1:{self.port}/{DB_NAME}"

    def connect(self, dbname: str = DB_NAME):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=DB_USER, password=self.password,
                                dbname=dbname, connect_timeout=5)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 30.0) -> None:
        """SIGINT = fast shutdown (`pg_ctl stop -m fast`), then SIGKILL the group. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # backends outliving the postmaster, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        if self.owns_root:
            shutil.rmtree(self.root, ignore_errors=True)


def start_local_postgres(folder: Path, timeout: float = 60.0) -> LocalPostgres:
    """initdb + postgres on 127.0.0.1:<free port> + database `mlflow` owned by user `mlflow`."""
    t0 = time.monotonic()
    bindir = pg_bindir()
    assert bindir is not None, missing()
    folder.mkdir(parents=True, exist_ok=True)
    as_root = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="bpl-pg-")) if as_root else folder
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    password = secrets.token_hex(16)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    user_kw: dict = {}
    if as_root:
        pw = pwd.getpwnam(PG_USER)
        for p in (root, sock, pwfile):
            os.chown(p, pw.pw_uid, pw.pw_gid)
        user_kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "HOME": str(root)}
    log_path = folder / "postgres.log"
    try:
        subprocess.run(
            [str(bindir / "initdb"), "-D", str(data), "-U", DB_USER, f"--pwfile={pwfile}", "--encoding=UTF8",
             "--locale=C.UTF-8", "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync"],
            env=env, cwd=root, capture_output=True, text=True, check=True, timeout=120, **user_kw,
        )
    except subprocess.CalledProcessError as e:
        if as_root:
            shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"initdb failed ({e.returncode}): {e.stdout[-1500:]}{e.stderr[-1500:]}") from None
    pwfile.unlink()
    port = free_port()
    settings = {
        "listen_addresses": "127.0.0.1", "port": str(port), "unix_socket_directories": str(sock),
        "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",  # throw-away data
        "max_connections": "50", "shared_buffers": "32MB",
    }
    cmd = [str(bindir / "postgres"), "-D", str(data)]
    for key, value in settings.items():
        cmd += ["-c", f"{key}={value}"]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, **user_kw)
    pg = LocalPostgres(root, port, password, proc, log_path, owns_root=as_root)
    try:
        _wait_ready(pg, timeout)
        con = pg.connect("postgres")
        con.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        with contextlib.closing(con), con.cursor() as cur:
            cur.execute(f"CREATE DATABASE {DB_NAME} OWNER {DB_USER}")
    except BaseException:
        pg.stop()
        raise
    pg.start_seconds = time.monotonic() - t0
    return pg


def _wait_ready(pg: LocalPostgres, timeout: float) -> None:
    import psycopg2

    deadline = time.monotonic() + timeout
    while True:
        if not pg.alive():
            tail = pg.log_path.read_text(errors="replace")[-1500:]
            raise RuntimeError(f"postgres exited with code {pg.proc.returncode}:\n{tail}")
        try:
            pg.connect("postgres").close()
            return
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postgres did not accept connections within {timeout:.0f} s") from None
            time.sleep(0.2)
