"""The whole life of one run: validate -> store -> skip or start -> train + gradcheck -> log -> end.

`run(cfg, job)` is what the Hydra entry point calls; tests call it directly with a composed
config and no Hydra CLI. Nothing is written to the store before the config is valid and the
store is usable. Every run that started ends FINISHED or FAILED (KILLED on Ctrl-C), never RUNNING.

A sweep's job learns everything about its sweep from its own config: the sweeper
(backprop_lab.sweep.owner) adds `SweepJob.overrides()` (`sweep.parent_run_id`, `sweep.run_name`,
`sweep.job`, `sweep.n_jobs`, `sweep.started_at`) to each job's overrides, and the job returns its
`RunSummary` to the sweeper through the launcher. Nothing is looked up in the store.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backprop_lab.config import names
from backprop_lab.config.schema import ConfigError, UserError, config_key, validate
from backprop_lab.tracking import record

__all__ = ["JobContext", "RunSummary", "SweepJob", "run", "run_name", "print_line", "ConfigError",
           "UserError"]

run_name = names.run_name


@dataclass(frozen=True)
class JobContext:
    """What the Hydra entry point knows about the job (scripts/train.py fills it from HydraConfig)."""

    mode: str = "single"  # "single" | "multirun"
    overrides: tuple[str, ...] = ()  # the job's override strings, as typed or swept (no sweep.*)
    preset: str | None = None  # bpl.preset when the config has no sweep.preset (a search)
    swept: tuple[str, ...] = ()  # when given: only these override keys name the run (a search)

    def name(self) -> str:
        named = [o for o in self.overrides
                 if not self.swept or o.lstrip("+~").split("=", 1)[0] in self.swept]
        return run_name(named)


@dataclass(frozen=True)
class SweepJob:
    """What the sweeper tells one of its jobs, through `sweep.*` keys of the job's config."""

    parent_run_id: str
    run_name: str
    job: int  # k of [k/N]: 1-based position among the jobs this sweep launches
    n_jobs: int  # N
    started_at: float  # unix time the sweep launched its first job (for the time left)
    # A file holding this job's compute, done ahead by the sweep (sweep/ahead.py), or "".
    computed: str = ""

    KEYS = ("parent_run_id", "run_name", "job", "n_jobs", "started_at", "computed")

    def overrides(self) -> list[str]:
        """`++sweep.<key>=<value>` overrides (plain values: the sweep's fast composition holds)."""
        def quoted(text: str) -> str:
            return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"

        return [f"++sweep.parent_run_id={quoted(self.parent_run_id)}",
                f"++sweep.run_name={quoted(self.run_name)}", f"++sweep.job={self.job}",
                f"++sweep.n_jobs={self.n_jobs}", f"++sweep.started_at={self.started_at:.3f}",
                *([f"++sweep.computed={quoted(self.computed)}"] if self.computed else [])]

    @classmethod
    def split(cls, rc: Any) -> tuple[Any, SweepJob | None]:
        """(rc without the sweeper's keys, SweepJob or None): the keys are not the run's params."""
        sweep = dict(rc.sweep or {})
        if "parent_run_id" not in sweep:
            return rc, None
        job = cls(str(sweep["parent_run_id"]), str(sweep.get("run_name") or ""),
                  int(sweep.get("job", 0)), int(sweep.get("n_jobs", 0)),
                  float(sweep.get("started_at", time.time())), str(sweep.get("computed") or ""))
        rest = {k: v for k, v in sweep.items() if k not in cls.KEYS}
        return rc.model_copy(update={"sweep": rest or None}), job


@dataclass
class RunSummary:
    """Outcome of one job, returned to the sweeper; `line` is the one line printed for it."""

    status: str  # finished | diverged | failed | skipped
    run_name: str
    run_id: str | None = None
    config_key: str | None = None
    test_acc: float | None = None
    test_loss: float | None = None
    gradcheck_max_rel_err: float | None = None
    seconds: float = 0.0
    error: str | None = None
    overrides: tuple[str, ...] = ()
    line: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)  # label (config/names.py) -> value
    seed: int | None = None
    # The final decision boundary (PNG), for the sweep parent's gallery; filled by record.
    boundary_png: bytes | None = None


def job_from_hydra(hc) -> JobContext:
    """JobContext from HydraConfig.get(): the mode and the job's overrides (minus the sweeper's)."""
    multirun = str(hc.mode).endswith("MULTIRUN")
    overrides = tuple(o for o in hc.overrides.task
                      if o.lstrip("+~").split("=", 1)[0].removeprefix("sweep.") not in SweepJob.KEYS)
    return JobContext(mode="multirun" if multirun else "single", overrides=overrides)


def run(cfg: Any, job: JobContext | None = None, *, out=None, parent_id: str | None = None,
        tags: dict[str, str] | None = None, on_epoch=None) -> RunSummary:
    """Train and log one run. Raises ConfigError / StoreError in single mode before any write.

    In multirun mode every error (a bad config, a store that fails, even in create_run) becomes
    a failed summary with one line instead, so the other jobs of the sweep go on.
    parent_id: the parent run, when the caller owns one (a search; a sweep's job reads its own from
    its config); tags: extra run tags; on_epoch(epoch, metrics) -> bool: True stops training
    (status "stopped", see core.train).
    """
    job = job or JobContext()
    out = out or sys.stdout
    t0 = time.perf_counter()
    multirun = job.mode == "multirun"
    sweep, rc, key = None, None, None
    name = job.name()

    def failed(error: str, run_id: str | None = None) -> RunSummary:
        summary = RunSummary("failed", name, run_id, key, seconds=time.perf_counter() - t0, error=error,
                             overrides=job.overrides, values=_values(job, rc),
                             seed=rc.seed if rc is not None else None)
        return print_line(summary, sweep, out)

    try:
        rc, sweep = SweepJob.split(validate(cfg))
        name = (sweep.run_name if sweep is not None else "") or name
        key = config_key(rc)
        from backprop_lab.tracking import store  # no mlflow: a broken store fails before its import

        uri, artifact_root = store.resolve_tracking(rc)
        store.check_store_quickly(uri)
        # mlflow takes seconds to import: only for valid configs.
        from backprop_lab.tracking import client as tracking

        client = tracking.prepare_store(uri, artifact_root)
        experiment_id = tracking.ensure_experiment(client, rc.experiment_name, artifact_root)
        if not rc.force and sweep is None:  # a sweep's owner skipped its FINISHED configs already
            previous = tracking.find_finished_run(client, experiment_id, key)
            if previous is not None:
                m = previous.data.metrics
                summary = RunSummary("skipped", name, previous.info.run_id, key,
                                     m.get("final/test_acc"), m.get("final/test_loss"),
                                     m.get("gradcheck/trained/max_rel_err"), time.perf_counter() - t0,
                                     overrides=job.overrides, values=_values(job, rc), seed=rc.seed,
                                     error=f"already FINISHED as run {previous.info.run_id}")
                return print_line(summary, sweep, out)
        parent_id = sweep.parent_run_id if sweep is not None else parent_id
        run_tags = {
            "bpl.status": "running",
            "bpl.config_key": key,
            "bpl.role": "child" if sweep is not None else "single",
            "bpl.preset": (rc.sweep or {}).get("preset") or job.preset or "",
            **({"mlflow.parentRunId": parent_id} if parent_id else {}),
            **tracking.environment_tags(),
            **(tags or {}),
        }
        info = tracking.create_run(client, experiment_id, tags=run_tags, run_name=name)
    except UserError as exc:
        if not multirun:
            raise
        return failed(str(exc))
    except Exception as exc:  # the store failed (disk full, locked, server error): one line
        if not multirun:
            raise UserError(f"tracking store: {_one_line(exc)}") from None
        return failed(f"tracking store: {_one_line(exc)}")

    run_id = info.run_id
    try:
        # Computed ahead by the sweep (a file it names in this job's config; sweep/ahead.py): logged
        # as computed there. Unreadable or missing: computed here.
        computed = (record.take_computed(sweep.computed, key)
                    if sweep is not None and sweep.computed and on_epoch is None else None)
        with blas_threads(rc.blas_threads):
            result = record.train_and_log(client, info, rc, job.overrides, t0, on_epoch, computed)
    except KeyboardInterrupt:
        _end_failed(client, run_id, status="KILLED")
        raise
    except Exception as exc:  # any crash must end the run FAILED, with its traceback
        _end_failed(client, run_id)
        return failed(_one_line(exc, with_type=True), run_id)
    status, metrics = result.status, result.metrics
    summary = RunSummary(status, name, run_id, key, metrics.get("final/test_acc"),
                         metrics.get("final/test_loss"),
                         metrics.get("gradcheck/trained/max_rel_err",
                                     metrics.get("gradcheck/init/max_rel_err")),
                         time.perf_counter() - t0, overrides=job.overrides, metrics=metrics,
                         values=_values(job, rc), seed=rc.seed,
                         boundary_png=result.boundary_png)
    return print_line(summary, sweep, out)


def _values(job: JobContext, rc: Any) -> dict[str, Any]:
    return names.named_values(job.overrides, rc.model_dump(mode="json")) if rc is not None else {}


def _one_line(exc: BaseException, with_type: bool = False) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0][:300] if text else ""
    return f"{type(exc).__name__}: {first}" if with_type or not first else first


def blas_threads(n: int | None):
    """Limit the BLAS thread pool for the run (threadpoolctl; restored afterwards)."""
    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


def print_line(summary: RunSummary, sweep: SweepJob | None, out) -> RunSummary:
    """Print the run's one line; in a sweep with `[k/N]` first and the sweep's time left last."""
    acc = "-" if summary.test_acc is None else f"{summary.test_acc:.3f}"
    err = "-" if summary.gradcheck_max_rel_err is None else f"{summary.gradcheck_max_rel_err:.1e}"
    line = (f"{summary.run_name:<32} test_acc={acc:<6} gradcheck={err:<8} "
            f"{summary.status:<9} {summary.seconds:6.2f}s")
    if sweep is not None and sweep.n_jobs:
        width = len(str(sweep.n_jobs))
        elapsed = max(time.time() - sweep.started_at, 0.0)
        left = elapsed / max(sweep.job, 1) * max(sweep.n_jobs - sweep.job, 0)
        line = f"[{sweep.job:>{width}}/{sweep.n_jobs}] {line}  ~{_clock(left)} left"
    if summary.error and summary.status in ("failed", "skipped"):
        line += f"  ({summary.error})"
    summary.line = line
    write_line(out, line)
    return summary


def write_line(out, line: str) -> None:
    """`line` and its newline in one write, flushed. Several workers share the terminal, and
    print() writes a line and its newline apart, which unbuffered streams (python -u,
    PYTHONUNBUFFERED) hand to the OS as two writes: another worker's line could land between
    them (two lines on one, seen in the tests)."""
    out.write(line + "\n")
    out.flush()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def _end_failed(client, run_id: str, status: str = "FAILED") -> None:
    """Best effort: the traceback as an artifact, bpl.status=failed, run ended FAILED/KILLED.

    Never raises and prints nothing: the store may be what failed (a full disk), and the job's
    one line already says why. Each step is tried on its own; a run this cannot end stays
    RUNNING for its owner to end (a sweep ends its RUNNING children when its jobs are done).
    """
    from backprop_lab.tracking import client as tracking

    text = traceback.format_exc()
    with contextlib.suppress(Exception), tempfile.TemporaryDirectory(prefix="bpl-err-") as tmp:
        (Path(tmp) / "error").mkdir()
        (Path(tmp) / "error" / "traceback.txt").write_text(text)
        client.log_artifacts(run_id, tmp)
    with contextlib.suppress(Exception):
        tracking.log_tags(client, run_id, {"bpl.status": "failed"})
    with contextlib.suppress(Exception):
        client.set_terminated(run_id, status)
