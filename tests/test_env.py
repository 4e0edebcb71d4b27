"""backprop_lab.env: the telemetry variables in one place (and their copies kept equal), the repo
root, the writable-folder check."""

import os
import re
import subprocess
import sys
from pathlib import Path

import yaml

from backprop_lab import QUIET_ENV
from backprop_lab.env import check_writable_dir, repo_root

REPO = Path(__file__).resolve().parents[1]


def test_makefile_exports_exactly_the_quiet_env():
    exports = dict(re.findall(r"^export ([A-Z_]+) := (\S+)$", (REPO / "Makefile").read_text(), re.M))
    assert {k: v for k, v in exports.items() if not k.startswith("BPL_")} == QUIET_ENV


def test_ray_launcher_sends_exactly_the_quiet_env_to_its_workers():
    cfg = yaml.safe_load((REPO / "conf" / "hydra" / "launcher" / "ray_cluster.yaml").read_text())
    env_vars = cfg["launcher"]["ray"]["init"]["runtime_env"]["env_vars"]
    not_telemetry = ("MLFLOW_TRACKING_URI", "PYTHONHASHSEED")
    assert {k: v for k, v in env_vars.items() if k not in not_telemetry} == QUIET_ENV


def test_slurm_setup_exports_exactly_the_quiet_env():
    cfg = yaml.safe_load((REPO / "conf" / "hydra" / "launcher" / "slurm.yaml").read_text())
    exports = [line for line in cfg["setup"] if line.startswith("export ")]
    assert len(exports) == 1
    assert dict(pair.split("=", 1) for pair in exports[0].split()[1:]) == QUIET_ENV


def test_importing_the_package_sets_the_quiet_env_before_mlflow_and_keeps_user_values():
    code = ("import os, sys\nimport backprop_lab\nassert 'mlflow' not in sys.modules\n"
            "print(os.environ['MLFLOW_DISABLE_TELEMETRY'], os.environ['DO_NOT_TRACK'],"
            " os.environ['RAY_USAGE_STATS_ENABLED'])\n")
    env = {k: v for k, v in os.environ.items() if k not in QUIET_ENV}
    out = subprocess.run([sys.executable, "-c", code], env={**env, "DO_NOT_TRACK": "false"},
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [QUIET_ENV["MLFLOW_DISABLE_TELEMETRY"], "false", QUIET_ENV["RAY_USAGE_STATS_ENABLED"]]


def test_repo_root_is_this_checkout():
    assert repo_root() == REPO
    assert (repo_root() / "pyproject.toml").is_file()


def test_check_writable_dir_creates_the_folder_or_says_why(tmp_path):
    assert check_writable_dir(tmp_path / "a" / "b") is None and (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == [], "the probe file is removed"
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should be")
    reason = check_writable_dir(blocker / "sub")
    assert reason is not None and "cannot create folder" in reason and str(blocker / "sub") in reason


def test_check_writable_dir_refuses_a_folder_it_cannot_write_in():
    reason = check_writable_dir(Path("/proc/sys"))  # exists; no file can be created there, even by root
    assert reason is not None and "is not writable" in reason and "/proc/sys" in reason


def test_free_port_can_be_bound():
    import socket

    from backprop_lab.env import free_port

    port = free_port()
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises if it was taken
    assert 0 < port < 65536
