"""The sweep, owned by one object in the driver process: `Sweep(config, launcher, loader).run(arguments)`.

hydra_plugins.backprop_lab_sweeper (Hydra's sweeper slot) hands its `sweep()` call here. Data flows
one way: sweeper -> launcher -> job -> return value.

1. plan: expand the jobs as Hydra's BasicSweeper does, compose and validate every one
   (sweep.jobs); a bad key, option or value ends in the single run's one line, exit 2, with
   nothing written. The project's launcher composes the jobs again with the same JobComposer.
2. open the store, hold the experiment (sweep.lock: a second sweep on it is refused, exit 2;
   on SQLite the lock file also reserves room to end the runs if the disk fills), create the
   parent run or resume the one with the same sweep definition (tag bpl.sweep_key).
   The store is read only here: to resume and to skip the configs already FINISHED.
3. launch the jobs that are not skipped with the configured launcher (basic, joblib, Ray,
   Slurm...), each told its parent, `[k/N]`, start time and run name through `sweep.*` overrides
   of its own config (tracking.run.SweepJob).
4. summarise from the returned RunSummary values (sweep.report): the terminal's compact
   summary, and on the parent its note, summary figure, gallery, children.csv and metrics.

The parent always ends: FINISHED, FAILED (a job failed, or the sweep itself broke) or KILLED
(Ctrl-C, SIGTERM), and no child of it is left RUNNING (a job whose store failed as it ended its
run is ended FAILED here). When the store breaks (a full disk), the reserve is freed and the
parent and children are ended with that room; if even that fails, the line says the parent is
still RUNNING and that re-running the command resumes and ends it. Errors leave through
SystemExit with one line on stderr: 2 for a bad sweep or a busy experiment, 1 for failed jobs or
an unusable store, 130 for an interrupt.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from backprop_lab.config.schema import UserError
from backprop_lab.sweep import ahead, lock
from backprop_lab.sweep import jobs as sweep_jobs
from backprop_lab.sweep.jobs import Job, SweepError
from backprop_lab.tracking.run import RunSummary, SweepJob, print_line

SWEEP_KEY_TAG = "bpl.sweep_key"
INTERRUPTED = "interrupted: run the same command to resume"


@dataclass
class Store:
    client: Any
    uri: str
    experiment_id: str


class Sweep:
    """One multirun: the sweeper's config, launcher and settings, and the sweep's state."""

    def __init__(self, config: DictConfig, launcher: Any, loader: Any, *, params: dict | None = None,
                 max_batch_size: int | None = None, dry_run: bool = False, compute_ahead: bool = False,
                 out=None) -> None:
        self.config, self.launcher, self.loader = config, launcher, loader
        self.params, self.max_batch_size, self.dry_run = params, max_batch_size, dry_run
        self.compute_ahead = compute_ahead
        self.ahead: ahead.Ahead | None = None  # the first jobs' compute, while the driver starts
        self.out = out or sys.stdout
        # Composes every job up front; the launcher gets it too when it takes one (`use_composer`):
        # its forked workers then inherit the config bases the plan composed (~0.1-0.3 s each).
        self.composer = sweep_jobs.JobComposer(config, loader)

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    # ----------------------------------------------------------------------- the whole sweep

    def run(self, arguments: list[str]) -> list[RunSummary]:
        try:
            jobs = sweep_jobs.plan_jobs(self.config, arguments, self.loader, self.params, self.composer)
        except SweepError as exc:
            _exit(f"sweep: {exc}", 2)
        except UserError as exc:  # ConfigError: the single run's line for the same mistake
            _exit(str(exc), 2)
        preset = _preset(self.config, jobs[0].run_config)
        if self.dry_run:
            return self.dry(jobs, preset)
        if self.compute_ahead:  # before MLflow's import: the driver holds no store connection yet
            self.ahead = ahead.start(jobs, self.launcher)
        try:
            store = self.open_store(jobs[0].run_config)
            with lock.hold(store.client, store.uri, store.experiment_id,
                           jobs[0].run_config.experiment_name) as held:
                return self.owned(store, jobs, preset, held)
        except lock.SweepBusy as exc:
            _exit(str(exc), 2)
        except lock.StoreFull as exc:
            _exit(str(exc), 1)
        except KeyboardInterrupt:  # before the parent existed, or while it was being created
            _exit(INTERRUPTED, 130)
        finally:
            if self.ahead is not None:
                self.ahead.close()

    def open_store(self, rc: Any) -> Store:
        from backprop_lab.tracking import client as tracking

        uri, artifact_root = tracking.resolve_tracking(rc)
        try:
            # Once, before any worker starts: workers racing to build a fresh SQLite schema crash.
            client = tracking.prepare_store(uri, artifact_root)
            experiment_id = tracking.ensure_experiment(client, rc.experiment_name, artifact_root)
        except UserError as exc:
            _exit(f"sweep: {exc}", 1)
        except tracking.MlflowException as exc:
            _exit(f"sweep: tracking store {uri}: {sweep_jobs.one_line(exc)}", 1)
        return Store(client, uri, experiment_id)

    def owned(self, store: Store, jobs: list[Job], preset: str, held: lock.Held) -> list[RunSummary]:
        """Everything while this sweep holds the experiment: parent, launches, summary."""
        t0 = time.time()
        force = any(job.run_config.force for job in jobs)
        key = sweep_jobs.sweep_key(preset, jobs)
        try:
            parent = None if force else _find_parent(store, key)
            done = {} if force else _finished_runs(store)
        except Exception as exc:  # nothing of this sweep written yet
            _exit(f"sweep: tracking store {store.uri}: {sweep_jobs.one_line(exc)}", 1)
        todo = [job for job in jobs if job.config_key not in done]
        name = jobs[0].run_config.experiment_name
        lost = _lost_artifacts([done[job.config_key] for job in jobs if job.config_key in done])
        lost_line = (f"sweep {preset}: {len(lost)} of the finished runs it skips lost their artifacts "
                     f"(run {lost[0][0]}: {lost[0][1]} is missing); they stay skipped, force=true re-runs "
                     "every job" if lost else None)
        if not todo and parent is not None and parent.info.status == "FINISHED":
            self.say(f"sweep {preset}: all {len(jobs)} jobs already finished (parent run "
                     f"{parent.info.run_id}, experiment {name}); nothing to do (force=true reruns them)")
            if lost_line:
                self.say(lost_line)
            return [_reused(job, done[job.config_key]) for job in jobs]
        with _terminate_as_interrupt():
            try:
                if parent is None:
                    parent_id, killed = _create_parent(store, preset, key, jobs), 0
                else:  # resume: same definition, same parent (its stale children first: an
                    parent_id = parent.info.run_id  # error then leaves the parent as it was)
                    killed = _end_running_children(store, parent_id)
                    store.client.update_run(parent_id, status="RUNNING")
            except Exception as exc:  # a full disk, a locked file: no run of this sweep is RUNNING
                _exit(f"sweep: tracking store {store.uri}: cannot start the parent run: "
                      f"{sweep_jobs.one_line(exc)}", 1)
            try:
                how = f"resumed parent {parent_id}" if parent is not None else f"new parent {parent_id}"
                if killed:
                    how += f", {killed} run(s) left RUNNING by a crash marked KILLED"
                self.say(f"sweep {preset}: {len(jobs)} jobs, {len(jobs) - len(todo)} already finished -> "
                         f"will be skipped{' (force=true: none)' if force else ''}; {how}; "
                         f"experiment {name}; store {store.uri}")
                if lost_line:
                    self.say(lost_line)
                returned = self.launch(todo, parent_id)
                rows = [returned[id(job)] if id(job) in returned else _reused(job, done[job.config_key])
                        for job in jobs]
                failed = self.finish(store, parent_id, preset, jobs, rows, time.time() - t0)
            except KeyboardInterrupt:
                problem = _end_anyway(held, store, parent_id, "KILLED")
                _exit(INTERRUPTED if problem is None else f"{INTERRUPTED} (parent run {parent_id} is still "
                      f"RUNNING: {problem})", 130)
            except BaseException as exc:
                problem = _end_anyway(held, store, parent_id, "FAILED")
                if isinstance(exc, SystemExit):
                    raise
                why = f"{type(exc).__name__}: {sweep_jobs.one_line(exc)}"
                if problem is None:
                    _exit(f"sweep: stopped, parent run {parent_id} ended FAILED: {why}", 1)
                _exit(f"sweep: stopped by {why}; parent run {parent_id} could not be ended either "
                      f"({problem}): run the same command again to resume and end it", 1)
        if failed:
            shown = "; ".join(failed[:10]) + (f"; and {len(failed) - 10} more" if len(failed) > 10 else "")
            _exit(f"sweep: {len(failed)} job(s) failed: {shown} "
                  "(traceback: artifact error/traceback.txt of each run)", 1)
        return rows

    # ----------------------------------------------------------------------- launch

    def launch(self, todo: list[Job], parent_id: str) -> dict[int, RunSummary]:
        """Run the jobs with the configured launcher; id(job) -> the RunSummary it returned."""
        started = time.time()
        self.write_multirun_yaml()
        use_composer = getattr(self.launcher, "use_composer", None)  # the project's launcher
        if use_composer is not None:
            use_composer(self.composer)
        computed = {}  # config key -> the file of its compute, done ahead
        if self.ahead is not None:
            prepare = getattr(self.launcher, "prepare", None)  # the project's launcher: its imports
            if prepare is not None:
                prepare(len(todo))
            computed = self.ahead.stop()
        size = self.max_batch_size or len(todo) or 1
        returned: dict[int, RunSummary] = {}
        for start in range(0, len(todo), size):
            batch = todo[start:start + size]
            told = [SweepJob(parent_id, job.name, start + k, len(todo), started,
                             computed.get(job.config_key, ""))
                    for k, job in enumerate(batch, 1)]
            overrides = [[*job.overrides, *sj.overrides()] for job, sj in zip(batch, told, strict=True)]
            results = self.launcher.launch(overrides, initial_job_idx=start)
            for job, sj, result in zip(batch, told, results, strict=True):
                summary = _summary_of(job, result)
                if not summary.line:  # the job never printed its line (it did not run)
                    print_line(summary, sj, self.out)
                returned[id(job)] = summary
        return returned

    def write_multirun_yaml(self) -> None:
        """What BasicSweeper writes: the sweep's config in the sweep dir (not in a dry run)."""
        from pathlib import Path

        sweep_dir = Path(str(self.config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")

    # ----------------------------------------------------------------------- the end

    def finish(self, store: Store, parent_id: str, preset: str, jobs: list[Job], rows: list[RunSummary],
               seconds: float) -> list[str]:
        """Terminal summary and the parent's note, figures, children.csv, metrics; end the parent."""
        from mlflow.entities import Metric, RunTag

        from backprop_lab.analysis import summary
        from backprop_lab.sweep import report  # pandas, matplotlib, mlflow: not before a bad job is refused

        keys = sweep_jobs.swept_labels(jobs)
        per = summary.preset_per(jobs[0].run_config.sweep)
        rep = report.Report(report.frame(jobs, rows, keys), keys, per, f"sweep {preset}")
        with tempfile.TemporaryDirectory(prefix="bpl-sweep-") as tmp:
            folder = Path(tmp)
            # The summary figure on the other core (a forked child) while this one writes the rest.
            summary_drawn = report.draw_aside(rep.summary_figure, folder / "summary.png")
            counts = {s: sum(r.status == s for r in rows) for s in report.STATUSES}
            self.say(f"sweep {preset}: {len(rows)} jobs: {', '.join(f'{n} {s}' for s, n in counts.items())}"
                     f" ({seconds:.0f} s)")
            self.say(rep.text())
            best = rep.best()
            note = rep.note(store.experiment_id)
            (folder / "children.csv").write_text(rep.children_csv(), encoding="utf-8")
            report.save_png(rep.gallery_figure(rows), folder / "gallery.png")
            summary_drawn()

            client = store.client
            # A job whose store failed while it ended its run (a full disk) left it RUNNING.
            _end_running_children(store, parent_id, "FAILED")
            client.log_artifacts(parent_id, tmp, "sweep")  # children.csv, summary.png, gallery.png
        now = int(time.time() * 1000)
        metrics = {f"sweep/n_{s}": float(n) for s, n in counts.items()}
        metrics["sweep/n_jobs"] = float(len(rows))
        tags = {"mlflow.note.content": note}
        if best is not None:
            metrics["sweep/best_test_acc"] = rep.best_run_acc(best)
            metrics["sweep/best_mean_test_acc"] = float(best["mean"])
            tags["bpl.best_child_run_id"] = str(best["best_run_id"])
        client.log_batch(parent_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
        failed = [r for r in rows if r.status == "failed"]
        client.set_terminated(parent_id, status="FAILED" if failed else "FINISHED")
        return [f"{r.run_name} (run {r.run_id or 'never created'})" for r in failed]

    # ----------------------------------------------------------------------- dry run

    def dry(self, jobs: list[Job], preset: str) -> list[RunSummary]:
        """List the jobs and whether each would be skipped; write nothing (no store, no folder)."""
        done = _finished_runs_read_only(jobs[0].run_config)
        width = len(str(len(jobs)))
        name_width = max(len(job.name) for job in jobs)
        n_skip = 0
        for k, job in enumerate(jobs, 1):
            previous = done.get(job.config_key)
            n_skip += previous is not None
            what = f"skip (FINISHED as run {previous})" if previous else "run"
            self.say(f"[{k:>{width}}/{len(jobs)}] {job.name:<{name_width}}  key {job.config_key[:12]}  {what}"
                     f"  | {' '.join(sweep_jobs.task_overrides(job.overrides)) or 'defaults'}")
        self.say(f"sweep {preset} (dry run): {len(jobs)} jobs, {n_skip} would be skipped, "
                 f"{len(jobs) - n_skip} would run; nothing was written")
        return []


# --------------------------------------------------------------------------- helpers


def _exit(line: str, code: int):
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(code)


def _preset(config: DictConfig, run_config: Any) -> str:
    preset = (run_config.sweep or {}).get("preset")
    if preset:
        return str(preset)
    choice = OmegaConf.select(config, "hydra.runtime.choices.sweep")
    return str(choice) if choice else "custom"


def _summary_of(job: Job, result: Any) -> RunSummary:
    """The job's RunSummary; a job whose task function raised (it should not) or that Hydra could
    not set up (its job folder on a full disk) counts as failed, with that exception's line."""
    from hydra.core.utils import JobStatus

    if result.status == JobStatus.COMPLETED:
        value = result.return_value
    else:  # JobReturn.return_value would write a line to stderr and raise: the private field,
        value = getattr(result, "_return_value", None)  # or no reason when Hydra renames it
    if isinstance(value, RunSummary):
        return value
    error = (f"{type(value).__name__}: {sweep_jobs.one_line(value)}" if isinstance(value, BaseException)
             else f"the job returned no summary (Hydra status {result.status.name})")
    return RunSummary("failed", job.name, config_key=job.config_key, values=job.values,
                      seed=job.run_config.seed, overrides=tuple(job.overrides), error=error)


def _reused(job: Job, run: Any) -> RunSummary:
    """A skipped job's row: the FINISHED run of the same config it reuses (from the skip query)."""
    m = run.data.metrics
    return RunSummary("skipped", job.name, run.info.run_id, job.config_key, m.get("final/test_acc"),
                      m.get("final/test_loss"), m.get("gradcheck/trained/max_rel_err"),
                      float(m.get("time/wall_s", 0.0)), overrides=tuple(job.overrides),
                      metrics={"bpl.status": run.data.tags.get("bpl.status", "finished")},
                      values=job.values, seed=job.run_config.seed)


def _all_runs(store: Store, flt: str) -> list[Any]:
    out, token = [], None
    while True:
        page = store.client.search_runs([store.experiment_id], filter_string=flt, max_results=1000,
                                        page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def _lost_artifacts(runs: list[Any]) -> list[tuple[str, str]]:
    """(run id, missing file) for each run whose `config/config.yaml` artifact is gone (what
    `make reproduce` needs). Local artifact stores only: on a server it costs a request per run."""
    from pathlib import Path
    from urllib.parse import urlparse
    from urllib.request import url2pathname

    out = []
    for run in runs:
        uri = run.info.artifact_uri or ""
        if uri.startswith("file:"):
            path = Path(url2pathname(urlparse(uri).path)) / "config" / "config.yaml"
            if not path.is_file():
                out.append((run.info.run_id, str(path)))
    return out


def _find_parent(store: Store, key: str) -> Any:
    flt = f"tags.`bpl.role` = 'parent' and tags.`{SWEEP_KEY_TAG}` = '{key}'"
    runs = store.client.search_runs([store.experiment_id], filter_string=flt, max_results=1,
                                    order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def _finished_runs(store: Store) -> dict[str, Any]:
    """config key -> its newest FINISHED run in the experiment: the jobs this sweep skips."""
    flt = "attributes.status = 'FINISHED' and tags.`bpl.role` != 'parent'"
    out: dict[str, Any] = {}
    for run in sorted(_all_runs(store, flt), key=lambda r: r.info.start_time):
        out[run.data.tags.get("bpl.config_key")] = run
    return out


def _finished_runs_read_only(rc: Any) -> dict[str, str]:
    """config key -> FINISHED run id, for a dry run: nothing is created (no store file, no folder,
    no experiment); a store that does not exist yet has no runs."""
    from backprop_lab.tracking import client as tracking

    uri, _ = tracking.resolve_tracking(rc)
    db = tracking.sqlite_path(uri)
    if db is not None and not db.is_file():
        return {}
    try:
        client = tracking.MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(rc.experiment_name)
        if experiment is None:
            return {}
        store = Store(client, uri, experiment.experiment_id)
        return {k: run.info.run_id for k, run in _finished_runs(store).items()}
    except Exception as exc:  # unreachable server, unreadable file: the listing still helps
        print(f"sweep (dry run): cannot read {uri} ({sweep_jobs.one_line(exc)}); skips unknown",
              file=sys.stderr, flush=True)
        return {}


def _create_parent(store: Store, preset: str, key: str, jobs: list[Job]) -> str:
    from backprop_lab.tracking import client as tracking

    labels = sweep_jobs.swept_labels(jobs)
    note = (f"Sweep `{preset}`: {len(jobs)} jobs over {', '.join(labels) or 'one config'}, one "
            "child run each; running. When it ends, this note holds the summary. Running the "
            "same command again resumes this sweep (finished configs are skipped); force=true "
            "starts a new one.")
    tags = {"bpl.role": "parent", "bpl.preset": preset, SWEEP_KEY_TAG: key,
            "mlflow.note.content": note, **tracking.environment_tags()}
    name = f"sweep:{preset} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    return store.client.create_run(store.experiment_id, run_name=name, tags=tags).info.run_id


def _end_running_children(store: Store, parent_id: str, status: str = "KILLED") -> int:
    """End the children of the parent still RUNNING (this sweep holds the experiment and no job
    of it is running, so no live job owns them: a crash, an interrupt or a failed store left them)."""
    flt = f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'"
    stale = _all_runs(store, flt)
    for run in stale:
        store.client.set_terminated(run.info.run_id, status=status)
    return len(stale)


def _end_anyway(held: lock.Held, store: Store, parent_id: str, status: str) -> str | None:
    """The sweep broke: free the disk reserve (the store may have filled it), then end the parent
    and its RUNNING children. None when that worked, else why not (one line)."""
    held.free_reserve()
    return _quietly_end(store, parent_id, status)


def _quietly_end(store: Store, parent_id: str, status: str) -> str | None:
    """End the parent and any RUNNING child, ignoring Ctrl-C meanwhile; errors are not raised
    (the store may be what broke) but returned as one line: re-running the command resumes and
    cleans up then."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if _main_thread() else None
    problem = None
    try:
        try:
            _end_running_children(store, parent_id, status)
        except Exception as exc:
            problem = sweep_jobs.one_line(exc)
        try:
            store.client.set_terminated(parent_id, status=status)
        except Exception as exc:
            problem = sweep_jobs.one_line(exc)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    return problem


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (a scheduler, `kill`) ends the sweep as Ctrl-C does: parent KILLED, one line."""
    if not _main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
