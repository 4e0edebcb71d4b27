"""A throw-away Ray cluster on 127.0.0.1: a head and N-1 more nodes, own temp dir, own token.

Used by tests/test_distributed.py and scripts/bench_launchers.py; by hand:

    python scripts/ci/local_ray.py --nodes 2     # prints RAY_ADDRESS etc., Ctrl-C stops it

Every process of the cluster carries BPL_RAY_CLUSTER=<its temp dir> in its environment (workers
inherit it from their raylet), so `stop()` finds and ends exactly these processes by PID, never
with `ray stop` (which would end every Ray cluster on the machine).
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from backprop_lab import QUIET_ENV
from backprop_lab.env import free_port

RAY = str(Path(sys.executable).with_name("ray"))
MARK = "BPL_RAY_CLUSTER"


def _is_zombie(proc: Path) -> bool:
    return (proc / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"



@dataclass
class LocalRay:
    root: Path  # short on purpose: Ray's unix sockets live below it (path limit ~107 bytes)
    address: str
    env: dict[str, str]  # what a driver needs: RAY_ADDRESS, RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH
    node_names: list[str] = field(default_factory=list)
    start_seconds: float = 0.0

    def pids(self) -> list[int]:
        """Live processes of this cluster: their working directory, command line or environment
        names its temp dir (`ray start` runs in it, and every Ray process inherits that cwd).

        Ray renames its processes (setproctitle), which rewrites the command line and can
        overwrite the original environment block, hence the three checks.
        """
        needle = str(self.root).encode()
        found = []
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                if int(proc.name) == os.getpid() or _is_zombie(proc):
                    continue
                if (os.readlink(proc / "cwd").startswith(str(self.root))
                        or needle in (proc / "environ").read_bytes()
                        or needle in (proc / "cmdline").read_bytes()):
                    found.append(int(proc.name))
            except (OSError, ValueError):
                pass
        return found

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM every process of the cluster by PID, SIGKILL what is left (Ray's agents ignore
        SIGTERM once their raylet is gone), remove the temp dir."""
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self.pids():
                time.sleep(0.2)
        shutil.rmtree(self.root, ignore_errors=True)


def start_local_ray(nodes: int = 2, cpus_per_node: int = 1, timeout: float = 300.0,
                    extra_env: dict[str, str] | None = None) -> LocalRay:
    """Start a head and `nodes - 1` more nodes on 127.0.0.1; raise RuntimeError with Ray's output.

    extra_env: set in the environment of `ray start`, hence of every worker.
    """
    root = Path(tempfile.mkdtemp(prefix="bplray-", dir="/tmp"))
    token = root / "auth_token"
    token.write_text(secrets.token_hex(32))
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Explicit auth on both sides, with a token of our own: never touch ~/.ray/auth_token.
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
    base_env = {
        **os.environ, **auth, MARK: str(root),
        **QUIET_ENV,
        # A loaded 2-core machine is slow to bring the node up: give it time instead of failing.
        "RAY_raylet_start_wait_time_s": str(int(timeout)),
        "RAY_agent_register_timeout_ms": str(int(timeout * 1000)),
        **(extra_env or {}),
    }
    common = [
        "--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", "--num-gpus=0",
        "--disable-usage-stats", f"--temp-dir={root / 'ray'}", "--object-store-memory=80000000",
    ]
    cluster = LocalRay(root, address, {**auth, "RAY_ADDRESS": address})
    t0 = time.monotonic()
    try:
        for i in range(nodes):
            name = "head" if i == 0 else f"node{i}"
            args = (["--head", f"--port={port}", "--include-dashboard=false"] if i == 0
                    else [f"--address={address}"])
            env = {**base_env, "BPL_NODE": name}  # jobs can tell which node they ran on
            proc = subprocess.run([RAY, "start", *args, *common, f"--node-name={name}"], env=env,
                                  capture_output=True, text=True, timeout=timeout, cwd=root)
            if proc.returncode != 0:
                tail = (proc.stdout + proc.stderr).strip().splitlines()[-5:]
                raise RuntimeError(f"`ray start` ({name}) failed: " + " | ".join(tail))
            cluster.node_names.append(name)
        _wait_for_nodes(cluster, nodes, timeout)
    except BaseException:
        cluster.stop()
        raise
    cluster.start_seconds = time.monotonic() - t0
    return cluster


def _wait_for_nodes(cluster: LocalRay, nodes: int, timeout: float) -> None:
    """Until `ray status` lists every node as active (a node can register after `ray start`)."""
    env = {**os.environ, **cluster.env}
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        proc = subprocess.run([RAY, "status", f"--address={cluster.address}"], env=env,
                              capture_output=True, text=True, timeout=timeout)
        out = proc.stdout
        active = out.split("Active:")[-1].split("Pending:")[0] if "Active:" in out else ""
        if active.count("node_") >= nodes:
            return
        time.sleep(1)
    raise RuntimeError(f"Ray cluster at {cluster.address} did not show {nodes} nodes: {out[-300:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--cpus-per-node", type=int, default=1)
    args = p.parse_args()
    cluster = start_local_ray(args.nodes, args.cpus_per_node)
    try:
        print(f"Ray cluster up in {cluster.start_seconds:.1f} s ({len(cluster.node_names)} nodes); "
              "for a driver:")
        for k, v in cluster.env.items():
            print(f"  export {k}={v}")
        print("Ctrl-C stops it", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
