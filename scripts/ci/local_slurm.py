"""A throw-away one-node Slurm (Debian's slurmctld, slurmd, munge) on 127.0.0.1, own temp dir.

Used by tests/test_distributed.py; by hand (as root, after `apt-get install slurmctld slurmd munge`):

    python scripts/ci/local_slurm.py      # prints SLURM_CONF, Ctrl-C stops it

munged, slurmctld and slurmd run in the foreground (-F / -D) as children of this process, so
`stop()` ends exactly them by PID. Their config, state, spool, logs and munge socket all live in
the temp dir; nothing under /etc is changed (the munge key the package made is only read).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from backprop_lab.env import free_port

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch")
# In a loopback-only network namespace, glibc's getaddrinfo(AI_ADDRCONFIG), which Slurm uses,
# finds no IPv4 at all (it ignores 127.0.0.0/8): give lo one more, private, address (no route out).
NETNS_EXTRA_ADDR = "10.254.254.1/32"
MUNGE_KEY = Path("/etc/munge/munge.key")


def missing() -> str | None:
    """Why a local Slurm cannot start here, or None."""
    if os.geteuid() != 0:
        return "needs root (slurmd runs jobs as their user)"
    absent = [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]
    if absent:
        return f"missing {', '.join(absent)}: apt-get install slurmctld slurmd munge slurm-client"
    if not MUNGE_KEY.exists():
        return f"missing {MUNGE_KEY} (the munge package creates it)"
    return None



def _bin(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"


@dataclass
class LocalSlurm:
    root: Path
    env: dict[str, str]  # SLURM_CONF for sbatch/squeue/sacct (and submitit)
    procs: list[subprocess.Popen] = field(default_factory=list)
    start_seconds: float = 0.0

    def stop(self, timeout: float = 10.0) -> None:
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        shutil.rmtree(self.root, ignore_errors=True)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)


def _write_conf(root: Path, node: str, cpus: int) -> Path:
    conf = root / "slurm.conf"
    conf.write_text(f"""# one-node test cluster made by scripts/ci/local_slurm.py
ClusterName=bpl
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
""")
    # Needed on this kind of machine: slurmd's cgroup autodetection fails otherwise.
    (root / "cgroup.conf").write_text("CgroupPlugin=cgroup/v1\n")
    return conf


def start_local_slurm(cpus: int = 2, timeout: float = 90.0) -> LocalSlurm:
    reason = missing()
    if reason:
        raise RuntimeError(f"local Slurm: {reason}")
    root = Path(tempfile.mkdtemp(prefix="bplslurm-", dir="/tmp"))
    root.chmod(0o755)  # munged wants its socket's folder searchable by all
    for sub in ("state", "spool", "munge"):
        (root / sub).mkdir()
    node = socket.gethostname().split(".")[0]
    conf = _write_conf(root, node, cpus)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = LocalSlurm(root, {"SLURM_CONF": str(conf)})
    t0 = time.monotonic()
    try:
        munge = [_bin("munged"), "-F", "--force", f"--socket={root}/munge.sock", f"--key-file={MUNGE_KEY}",
                 f"--pid-file={root}/munge/munged.pid", f"--log-file={root}/munge/munged.log",
                 f"--seed-file={root}/munge/munged.seed"]
        for cmd, ready in ((munge, root / "munge.sock"),
                           ([_bin("slurmctld"), "-D", "-i", "-f", str(conf)], None),
                           ([_bin("slurmd"), "-D", "-N", node, "-f", str(conf)], None)):
            log = open(root / f"{Path(cmd[0]).name}.out", "wb")
            cluster.procs.append(subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                  stdin=subprocess.DEVNULL, cwd=root))
            if ready is not None:
                _wait(ready.exists, timeout, f"munged socket {ready}", cluster)
        _wait(lambda: _node_idle(env), timeout, "slurmd to register as idle", cluster)
    except BaseException:
        cluster.stop()
        raise
    cluster.start_seconds = time.monotonic() - t0
    return cluster


def _node_idle(env: dict) -> bool:
    out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True).stdout
    return "idle" in out


def _wait(check, timeout: float, what: str, cluster: LocalSlurm) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not cluster.alive():
            logs = " | ".join(p.read_text(errors="replace").strip().splitlines()[-1]
                              for p in cluster.root.glob("*.out") if p.read_text(errors="replace").strip())
            raise RuntimeError(f"local Slurm: a daemon exited while waiting for {what}: {logs}")
        if check():
            return
        time.sleep(0.5)
    raise RuntimeError(f"local Slurm: timed out after {timeout:.0f} s waiting for {what}")


def main() -> int:
    cluster = start_local_slurm()
    try:
        print(f"Slurm up in {cluster.start_seconds:.1f} s: export SLURM_CONF={cluster.env['SLURM_CONF']}")
        print("Ctrl-C stops it", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        while cluster.alive():
            time.sleep(1)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
