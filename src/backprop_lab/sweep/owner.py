"""Hydra callback for multiruns: every job validated up front, one parent run, resume, summary.

It runs in the driver process only: `on_multirun_start` before the sweeper launches any job,
`on_multirun_end` after the last one returned. Jobs (experiment.run) find their parent through
the tag `bpl.sweep_dir` and skip configs already FINISHED in the experiment; this module prepares
the store, the experiment and the parent, and reads the children back (sweep_report). The jobs
are expanded, composed and validated by sweep_jobs.

Hydra's `Callbacks` turns an `Exception` raised by a callback into a warning, so errors leave
through `SystemExit`: one line on stderr, exit code 2 for a bad sweep, 1 when jobs failed.
"""

from __future__ import annotations

import atexit
import sys
import time
from dataclasses import dataclass
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from backprop_lab.sweep import report
from backprop_lab.tracking import client as tracking  # before mlflow: it turns telemetry off
from backprop_lab.sweep.jobs import SweepError, compose_jobs, expand_jobs, sweep_key
from backprop_lab.sweep.jobs import one_line as _one_line
from backprop_lab.sweep.report import Job
from mlflow.entities import Metric, RunTag, ViewType  # noqa: E402

__all__ = ["SweepCallback", "SweepError", "compose_jobs", "expand_jobs", "sweep_key"]

SWEEP_KEY_TAG = "bpl.sweep_key"


@dataclass
class _State:
    client: Any
    experiment_id: str
    parent_id: str
    jobs: list[Job]
    preset: str
    started_ms: int
    ended: bool = False


# --------------------------------------------------------------------------- the callback


class SweepCallback(Callback):
    """Driver-side hooks of a multirun; see the module docstring."""

    def __init__(self) -> None:
        self._state: _State | None = None

    # Launchers that pickle the Hydra context (joblib, ray) ship the callbacks to the workers;
    # the driver's client and parent stay behind.
    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._state = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        try:
            self._state = _start(config)
        except SweepError as exc:
            print(f"sweep: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        atexit.register(_end_if_running, self._state)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        state, self._state = self._state, None
        if state is None:
            return
        try:
            failed = _finish(state)
        except Exception as exc:  # noqa: BLE001 - the store went away: still end the parent
            print(f"sweep: could not write the summary to the store: {_one_line(exc)}",
                  file=sys.stderr, flush=True)
            _end_if_running(state, status="FAILED")
            raise SystemExit(1) from None
        if failed:
            shown = "; ".join(failed[:10]) + (f"; and {len(failed) - 10} more" if len(failed) > 10 else "")
            print(f"sweep: {len(failed)} job(s) failed: {shown} "
                  "(traceback: artifact error/traceback.txt of each run)", file=sys.stderr, flush=True)
            raise SystemExit(1)


# --------------------------------------------------------------------------- start


def _start(config: DictConfig) -> _State:
    jobs = compose_jobs(config, expand_jobs(config))  # raises before anything is written
    if not jobs:
        raise SweepError("the sweep has no jobs")
    first = jobs[0].run_config
    names = sorted({job.run_config.experiment_name for job in jobs})
    if len(names) > 1:
        raise SweepError(f"experiment_name: one sweep logs to one experiment, got {', '.join(names)}")
    preset = _preset(config, first)
    force = any(job.run_config.force for job in jobs)
    sweep_dir = tracking.normalize_sweep_dir(str(config.hydra.sweep.dir))

    client, uri, experiment_id = _open_store(first)
    key = sweep_key(preset, jobs)
    started_ms = int(time.time() * 1000)
    parent = None if force else _find_parent(client, experiment_id, key)
    if parent is None:
        parent_id = _create_parent(client, experiment_id, preset, key, sweep_dir, jobs)
        killed = 0
    else:  # resume: same definition, so the same parent; its jobs now write to the new dir
        parent_id = parent.info.run_id
        client.update_run(parent_id, status="RUNNING")
        client.set_tag(parent_id, "bpl.sweep_dir", sweep_dir)
        killed = _kill_stale_children(client, experiment_id, parent_id)
    _release_sweep_dir(client, experiment_id, parent_id, sweep_dir)

    done = set() if force else _finished_keys(client, experiment_id)
    n_skip = sum(job.config_key in done for job in jobs)
    how = f"resumed parent {parent_id}" if parent is not None else f"new parent {parent_id}"
    if killed:
        how += f", {killed} run(s) left RUNNING by a crash marked KILLED"
    print(f"sweep {preset}: {len(jobs)} jobs, {n_skip} already finished -> will be skipped"
          f"{' (force=true: none)' if force else ''}; {how}; experiment {names[0]}; store {uri}",
          flush=True)
    return _State(client, experiment_id, parent_id, jobs, preset, started_ms)


def _preset(config: DictConfig, run_config: Any) -> str:
    preset = (run_config.sweep or {}).get("preset")
    if preset:
        return str(preset)
    for override in config.hydra.overrides.task:
        if override.lstrip("+").startswith("sweep="):
            return override.split("=", 1)[1]
    return "custom"


def _open_store(run_config: Any) -> tuple[Any, str, str]:
    uri, artifact_root = tracking.resolve_tracking(run_config)
    try:
        # Once, before any worker starts: workers racing to build a fresh SQLite schema crash.
        client = tracking.prepare_store(uri, artifact_root)
        experiment_id = tracking.ensure_experiment(client, run_config.experiment_name, artifact_root)
    except tracking.StoreError as exc:
        raise SweepError(str(exc)) from None
    except tracking.MlflowException as exc:
        raise SweepError(f"tracking store {uri}: {_one_line(exc)}") from None
    return client, uri, experiment_id


def _find_parent(client: Any, experiment_id: str, key: str) -> Any:
    flt = f"tags.`bpl.role` = 'parent' and tags.`{SWEEP_KEY_TAG}` = '{key}'"
    runs = client.search_runs([experiment_id], filter_string=flt, run_view_type=ViewType.ACTIVE_ONLY,
                              max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def _create_parent(client: Any, experiment_id: str, preset: str, key: str, sweep_dir: str,
                   jobs: list[Job]) -> str:
    swept = report.swept_values(jobs)
    crossing = " x ".join(f"{k} in {{{', '.join(v)}}}" for k, v in swept.items()) or "a single config"
    note = (f"Sweep preset `{preset}`: {len(jobs)} jobs over {crossing}, one child run each. "
            "When the sweep ends, sweep/children.csv, the heatmaps and the best child are logged "
            f"here. Hydra sweep dir: {sweep_dir}. Running the same command again resumes this "
            "parent (finished configs are skipped); force=true starts a new one.")
    tags = {
        "bpl.role": "parent",
        "bpl.preset": preset,
        "bpl.sweep_dir": sweep_dir,
        SWEEP_KEY_TAG: key,
        "mlflow.note.content": note,
        **tracking.environment_tags(),
    }
    name = f"sweep:{preset} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


def _release_sweep_dir(client: Any, experiment_id: str, parent_id: str, sweep_dir: str) -> None:
    """Jobs look their parent up by sweep dir: older parents that used the same dir (a fixed
    hydra.sweep.dir, force=true) give the tag up, so the lookup finds only this one."""
    flt = f"tags.`bpl.role` = 'parent' and tags.`bpl.sweep_dir` = '{sweep_dir}'"
    for run in report.all_runs(client, experiment_id, flt):
        if run.info.run_id != parent_id:
            client.delete_tag(run.info.run_id, "bpl.sweep_dir")


def _kill_stale_children(client: Any, experiment_id: str, parent_id: str) -> int:
    """Children of a resumed parent still RUNNING were left by a crash (no job has started yet)."""
    flt = f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'"
    stale = report.all_runs(client, experiment_id, flt)
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


def _finished_keys(client: Any, experiment_id: str) -> set[str]:
    """Config keys with a FINISHED run in the experiment: the jobs experiment.run will skip."""
    flt = "attributes.status = 'FINISHED' and tags.`bpl.role` != 'parent'"
    return {r.data.tags.get("bpl.config_key") for r in report.all_runs(client, experiment_id, flt)}


def _end_if_running(state: _State, status: str = "KILLED") -> None:
    """atexit: a sweep that died before on_multirun_end must not leave its parent RUNNING."""
    if state.ended:
        return
    state.ended = True
    try:
        if state.client.get_run(state.parent_id).info.status == "RUNNING":
            state.client.set_terminated(state.parent_id, status=status)
    except Exception:  # noqa: BLE001 - shutting down; re-running the command resumes anyway
        pass


# --------------------------------------------------------------------------- end


def _finish(state: _State) -> list[str]:
    """Summary table, children.csv, heatmaps and best child on the parent; the failed jobs."""
    client, parent_id = state.client, state.parent_id
    rows = report.collect_rows(client, state.experiment_id, parent_id, state.jobs, state.started_ms)
    counts = {s: sum(r.status == s for r in rows) for s in report.STATUSES}
    best = report.best_row(rows)
    print(report.table(rows), flush=True)
    for line in report.seed_lines(rows):
        print(line, flush=True)
    best_text = (f"; best {best.name}: test acc {best.metric('final/test_acc'):.4f} "
                 f"(run {best.run_id})") if best else ""
    print(f"sweep {state.preset}: {len(rows)} jobs: "
          f"{', '.join(f'{n} {s}' for s, n in counts.items())}{best_text}", flush=True)

    client.log_text(parent_id, report.children_csv(rows), "sweep/children.csv")
    for init, figure in report.heatmaps(rows):
        client.log_figure(parent_id, figure, f"sweep/heatmap_{init}.png")
    now = int(time.time() * 1000)
    metrics = {f"sweep/n_{s}": float(n) for s, n in counts.items()}
    metrics["sweep/n_jobs"] = float(len(rows))
    tags = {}
    if best is not None:
        metrics["sweep/best_test_acc"] = best.metric("final/test_acc")
        tags["bpl.best_child_run_id"] = best.run_id
    client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    failed = [r for r in rows if r.status == "failed"]
    client.set_terminated(parent_id, status="FAILED" if failed else "FINISHED")
    state.ended = True
    return [f"{r.name} (run {r.run_id or 'never created'})" for r in failed]
