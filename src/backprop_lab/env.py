"""Facts about the process and the checkout that every layer needs (stdlib only, imports no layer).

- `QUIET_ENV`: the variables that turn outbound traffic off. `backprop_lab/__init__.py` sets them
  (setdefault: a user's own value wins) before any module of the package can import MLflow or
  Ray; code that starts another process passes them on (`{**os.environ, **QUIET_ENV}`).
- `repo_root()`: the checkout holding this package, where the default store lives.
- `check_writable_dir(folder)`: create a folder and prove a file can be written in it.
- `free_port(host)`: a TCP port free right now (servers, clusters and tests pick theirs).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

# Outbound look-ups off: MLflow's telemetry, the generic opt-out, Ray's usage statistics.
# Copies only where a process starts before Python can import this package: the Makefile's
# exports, conf/hydra/launcher/{ray_cluster,slurm}.yaml (tests/test_env.py keeps them equal).
QUIET_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "RAY_USAGE_STATS_ENABLED": "0",
}


def set_quiet_env() -> None:
    """Set QUIET_ENV in this process where the user has not set the variable."""
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)


def repo_root(start: Path | None = None) -> Path:
    """The checkout holding pyproject.toml above src/backprop_lab, else `start` or the current folder.

    Outside a checkout (a wheel install) the default store goes where the command runs.
    """
    candidate = Path(__file__).resolve().parents[2]  # .../src/backprop_lab/env.py -> checkout
    if (candidate / "pyproject.toml").is_file() and (candidate / "src" / "backprop_lab").is_dir():
        return candidate
    return (start or Path.cwd()).resolve()


def check_writable_dir(folder: Path) -> str | None:
    """Create `folder` (and parents) and write a probe file in it; None when that works, else why.

    Really writes (os.access lies for root). The caller turns the reason into its own one-line
    error, naming its own option (tracking.uri, --store-uri, --artifact-root).
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create folder {folder} ({exc.strerror or exc})"
    probe = folder / f".bpl-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return f"folder {folder} is not writable ({exc.strerror or exc})"
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on `host` (another process may take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
