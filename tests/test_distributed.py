"""Beyond one machine, for real: a tracking server (serve.py) and a two-node Ray cluster on loopback,
a 4-job sweep through conf/hydra/launcher/ray_cluster.yaml, checked through the server's REST API.

The test body runs inside a network namespace that has only `lo` (`unshare --net`), so nothing Ray
or MLflow looks up can leave the machine. The outer test re-runs this file's inner test there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from backprop_lab.env import free_port
from backprop_lab.serve.server import start_mlflow
from local_ray import start_local_ray  # scripts/ci: on pytest's pythonpath (pyproject.toml)
from local_slurm import NETNS_EXTRA_ADDR, missing, start_local_slurm

REPO = Path(__file__).resolve().parents[1]

IN_NETNS = os.environ.get("BPL_IN_NETNS") == "1"
# The launcher-config tests at the end need no cluster and run in every `make test`.


def run_in_loopback_netns(test_id: str, basetemp: Path) -> subprocess.CompletedProcess:
    """Re-run one test of this file under `unshare --net` with only `lo` up.

    Also a PID namespace (the inner pytest is its PID 1): when it exits, the kernel ends whatever
    might still run in there, a safety net behind the by-PID stops of the test itself.
    """
    script = (f"ip link set lo up && ip addr add {NETNS_EXTRA_ADDR} dev lo && "
              'exec "$0" -m pytest -q -x -p no:cacheprovider "$1" --basetemp "$2"')
    env = {**os.environ, "BPL_IN_NETNS": "1", "BPL_DISTRIBUTED": "1"}
    return subprocess.run(
        ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--", "sh", "-c", script, sys.executable,
         f"{__file__}::{test_id}", str(basetemp)],
        env=env, capture_output=True, text=True, timeout=1200, cwd=REPO,
    )


def api(url: str, endpoint: str, **params) -> dict:
    query = urllib.parse.urlencode(params)
    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{endpoint}?{query}", timeout=30) as r:
        return json.loads(r.read() or b"{}")


def search_runs(url: str, experiment_id: str, filter_string: str) -> list[dict]:
    query = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100}
    body = json.dumps(query).encode()
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/runs/search", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read()).get("runs", [])


def tags_of(run: dict) -> dict[str, str]:
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


@pytest.mark.distributed
@pytest.mark.slow
def test_ray_sweep_on_two_nodes_lands_in_the_tracking_server(tmp_path):
    if not IN_NETNS:
        if shutil.which("unshare") is None or os.geteuid() != 0:
            pytest.skip("needs root and `unshare` (util-linux) for a loopback-only network namespace")
        proc = run_in_loopback_netns("test_ray_sweep_on_two_nodes_lands_in_the_tracking_server",
                                     tmp_path / "netns")
        assert proc.returncode == 0, f"inner test failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        assert " passed" in proc.stdout
        return
    _body(tmp_path)


def _body(tmp_path: Path) -> None:
    # The namespace really is loopback only.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.connect(("192.0.2.1", 53))  # TEST-NET-1: unreachable when only lo exists

    with ThreadPoolExecutor(2) as pool:  # the server and the cluster start in parallel
        server_f = pool.submit(start_mlflow, "server", store_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                               artifact_root=str(tmp_path / "mlartifacts"), port=free_port(),
                               log_path=tmp_path / "server.log")
        # Workers inherit `ray start`'s environment: a wrong tracking URI there must not win
        # over the sweep's (the launcher config sends the sweep's in runtime_env).
        wrong = f"sqlite:///{tmp_path / 'wrong.db'}"
        cluster_f = pool.submit(start_local_ray, 2, extra_env={"MLFLOW_TRACKING_URI": wrong})
        server = cluster = None
        try:
            server, cluster = server_f.result(), cluster_f.result()
            _sweep_and_check(tmp_path, server.url, cluster)
        finally:
            for f in (server_f, cluster_f):  # stop whatever did start, even if the other failed
                if f.exception() is None:
                    f.result().stop()
    assert cluster is not None and cluster.pids() == [], "Ray processes left behind"
    assert server is not None and not server.alive()
    leftovers = other_live_processes()
    for pid in leftovers:  # named in the failure below, and still stopped by PID
        os.kill(pid, 9)
    assert leftovers == [], f"processes left in the namespace: {leftovers}"


def other_live_processes() -> list[int]:
    """Live processes of this PID namespace other than this pytest (PID 1 here) and zombies."""
    live = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if int(proc.name) != os.getpid() and state != "Z":
            live.append(int(proc.name))
    return live


def _sweep_and_check(tmp_path: Path, url: str, cluster) -> None:
    work = tmp_path / "work"  # the driver's cwd: the sweep dir lands under it
    work.mkdir()
    env = {**os.environ, **cluster.env, "MLFLOW_TRACKING_URI": url}
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", "+sweep=default",
           "hydra/launcher=ray_cluster", "seed=0,1,2,3", "init=he", "model.width=4", "optim.lr=0.1",
           "train.epochs=30"]
    # Four seeds = four datasets: jobs that start together with the SAME dataset currently race in
    # MLflow's log_inputs (UNIQUE constraint on datasets), a pipeline issue reported separately.
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # Where each job ran and which sweep dir it saw (written by backprop_lab.sweep.cluster on the worker).
    infos = [json.loads(p.read_text()) for p in sorted(work.glob("multirun/*/*/*/ray_job.json"))]
    assert len(infos) == 4, proc.stdout[-2000:]
    assert {i["bpl_node"] for i in infos} == {"head", "node1"}, infos
    assert len({i["ray_node_id"] for i in infos}) == 2
    sweep_dirs = {i["sweep_dir"] for i in infos}
    assert len(sweep_dirs) == 1, f"jobs resolved different sweep dirs (${{now:}}): {sweep_dirs}"
    sweep_dir = sweep_dirs.pop()
    assert sweep_dir.startswith(str(work / "multirun") + "/")  # absolute, with the driver's timestamp

    # Everything through the server's REST API.
    exp = api(url, "experiments/get-by-name", experiment_name="backprop-lab/default")["experiment"]
    assert exp["artifact_location"].startswith("mlflow-artifacts:"), "artifacts must go through the server"
    parents = search_runs(url, exp["experiment_id"], "tags.`bpl.role` = 'parent'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent["info"]["status"] == "FINISHED"
    children = search_runs(url, exp["experiment_id"],
                           f"tags.`mlflow.parentRunId` = '{parent['info']['run_id']}'")
    assert len(children) == 4
    for child in children:
        assert child["info"]["status"] == "FINISHED"
        metrics = {m["key"] for m in child["data"]["metrics"]}
        assert {"final/test_acc", "train/loss"} <= metrics
        listed = api(url, "artifacts/list", run_id=child["info"]["run_id"], path="plots")
        assert "plots/decision_boundary.png" in {f["path"] for f in listed.get("files", [])}
    parent_files = api(url, "artifacts/list", run_id=parent["info"]["run_id"], path="sweep")
    assert "sweep/children.csv" in {f["path"] for f in parent_files.get("files", [])}
    assert not (tmp_path / "wrong.db").exists(), "a job used the tracking URI of `ray start`"
    # The server stored the uploads in its artifacts destination (workers need no shared disk).
    assert len(list((tmp_path / "mlartifacts").rglob("decision_boundary.png"))) == 4


@pytest.mark.distributed
@pytest.mark.slow
def test_slurm_sweep_on_a_one_node_cluster(tmp_path):
    """conf/hydra/launcher/slurm.yaml against a real slurmctld + slurmd (Debian packages)."""
    reason = missing()
    if reason:
        pytest.skip(f"local Slurm: {reason} (.ci/run installs it)")
    if not IN_NETNS:
        proc = run_in_loopback_netns("test_slurm_sweep_on_a_one_node_cluster", tmp_path / "netns")
        assert proc.returncode == 0, f"inner test failed:\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        assert " passed" in proc.stdout
        return
    cluster = start_local_slurm(cpus=2)
    try:
        store = f"sqlite:///{tmp_path / 'mlflow.db'}"
        env = {**os.environ, **cluster.env, "MLFLOW_TRACKING_URI": store}
        cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", "+sweep=default",
               "hydra/launcher=slurm", "hydra.launcher.partition=debug", "hydra.launcher.mem_gb=1",
               "hydra.launcher.timeout_min=5", "seed=0,1,2,3", "init=he", "model.width=4",
               "optim.lr=0.1", "train.epochs=30", f"hydra.sweep.dir={tmp_path / 'multirun'}"]
        proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        # submitit really went through Slurm: one log folder per array task with a Slurm job id.
        assert len(list((tmp_path / "multirun" / ".submitit").glob("*_*/*_log.out"))) == 4
    finally:
        cluster.stop()
    assert all(p.poll() is not None for p in cluster.procs)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=store)
    exp = client.get_experiment_by_name("backprop-lab/default")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("bpl.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert all(r.info.status == "FINISHED" and "final/test_acc" in r.data.metrics for r in children)
    assert sorted(r.data.params["seed"] for r in children) == ["0", "1", "2", "3"]


# --------------------------------------------------------------------------- launcher configs (fast)


def compose_hydra(*overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.utils import setup_globals

    setup_globals()  # the ${now:} resolver
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=["+sweep=default", *overrides], return_hydra_config=True)


def test_ray_cluster_config_handles_the_known_traps(monkeypatch):
    from omegaconf import OmegaConf

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    cfg = compose_hydra("hydra/launcher=ray_cluster")
    ray_cfg = cfg.hydra.launcher.ray
    assert cfg.hydra.launcher._target_.endswith("hydra_ray_launcher.ray_launcher.RayLauncher")
    # What hydra_ray_launcher._core.launch does before ray.init: the explicit null must survive.
    ray_cfg.init.setdefault("object_store_memory", 78643200)
    init = OmegaConf.to_container(ray_cfg.init, resolve=True)
    assert init["object_store_memory"] is None
    assert init["address"] == "10.1.2.3:6379"
    env_vars = init["runtime_env"]["env_vars"]
    assert all(isinstance(v, str) for v in env_vars.values()), "Ray wants strings"
    assert env_vars["MLFLOW_TRACKING_URI"] == "" and env_vars["RAY_USAGE_STATS_ENABLED"] == "0"
    assert OmegaConf.to_container(ray_cfg.remote) == {"num_cpus": 1, "max_retries": 0,
                                                      "scheduling_strategy": "SPREAD"}
    sweep_dir = cfg.hydra.sweep.dir
    assert os.path.isabs(sweep_dir) and sweep_dir.startswith(os.getcwd()), sweep_dir
    assert cfg.hydra.callbacks.ray_cluster._target_ == "backprop_lab.sweep.cluster.RayClusterCallback"
    assert cfg.hydra.sweeper._target_ == "hydra_plugins.backprop_lab_sweeper.BackpropLabSweeper"


def test_ray_cluster_callback_sets_the_driver_auth_mode_and_refuses_unknown_modes(monkeypatch):
    from backprop_lab.sweep.cluster import RayClusterCallback

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    RayClusterCallback(auth_mode="DISABLED").on_multirun_start(config=None)
    assert os.environ["RAY_AUTH_MODE"] == "disabled"
    assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
    with pytest.raises(SystemExit) as e:
        RayClusterCallback(auth_mode="tokn")
    assert "RAY_AUTH_MODE='tokn'" in str(e.value) and "token, disabled" in str(e.value)


def test_slurm_config_extends_submitit_with_overridable_settings(monkeypatch):
    monkeypatch.delenv("SLURM_PARTITION", raising=False)
    cfg = compose_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                        "hydra.launcher.timeout_min=7", "hydra.launcher.cpus_per_task=4")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("hydra_submitit_launcher.submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min, launcher.cpus_per_task) == ("gpu", 7, 4)
    assert compose_hydra("hydra/launcher=slurm").hydra.launcher.partition is None
