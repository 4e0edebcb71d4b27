"""Start `mlflow ui` / `mlflow server` over the project's store with light settings.

`start_mlflow(mode, ...)` returns a handle with `.url` and `.stop()`; `scripts/serve.py` (used by
`make ui` and `make server`) wraps it with Ctrl-C / SIGTERM handling.

Why these settings:
- `--workers 1` and `MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false`: the defaults start 4 uvicorn workers
  and a background job runner (~2-3 GB, ~30 s to ready); one worker is ~0.5 GB and ready in ~10 s.
- The store is created here (or by `tracking.prepare_store`) before MLflow sees it, with an explicit
  local artifact location: a SQLite store first created by the server gets `mlflow-artifacts:`
  locations that SQLite clients (`make train`) cannot write.
- `ui` mode gives new experiments a local artifact root (readable and writable by SQLite clients);
  `server` mode gives them `mlflow-artifacts:/`, i.e. uploads go through the server into
  `--artifacts-destination`, so remote workers need no shared filesystem. Both use the same folder.
- The child runs in its own session (process group): Ctrl-C in a terminal reaches only us, and
  `stop()` ends MLflow's whole tree (uvicorn workers included) by group id.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from backprop_lab.env import repo_root
from backprop_lab.serve.store import (  # noqa: F401 - re-exported: the serve API in one place
    SERVER_ENV,
    SQL_SERVER_SCHEMES,
    ServeError,
    _scrub,
    check_store,
    local_dir_of,
    prepare_store,
    redact_uri,
    store_exists,
)

MODES = ("ui", "server")
DEFAULT_PORTS = {"ui": 5000, "server": 5001}


def default_store_uri() -> str:
    return f"sqlite:///{repo_root() / 'mlflow.db'}"


def default_artifact_root() -> str:
    return str(repo_root() / "mlartifacts")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port_free(host: str, port: int) -> None:
    """Raise ServeError if something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR like uvicorn, so a port in TIME_WAIT is not reported as busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServeError(
                    f"port {port} on {host} is already in use (another mlflow ui/server?); "
                    f"stop it or pick a free one with --port / PORT=N"
                ) from None
            raise ServeError(f"cannot bind {host}:{port}: {e.strerror}; check --host") from None


@dataclass
class MlflowProcess:
    """A running `mlflow ui|server`; `stop()` ends its whole process group."""

    mode: str
    url: str
    proc: subprocess.Popen
    log_path: Path
    store_uri: str
    artifact_root: str
    _stopped: bool = field(default=False, repr=False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group, wait, then SIGKILL what is left. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        pgid = self.proc.pid  # start_new_session=True: the leader's pid is the group id
        _signal_group(pgid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pgid):
            self.proc.poll()  # reap the leader so it does not linger as a zombie
            time.sleep(0.1)
        if _group_alive(pgid):
            _signal_group(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)

    def __enter__(self) -> MlflowProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # A zombie leader still counts for killpg; look for a live member in /proc.
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


def build_command(mode, store_uri, artifact_root, host, port, allowed_hosts, workers) -> list[str]:
    local = local_dir_of(artifact_root)
    destination = local.as_uri() if local is not None else artifact_root
    cmd = [
        sys.executable, "-m", "mlflow", mode,
        "--backend-store-uri", store_uri,
        "--host", host, "--port", str(port), "--workers", str(workers),
        "--serve-artifacts", "--artifacts-destination", destination,
    ]
    if mode == "ui":
        # New experiments made in the UI keep a local location that SQLite clients can write.
        cmd += ["--default-artifact-root", destination]
    if allowed_hosts:
        cmd += ["--allowed-hosts", allowed_hosts]
    return cmd


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ServeError(f"mlflow exited with code {proc.returncode} before {url}/health answered")
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        time.sleep(0.25)
    raise ServeError(f"{url}/health did not answer within {timeout:.0f} s")


def start_mlflow(
    mode: str = "ui",
    *,
    store_uri: str | None = None,
    artifact_root: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    allowed_hosts: str | None = None,
    workers: int = 1,
    timeout: float = 120.0,
    log_path: str | Path | None = None,
    prepare: bool = True,
) -> MlflowProcess:
    """Start `mlflow <mode>` and return once `/health` answers.

    store_uri: backend store (default sqlite:///<repo>/mlflow.db); artifact_root: local folder or
    URI for artifacts (default <repo>/mlartifacts). Binding a non-loopback `host` needs an explicit
    `allowed_hosts` (MLflow's Host-header allow-list). Raises ServeError with a one-line message.
    """
    if mode not in MODES:
        raise ServeError(f"mode {mode!r} is not one of {', '.join(MODES)}")
    store_uri = store_uri or default_store_uri()
    artifact_root = artifact_root or default_artifact_root()
    port = DEFAULT_PORTS[mode] if port is None else int(port)
    if not is_loopback(host) and not allowed_hosts:
        raise ServeError(
            f"--host {host} exposes MLflow (no authentication) beyond this machine; "
            f"also pass --allowed-hosts / ALLOWED_HOSTS=name:port,... to accept those Host headers"
        )
    check_port_free(host, port)
    check_store(store_uri, artifact_root)
    if prepare and store_uri.startswith(("sqlite:", *SQL_SERVER_SCHEMES)) and not store_exists(store_uri):
        prepare_store(store_uri, artifact_root)

    if log_path is None:
        fd, log_name = tempfile.mkstemp(prefix=f"mlflow-{mode}-", suffix=".log")
        os.close(fd)
        log_path = log_name
    log_path = Path(log_path)
    env = {**os.environ, **SERVER_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)  # the server's own store comes from --backend-store-uri
    cmd = build_command(mode, store_uri, artifact_root, host, port, allowed_hosts, workers)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            env=env, start_new_session=True,
        )
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    handle = MlflowProcess(mode, f"http://{shown_host}:{port}", proc, log_path, store_uri, artifact_root)
    try:
        wait_healthy(handle.url, proc, timeout)
    except BaseException as e:
        handle.stop()
        if isinstance(e, ServeError):
            last = handle.log_tail(1).strip()
            message = f"{e}; last log line: {last or '(empty)'} (log: {log_path})"
            raise ServeError(_scrub(message, store_uri)) from None
        raise
    return handle
