"""The whole life of one run: validate -> store -> skip or start -> train + gradcheck -> log -> end.

`run(cfg, job)` is what the Hydra entry point calls; tests call it directly with a composed
config and no Hydra CLI. Nothing is written to the store before the config is valid and the
store is usable. Every run that started ends FINISHED or FAILED (KILLED on Ctrl-C), never RUNNING.
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

from backprop_lab.config.schema import ConfigError, UserError, config_key, validate
from backprop_lab.tracking import record

__all__ = ["JobContext", "RunSummary", "run", "run_name", "ConfigError", "UserError"]


@dataclass(frozen=True)
class JobContext:
    """What the Hydra entry point knows about the job (scripts/train.py fills it from HydraConfig)."""

    mode: str = "single"  # "single" | "multirun"
    sweep_dir: str | None = None  # multirun: the sweep's output folder (finds the parent run)
    job_num: int | None = None
    overrides: tuple[str, ...] = ()  # the job's override strings, as typed or swept
    preset: str | None = None  # the sweep preset's name (conf/sweep/<preset>.yaml)
    swept: tuple[str, ...] = ()  # multirun: the keys the sweep varies (they name the run)


@dataclass
class RunSummary:
    """Outcome of one job; `line` is the one line printed for it."""

    status: str  # finished | diverged | failed | skipped
    run_name: str
    run_id: str | None = None
    config_key: str | None = None
    test_acc: float | None = None
    gradcheck_max_rel_err: float | None = None
    seconds: float = 0.0
    error: str | None = None
    overrides: tuple[str, ...] = ()
    line: str = ""
    metrics: dict[str, float] = field(default_factory=dict)


def job_from_hydra(hc, argv=()) -> JobContext:
    """JobContext from HydraConfig.get() (and the driver's command line, for swept lists)."""
    multirun = str(hc.mode).endswith("MULTIRUN")
    swept: list[str] = []
    if multirun:
        swept = list((hc.sweeper.get("params") or {}).keys())  # the preset's sweep
        for arg in argv:  # command-line lists; joblib workers see only the preset's keys
            key, _, value = arg.lstrip("+~").partition("=")
            if "," in value or value.startswith(("range(", "choice(", "glob(", "interval(")):
                swept.append(key)
    return JobContext(mode="multirun" if multirun else "single",
                      sweep_dir=str(hc.sweep.dir) if multirun else None,
                      job_num=hc.job.num if multirun else None,
                      overrides=tuple(hc.overrides.task), preset=hc.runtime.choices.get("sweep"),
                      swept=tuple(swept))


def run(cfg: Any, job: JobContext | None = None, *, out=None, parent_id: str | None = None,
        tags: dict[str, str] | None = None, on_epoch=None) -> RunSummary:
    """Train and log one run. Raises ConfigError / StoreError in single mode before any write.

    In multirun mode those become a failed summary too, so the other jobs of the sweep go on.
    parent_id: the parent run, when the caller owns one (a search); tags: extra run tags;
    on_epoch(epoch, metrics) -> bool: True stops training (status "stopped", see core.train).
    """
    job = job or JobContext()
    out = out or sys.stdout
    t0 = time.perf_counter()
    name = run_name(job.overrides, job.swept)
    try:
        rc = validate(cfg)
        from backprop_lab.tracking import store  # no mlflow: a broken store fails before its import

        uri, artifact_root = store.resolve_tracking(rc)
        store.check_store_quickly(uri)
        from backprop_lab.tracking import client as tracking  # mlflow takes seconds to import: only for valid configs

        client = tracking.prepare_store(uri, artifact_root)
        experiment_id = tracking.ensure_experiment(client, rc.experiment_name, artifact_root)
    except UserError as exc:
        if job.mode != "multirun":
            raise
        summary = RunSummary("failed", name, error=str(exc), overrides=job.overrides,
                             seconds=time.perf_counter() - t0)
        return _report(summary, out)

    key = config_key(rc)
    if not rc.force:
        previous = tracking.find_finished_run(client, experiment_id, key)
        if previous is not None:
            m = previous.data.metrics
            summary = RunSummary("skipped", name, previous.info.run_id, key,
                                 m.get("final/test_acc"), m.get("gradcheck/trained/max_rel_err"),
                                 time.perf_counter() - t0, overrides=job.overrides,
                                 error=f"already FINISHED as run {previous.info.run_id}")
            return _report(summary, out)

    if parent_id is None and job.mode == "multirun" and job.sweep_dir:
        parent = tracking.find_parent_run(client, experiment_id, job.sweep_dir)
        parent_id = parent.info.run_id if parent is not None else None
    preset = job.preset or (rc.sweep or {}).get("preset") or ""
    tags = {
        "bpl.status": "running",
        "bpl.config_key": key,
        "bpl.role": "child" if job.mode == "multirun" else "single",
        "bpl.preset": preset,
        **({"bpl.sweep_dir": tracking.normalize_sweep_dir(job.sweep_dir)} if job.sweep_dir else {}),
        **({"mlflow.parentRunId": parent_id} if parent_id else {}),
        **tracking.environment_tags(),
        **(tags or {}),
    }
    mlflow_run = client.create_run(experiment_id, tags=tags, run_name=name)
    run_id = mlflow_run.info.run_id
    try:
        with _blas_threads(rc.blas_threads):
            result = record.train_and_log(client, mlflow_run.info, rc, job.overrides, t0, on_epoch)
    except KeyboardInterrupt:
        _end_failed(client, run_id, status="KILLED")
        raise
    except Exception as exc:  # noqa: BLE001 - any crash must end the run FAILED, with its traceback
        _end_failed(client, run_id)
        msg = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        summary = RunSummary("failed", name, run_id, key, seconds=time.perf_counter() - t0,
                             error=msg, overrides=job.overrides)
        return _report(summary, out)
    status, metrics = result.status, result.metrics  # result.boundary_png: the trained boundary
    summary = RunSummary(status, name, run_id, key, metrics.get("final/test_acc"),
                         metrics.get("gradcheck/trained/max_rel_err",
                                     metrics.get("gradcheck/init/max_rel_err")),
                         time.perf_counter() - t0, overrides=job.overrides, metrics=metrics)
    return _report(summary, out)


def _blas_threads(n: int | None):
    """Limit the BLAS thread pool for the run (threadpoolctl; restored afterwards)."""
    if n is None:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="blas")


def _report(summary: RunSummary, out) -> RunSummary:
    acc = "-" if summary.test_acc is None else f"{summary.test_acc:.3f}"
    err = "-" if summary.gradcheck_max_rel_err is None else f"{summary.gradcheck_max_rel_err:.1e}"
    line = (f"{summary.run_name:<32} test_acc={acc:<6} gradcheck={err:<8} "
            f"{summary.status:<9} {summary.seconds:6.2f}s")
    if summary.error and summary.status in ("failed", "skipped"):
        line += f"  ({summary.error})"
    summary.line = line
    print(line, file=out, flush=True)
    return summary


def _end_failed(client, run_id: str, status: str = "FAILED") -> None:
    """Best effort: the traceback as an artifact, bpl.status=failed, run ended FAILED/KILLED."""
    from backprop_lab.tracking import client as tracking

    text = traceback.format_exc()
    try:
        with tempfile.TemporaryDirectory(prefix="bpl-err-") as tmp:
            (Path(tmp) / "error").mkdir()
            (Path(tmp) / "error" / "traceback.txt").write_text(text)
            client.log_artifacts(run_id, tmp)
    except Exception:  # noqa: BLE001 - a broken artifact store must not hide the run's end
        print(text, file=sys.stderr)
    finally:
        tracking.log_tags(client, run_id, {"bpl.status": "failed"})
        client.set_terminated(run_id, status)


# --------------------------------------------------------------------------- run names

# Short aliases of the keys users sweep (docs/architecture.md); others keep their last part.
ALIASES = {
    "optim.lr": "lr", "model.width": "width", "model.depth": "depth", "init": "init",
    "init.name": "init", "optim": "opt", "optim.name": "opt", "data": "data", "data.name": "data",
    "seed": "seed", "model.activation": "act",
}
_ORDER = ["lr", "width", "depth", "init", "opt", "data", "seed", "act"]


_NOT_IN_NAME = ("sweep", "force", "experiment_name")


def run_name(overrides, swept=None) -> str:
    """`lr=0.1 width=16 init=he` from the job's overrides; `defaults` when there are none.

    swept: the keys a multirun varies; when given (non-empty), only those are named.
    """
    parts: dict[str, str] = {}
    for text in overrides:
        key, sep, value = str(text).lstrip("+~").partition("=")
        if not sep or key.startswith(("hydra", "tracking")) or key in _NOT_IN_NAME:
            continue
        if swept and key not in swept:
            continue
        parts[ALIASES.get(key, key.rsplit(".", 1)[-1])] = value
    ordered = sorted(parts, key=lambda k: (_ORDER.index(k) if k in _ORDER else len(_ORDER), k))
    return " ".join(f"{k}={parts[k]}" for k in ordered) or "defaults"
