"""Beyond one machine, in numbers: start-up of the tracking server and of a two-node Ray cluster,
and the wall time of the same small sweep with the basic launcher, the default forked launcher
(N=2), joblib (N=2) and Ray.

    python scripts/bench_launchers.py                 # 4 jobs (4 seeds), 300 epochs each
    python scripts/bench_launchers.py --jobs 8 --epochs 1000

Everything is local and fresh: a temporary SQLite store behind `mlflow server` (serve.py), a Ray
cluster of two 1-CPU nodes on 127.0.0.1 (scripts/ci/local_ray.py), all three sweeps logging to
that server, each into its own experiment. As root it runs inside a loopback-only network
namespace (`unshare --net`), like the distributed test; --no-netns skips that.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backprop_lab.env import free_port
from backprop_lab.serve.server import start_mlflow

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts" / "ci"))  # scripts/ci is not a package
from local_ray import start_local_ray  # noqa: E402 - needs the sys.path entry above

LAUNCHERS = {
    "basic": ["hydra/launcher=basic"],
    "forked N=2": ["hydra/launcher=backprop_lab", "hydra.launcher.n_jobs=2"],  # the default launcher
    "joblib N=2": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"],
    "ray 2 nodes": ["hydra/launcher=ray_cluster"],
}


def sweep(name: str, launcher_args: list[str], n_jobs: int, epochs: int, env: dict, cwd: Path) -> float:
    seeds = ",".join(str(s) for s in range(n_jobs))
    experiment = "bench/" + name.split()[0]
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", "+sweep=default",
           *launcher_args, f"seed={seeds}", "init=he", "model.width=16", "optim.lr=0.1",
           f"train.epochs={epochs}", f"experiment_name={experiment}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"sweep with {name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return seconds


def bench(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="bpl-bench-"))
    results: dict = {"jobs": args.jobs, "epochs": args.epochs, "cpus": os.cpu_count(),
                     "loadavg_1m_at_start": round(os.getloadavg()[0], 2)}
    server = cluster = None
    try:
        t0 = time.perf_counter()
        server = start_mlflow("server", store_uri=f"sqlite:///{tmp / 'mlflow.db'}",
                              artifact_root=str(tmp / "mlartifacts"), port=free_port(),
                              log_path=tmp / "server.log")
        results["server_start_s"] = round(time.perf_counter() - t0, 1)
        cluster = start_local_ray(2)
        results["ray_cluster_start_s"] = round(cluster.start_seconds, 1)
        env = {**os.environ, **cluster.env, "MLFLOW_TRACKING_URI": server.url}
        for name, launcher_args in LAUNCHERS.items():
            if name in args.skip:
                continue
            seconds = sweep(name, launcher_args, args.jobs, args.epochs, env, tmp)
            results[f"sweep_s[{name}]"] = round(seconds, 1)
            print(f"  {name:12s} {results[f'sweep_s[{name}]']:6.1f} s", flush=True)
    finally:
        if cluster is not None:
            cluster.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=4, help="runs in the sweep (one seed each)")
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--skip", nargs="*", default=[], choices=list(LAUNCHERS), help="launchers to leave out")
    p.add_argument("--no-netns", action="store_true", help="do not re-run inside `unshare --net`")
    args = p.parse_args()
    if (not args.no_netns and os.geteuid() == 0 and os.environ.get("BPL_IN_NETNS") != "1"
            and shutil.which("unshare")):
        script = 'ip link set lo up && exec "$0" "$@"'
        cmd = ["unshare", "--net", "--pid", "--fork", "--mount-proc", "--", "sh", "-c", script,
               sys.executable, *sys.argv]
        return subprocess.run(cmd, env={**os.environ, "BPL_IN_NETNS": "1"}).returncode
    print(f"bench_launchers: {args.jobs} jobs x {args.epochs} epochs, "
          f"{'loopback-only netns' if os.environ.get('BPL_IN_NETNS') == '1' else 'host network'}", flush=True)
    results = bench(args)
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
