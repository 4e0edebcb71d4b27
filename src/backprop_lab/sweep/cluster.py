"""Hydra callback that makes the Ray launcher work on an existing cluster (conf/hydra/launcher/ray.yaml).

Driver side (`on_multirun_start`, before the launcher calls `ray.init`):
- `RAY_AUTH_MODE` is set explicitly. Ray >= 2.59 writes ~/.ray/auth_token after any local start;
  a driver whose mode is unset then switches itself to token auth and can no longer join a
  cluster started with `RAY_AUTH_MODE=disabled` (and a token cluster needs the token anyway).
- Ray usage statistics stay off (`RAY_USAGE_STATS_ENABLED=0`).

Job side (`on_job_start`, in the Ray worker): one `ray_job.json` in the job's output folder saying
where the job ran (Ray node id, host, pid, cwd) and which sweep dir it saw, so a user (and the
distributed test) can check that jobs were spread and that every job resolved the same
`hydra.sweep.dir` as the driver, the value that links children to their parent run.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from backprop_lab.env import QUIET_ENV

AUTH_MODES = ("token", "disabled")
JOB_INFO_FILE = "ray_job.json"


class RayClusterCallback(Callback):
    def __init__(self, auth_mode: str = "token") -> None:
        mode = str(auth_mode).lower()
        if mode not in AUTH_MODES:
            # Hydra turns callback exceptions into warnings: leave with one clear line instead.
            sys.exit(f"hydra.callbacks.ray_cluster.auth_mode / RAY_AUTH_MODE={auth_mode!r}: "
                     f"use one of {', '.join(AUTH_MODES)} (the mode `ray start` ran with)")
        self.auth_mode = mode

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        os.environ["RAY_AUTH_MODE"] = self.auth_mode
        os.environ["RAY_USAGE_STATS_ENABLED"] = QUIET_ENV["RAY_USAGE_STATS_ENABLED"]  # even if set
        if "ray._raylet" in sys.modules:
            # Hydra's plugin scan imported Ray already; its C++ config must re-read the mode.
            from ray._raylet import Config

            Config.initialize("")

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        hc = HydraConfig.get()
        info = {
            "job_num": hc.job.num,
            "sweep_dir": str(hc.sweep.dir),
            "hostname": socket.gethostname(),
            "pid": os.getpid(),
            "cwd": os.getcwd(),
            "ray_node_id": _ray_node_id(),
            "bpl_node": os.environ.get("BPL_NODE"),  # set by whoever ran `ray start` (tests do)
        }
        out = Path(hc.runtime.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / JOB_INFO_FILE).write_text(json.dumps(info, indent=1))


def _ray_node_id() -> str | None:
    if "ray" not in sys.modules:  # not under Ray (basic or joblib launcher)
        return None
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
