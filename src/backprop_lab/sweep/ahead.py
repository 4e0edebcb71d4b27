"""The first jobs' compute, done while the driver starts.

Between the plan and the first job the driver works alone for seconds: it imports MLflow, opens
the store and creates the parent run (~6 s of the default sweep's ~9 s start on this 2-core
machine, docs/speed.md) while the other cores idle. `Ahead` forks processes for those cores right
after the plan (the driver holds no store connection yet), which run the jobs' compute in job
order (`tracking.record.compute_ahead`: data, init, both gradient checks, training; NumPy only,
with the job's BLAS thread limit), each job's into a file of a private temporary folder. At the
launch the driver stops them (SIGKILL: a job cut short is computed again by its worker) and names
each finished file in its job's config (`sweep.computed`, tracking.run.SweepJob); the job logs
that compute as its own (`record.train_and_log(computed=...)`): the same metrics, histories,
images and artifacts, byte for byte (tests/test_reliability.py). The folder is removed when the
sweep ends; a process whose driver died stops before its next job and removes it.

Only for launchers whose jobs run on this machine (`local_jobs`: the project's forked launcher)
and where os.fork exists. On a resumed sweep it may compute jobs the store already holds: time of
cores that were idle anyway.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any


class Ahead:
    """Processes computing `jobs` (sweep.jobs.Job) ahead; `stop()` at the launch, `close()` at the end."""

    def __init__(self, jobs: list[Any], processes: int) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="bpl-ahead-"))
        self.pids: list[int] = []
        driver = os.getpid()
        try:
            for k in range(processes):
                pid = os.fork()
                if pid == 0:
                    _compute(jobs[k::processes], self.folder, driver)  # never returns
                self.pids.append(pid)
        except OSError:  # no process left behind, no folder
            self.close()
            raise

    def stop(self) -> dict[str, str]:
        """config key -> the file of each job computed so far; no process of this is left."""
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for pid in self.pids:
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
        self.pids = []
        return {path.stem: str(path) for path in self.folder.glob("*.pkl")}

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


def start(jobs: list[Any], launcher: Any) -> Ahead | None:
    """An Ahead over `jobs` with one process per core the driver leaves idle, or None where the
    launcher's jobs do not run here, os.fork is missing, or there is one core. Also None when
    the temporary folder or a process cannot be made (a full /tmp, a process limit): computing
    ahead only saves time, the workers compute every job anyway."""
    spare = (os.cpu_count() or 1) - 1
    if not getattr(launcher, "local_jobs", False) or not hasattr(os, "fork") or spare < 1 or not jobs:
        return None
    try:
        return Ahead(jobs, min(spare, len(jobs)))
    except OSError:
        return None


def _compute(jobs: list[Any], folder: Path, driver: int) -> None:
    """The forked process: each job's compute into folder/<config key>.pkl, then exit (no
    output, no exit handlers: the driver's atexit, buffers and stores are not this process's)."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C to the group: gone, silently
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        from backprop_lab.tracking import record
        from backprop_lab.tracking.run import blas_threads

        done = set()
        for job in jobs:
            if os.getppid() != driver:  # the driver died without stopping this
                shutil.rmtree(folder, ignore_errors=True)
                break
            if job.config_key in done:
                continue
            done.add(job.config_key)
            try:
                with blas_threads(job.run_config.blas_threads):
                    computed = record.compute_ahead(job.run_config)
            except Exception:  # the job's worker computes it again and reports what fails
                continue
            record.save_computed(folder / f"{job.config_key}.pkl", job.config_key, computed)
    finally:
        os._exit(0)
