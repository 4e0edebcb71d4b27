"""Hydra launcher: the jobs of a sweep on N long-lived workers forked after the driver's imports.

A sweep's jobs are small (seconds each) and a new Python process that imports MLflow costs about
as much as one job, so spawning workers (joblib's loky, Ray) pays the imports once per worker and
pickles the job's context to it. Here the driver imports what the jobs need (`preload`), then
forks N workers with the 'fork' start method: each worker starts with the modules, the task
function and Hydra's singletons already in memory, and is fed job numbers through a pipe. A
worker composes its job's config (`composer`, e.g. sweep/jobs.py's JobComposer, created before
the fork) and runs it as BasicLauncher does, through `job.run_job`: Hydra's `run_job` with one
copy of the job's config where Hydra's makes four (the same job folder, `.hydra/` files and
JobReturn; `lean_run_job: false` uses Hydra's own); its JobReturn comes back pickled; `launch`
returns them in job order.

- n_jobs=1 (or a single job) runs the jobs in this process, like BasicLauncher.
- warm_start (default): job 0 runs in the driver before the fork, so every worker starts with
  the caches its first run would otherwise fill (the figure layouts, SQL statements, fonts:
  ~3x the time of a later run).
- A worker that dies (segfault, os._exit, OOM kill) fails its job (JobStatus.FAILED, the exit
  code in the error) and is replaced; the other jobs go on. So does a job whose set-up by Hydra
  (its job folder) raises: FAILED with that exception.
- Ctrl-C: each worker gets one SIGINT (a second, e.g. the terminal's, is ignored) so its job can
  end its run as KILLED; after `grace_s` the survivors are terminated, then killed. No worker
  outlives the driver: one whose driver vanished reads EOF on its pipe and exits.
- Connections inherited through fork are never used: in each worker, SQLAlchemy engines created
  by the driver (MLflow's SQLite stores) drop their pools without closing the driver's
  connections (`Engine.dispose(close=False)`, SQLAlchemy's documented recipe for os.fork), so
  every worker opens its own.

POSIX only ('fork'); elsewhere n_jobs > 1 raises a one-line error naming another launcher.
"""


import importlib
import logging
import os
import pickle
import signal
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, open_dict

from hydra_plugins.backprop_lab_launcher import job as lean_job

log = logging.getLogger(__name__)


class WorkerDied(RuntimeError):
    """A worker process ended while it ran a job (its return value never came back)."""


class BackpropLabLauncher(Launcher):
    #: Its jobs run on this machine (in this process or its forks): they read files the driver
    #: wrote, e.g. the jobs the sweeper computed ahead (backprop_lab.sweep.ahead).
    local_jobs = True

    def __init__(self, n_jobs: int | None = None, preload: Sequence[str] = (),
                 composer: str | None = None, grace_s: float = 10.0, warm_start: bool = True,
                 lean_run_job: bool = True) -> None:
        super().__init__()
        if n_jobs is not None and (not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs < 1):
            raise ValueError(f"hydra.launcher.n_jobs={n_jobs!r}: expected a whole number >= 1, or null "
                             "(one worker per core)")
        self.n_jobs = n_jobs
        self.preload = list(preload or ())
        self.composer = composer
        self.grace_s = float(grace_s)
        self.warm_start = bool(warm_start)
        self.lean_run_job = bool(lean_run_job)
        self.config: DictConfig | None = None
        self.task_function: TaskFunction | None = None
        self.hydra_context: HydraContext | None = None
        self._compose: Callable[[list], DictConfig] | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction,
              config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def use_composer(self, composer: Any) -> None:
        """Compose the jobs with `composer.compose` (the sweeper's JobComposer, which composed
        and validated them before the launch): the bases it holds are not composed again, by the
        driver nor by the workers it forks. Ignored unless `composer` is configured (null: Hydra's
        load_sweep_config) and the composer works on this launcher's config."""
        if self.composer and getattr(composer, "config", None) is self.config:
            self._compose = composer.compose

    def workers_for(self, n_jobs: int) -> int:
        """How many workers `launch` starts for n_jobs jobs (1: the jobs run in this process)."""
        wanted = self.n_jobs if self.n_jobs is not None else (os.cpu_count() or 1)
        return max(1, min(wanted, n_jobs))

    def prepare(self, n_jobs: int) -> None:
        """Import `preload` now if `launch` of n_jobs jobs will fork workers (it would import them
        then): the sweeper calls this before it stops the jobs it computes ahead, which go on
        computing meanwhile (backprop_lab.sweep.ahead)."""
        if self.workers_for(n_jobs) > 1:
            for module in self.preload:
                importlib.import_module(module)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        setup_globals()
        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        jobs = [(initial_job_idx + offset, list(overrides)) for offset, overrides in enumerate(job_overrides)]
        for idx, overrides in jobs:
            log.info(f"\t#{idx} : {' '.join(filter_overrides(overrides))}")
        n_workers = self.workers_for(len(jobs))
        if n_workers == 1:
            return [self._run(job) for job in jobs]
        if not hasattr(os, "fork"):
            raise RuntimeError("hydra/launcher=backprop_lab with n_jobs > 1 needs os.fork (Linux, macOS); "
                               "use hydra.launcher.n_jobs=1 or hydra/launcher=joblib")
        self.prepare(len(jobs))
        if self._compose is None:  # before the fork: every worker shares its cached bases
            self._compose = self._composer()
        first = []
        if self.warm_start:  # the workers inherit what job 0 warmed (figure caches, compiled SQL)
            first, jobs = [self._run(jobs[0])], jobs[1:]
        return first + run_forked(self._run, jobs, min(n_workers, len(jobs)), self.grace_s)

    def _composer(self) -> Callable[[list], DictConfig]:
        assert self.config is not None and self.hydra_context is not None
        if self.composer:
            module, _, name = self.composer.rpartition(".")
            return getattr(importlib.import_module(module), name)(self.config).compose
        loader = self.hydra_context.config_loader
        return lambda overrides: loader.load_sweep_config(self.config, overrides)

    def _run(self, numbered: tuple[int, list[str]]) -> JobReturn:
        """Compose job (number, overrides) and run it as BasicLauncher does. In a worker, so the
        compositions (a deep copy of the config each) run in parallel, off the driver's path."""
        assert self.config is not None and self.hydra_context is not None
        idx, overrides = numbered
        if self._compose is None:
            self._compose = self._composer()
        cfg = self._compose(overrides)
        with open_dict(cfg):
            cfg.hydra.job.id = idx
            cfg.hydra.job.num = idx
        run = lean_job.run_job if self.lean_run_job else run_job  # the config is this job's alone
        try:
            ret = run(hydra_context=self.hydra_context, task_function=self.task_function, config=cfg,
                      job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
        except Exception as exc:
            # Hydra's own set-up of the job failed before the task ran (writing .hydra/config.yaml
            # in its job folder on a full disk): that job fails, the other jobs go on, as when the
            # task itself raises. BasicLauncher would end the whole sweep with a traceback.
            ret = JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=exc)
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return ret


# --------------------------------------------------------------------------- the forked pool


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process (fork context)
    conn: Any  # the driver's end of the worker's pipe
    job: int | None = None  # the job it is running


def run_forked(run_one: Callable[[Any], JobReturn], jobs: list, n_workers: int,
               grace_s: float = 10.0) -> list[JobReturn]:
    """run_one(jobs[i]) for every i on n_workers forked processes; JobReturns in job order."""
    import multiprocessing
    from multiprocessing.connection import wait

    ctx = multiprocessing.get_context("fork")
    todo = deque(range(len(jobs)))
    results: list[JobReturn | None] = [None] * len(jobs)
    workers: list[_Worker] = []
    engines = _sqlalchemy_engines()
    # No SQLite connection may cross the fork (SQLite's rule): the driver's pooled connections
    # are closed here, before the first fork, and reopened by the driver when it next needs one.
    # With them open, workers' rows in a WAL store were lost (8-job sweep: 1 child row kept).
    for engine in engines:
        engine.dispose()

    def start() -> _Worker:
        mine, theirs = ctx.Pipe()
        others = [w.conn for w in workers] + [mine]  # the driver's ends, closed in the child
        process = ctx.Process(target=_worker_main, args=(theirs, others, engines, run_one, jobs),
                              name=f"bpl-worker-{len(workers)}", daemon=True)
        process.start()
        theirs.close()
        return _Worker(process, mine)

    try:
        while todo or any(w.job is not None for w in workers):
            while todo and len(workers) < n_workers:
                workers.append(start())
            for w in workers:
                if w.job is None and todo:
                    w.job = todo.popleft()
                    w.conn.send(w.job)
            wait([w.conn for w in workers] + [w.process.sentinel for w in workers])
            for w in list(workers):
                done = _collect(w, results)
                if done:
                    continue
                if not w.process.is_alive():  # died: its job (if any) fails, a new worker takes over
                    w.process.join()
                    if w.job is not None:
                        results[w.job] = _died(jobs[w.job], w.process.exitcode)
                    w.conn.close()
                    workers.remove(w)
    except BaseException:
        _stop(workers, grace_s)
        raise
    for w in workers:  # all idle: ask them to leave, then reap them
        try:
            w.conn.send(None)
        except OSError:
            pass
    for w in workers:
        w.process.join(timeout=5)
        if w.process.is_alive():
            w.process.kill()
            w.process.join()
        w.conn.close()
    return results  # type: ignore[return-value]


def _collect(w: _Worker, results: list) -> bool:
    """Read the worker's finished job if it sent one; True when it did."""
    try:
        if not w.conn.poll():
            return False
        idx, payload = w.conn.recv()
    except (EOFError, OSError):
        return False
    results[idx] = pickle.loads(payload)
    w.job = None
    return True


def _died(job: tuple[int, list[str]], exitcode: int | None) -> JobReturn:
    idx, overrides = job
    how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
    error = WorkerDied(f"job #{idx} ({' '.join(overrides)}): its worker process died ({how})")
    return JobReturn(overrides=list(overrides), status=JobStatus.FAILED, _return_value=error)


def _stop(workers: list[_Worker], grace_s: float) -> None:
    """Ctrl-C (or any error) in the driver: SIGINT each worker, wait grace_s, then terminate, kill."""
    import time

    try:
        for w in workers:
            if w.process.is_alive() and w.process.pid is not None:
                os.kill(w.process.pid, signal.SIGINT)
        deadline = time.monotonic() + grace_s
        for w in workers:
            w.process.join(timeout=max(0.0, deadline - time.monotonic()))
        for w in workers:
            if w.process.is_alive():
                w.process.terminate()
        for w in workers:
            w.process.join(timeout=2)
    except KeyboardInterrupt:  # a second Ctrl-C: no more waiting
        pass
    finally:
        for w in workers:
            if w.process.is_alive():
                w.process.kill()
            w.process.join()
            w.conn.close()


# --------------------------------------------------------------------------- in the worker


def _worker_main(conn, driver_ends, engines, run_one, jobs) -> None:
    """Body of a forked worker: run the job numbers the driver sends until None or EOF."""
    for end in driver_ends:  # else this worker would keep other workers' pipes open
        end.close()
    for engine in engines:  # the driver's pooled connections must not be used here
        engine.dispose(close=False)
    _interrupt_once()
    try:
        while True:
            idx = conn.recv()
            if idx is None:
                return
            conn.send((idx, _pickled(run_one(jobs[idx]))))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        return  # Ctrl-C (the job has ended its run), or the driver is gone


def _interrupt_once() -> None:
    """The first SIGINT raises KeyboardInterrupt; later ones (driver + terminal) are ignored, so
    they cannot interrupt the job's clean-up."""
    def handler(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, handler)


def _pickled(ret: JobReturn) -> bytes:
    """The JobReturn as bytes; a value that cannot be pickled becomes a FAILED job saying so."""
    try:
        return pickle.dumps(ret)
    except Exception as exc:
        value = ret._return_value
        what = "error" if ret.status == JobStatus.FAILED else "return value"
        ret._return_value = RuntimeError(
            f"the job's {what} ({type(value).__name__}: {value}) cannot be sent back from its worker: {exc}")
        ret.status = JobStatus.FAILED
        return pickle.dumps(ret)


def _sqlalchemy_engines() -> list:
    """Every SQLAlchemy Engine alive in the driver (MLflow keeps its own per store URI)."""
    import sys

    if "sqlalchemy" not in sys.modules:
        return []
    import gc

    from sqlalchemy.engine import Engine

    return [obj for obj in gc.get_objects() if isinstance(obj, Engine)]
