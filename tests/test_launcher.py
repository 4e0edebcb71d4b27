"""The backprop_lab launcher: jobs on forked workers, in job order, failures contained, Ctrl-C clean.

Most tests drive the launcher in-process through a real Hydra context (composition, run_job) with
tiny task functions; the workers are real forked processes. One test uses a real command line: a
SIGINT sent to a real multirun. The project's sweep with n_jobs=1, 2 and joblib is bit-identical:
tests/test_reliability.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.utils import JobStatus
from hydra.types import HydraContext, RunMode

from backprop_lab import QUIET_ENV
from conftest import sigint_state
from hydra_plugins.backprop_lab_launcher.launcher import BackpropLabLauncher, WorkerDied

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, **QUIET_ENV, "PYTHONPATH": str(REPO / "src")}


@pytest.fixture
def launch(tmp_path):
    """launch(task, jobs, n_jobs) -> JobReturns, through a real Hydra context (empty app config)."""
    from hydra._internal.callbacks import Callbacks

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.yaml").write_text("x: 0\n")

    def run(task, jobs, n_jobs=2, before=None, **kwargs):
        GlobalHydra.instance().clear()
        with initialize_config_dir(str(tmp_path / "conf"), version_base="1.3"):
            overrides = [f"hydra.sweep.dir={tmp_path / 'multirun'}", "hydra/launcher=backprop_lab_fork"]
            cfg = GlobalHydra.instance().hydra.compose_config("app", overrides, run_mode=RunMode.MULTIRUN)
            loader = GlobalHydra.instance().config_loader()
            context = HydraContext(config_loader=loader, callbacks=Callbacks(cfg))
            launcher = BackpropLabLauncher(n_jobs=n_jobs, **kwargs)
            launcher.setup(hydra_context=context, task_function=task, config=cfg)
            if before is not None:  # before(launcher, cfg): what a sweeper does before launching
                before(launcher, cfg)
            return launcher.launch([[f"x={x}"] for x in jobs], initial_job_idx=0)

    yield run
    GlobalHydra.instance().clear()


def x_and_pid(cfg):
    return cfg.x, os.getpid()


def test_jobs_run_on_forked_workers_and_return_in_job_order(launch):
    rets = launch(x_and_pid, [5, 4, 3, 2, 1, 0], n_jobs=2)
    assert [r.status for r in rets] == [JobStatus.COMPLETED] * 6
    assert [r.return_value[0] for r in rets] == [5, 4, 3, 2, 1, 0]
    assert [r.overrides for r in rets] == [[f"x={x}"] for x in [5, 4, 3, 2, 1, 0]]
    assert [r.hydra_cfg.hydra.job.num for r in rets] == list(range(6))
    pids = [r.return_value[1] for r in rets]
    assert pids[0] == os.getpid()  # warm start: job 0 in the driver, before the fork
    assert len(set(pids[1:])) == 2 and os.getpid() not in pids[1:]


def test_without_warm_start_every_job_runs_in_a_worker(launch):
    pids = {r.return_value[1] for r in launch(x_and_pid, [1, 2, 3], n_jobs=2, warm_start=False)}
    assert len(pids) == 2 and os.getpid() not in pids


def test_one_job_or_n_jobs_1_runs_in_this_process(launch):
    assert {r.return_value[1] for r in launch(x_and_pid, [1, 2], n_jobs=1)} == {os.getpid()}
    assert launch(x_and_pid, [7], n_jobs=2)[0].return_value == (7, os.getpid())


def test_n_jobs_defaults_to_the_core_count_and_is_checked():
    assert BackpropLabLauncher().workers_for(100) == (os.cpu_count() or 1)
    assert BackpropLabLauncher(n_jobs=8).workers_for(3) == 3
    for bad in (0, -1, "2", 1.5, True):
        with pytest.raises(ValueError, match="hydra.launcher.n_jobs"):
            BackpropLabLauncher(n_jobs=bad)


def crash_on_2(cfg):
    if cfg.x == 2:
        os._exit(3)
    if cfg.x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return cfg.x


def test_a_dead_worker_fails_its_job_and_the_others_go_on(launch):
    rets = launch(crash_on_2, [0, 1, 2, 3, 4, 5], n_jobs=2)
    ok, failed = JobStatus.COMPLETED, JobStatus.FAILED
    assert [r.status for r in rets] == [ok, ok, failed, failed, ok, ok]
    assert [rets[i].return_value for i in (0, 1, 4, 5)] == [0, 1, 4, 5]
    # By name: Hydra's plugin scan executes the plugin's modules again (another class object).
    assert type(rets[2]._return_value).__name__ == WorkerDied.__name__
    assert "exit code 3" in str(rets[2]._return_value)
    assert "signal 9" in str(rets[3]._return_value) and "x=3" in str(rets[3]._return_value)


def raise_or_unpicklable(cfg):
    if cfg.x == 1:
        raise ValueError("bad x")
    return (lambda: None) if cfg.x == 2 else cfg.x


def test_errors_and_unpicklable_values_come_back_as_failed_jobs(launch):
    rets = launch(raise_or_unpicklable, [0, 1, 2], n_jobs=2)
    assert [r.status for r in rets] == [JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.FAILED]
    assert isinstance(rets[1]._return_value, ValueError) and str(rets[1]._return_value) == "bad x"
    assert "cannot be sent back from its worker" in str(rets[2]._return_value)


def test_a_job_hydra_cannot_set_up_fails_alone_without_a_traceback(launch, tmp_path, capfd):
    """Hydra's run_job raises before the task (its job folder cannot be made: a full disk, here a
    file where job 1's folder goes): that job is FAILED with the error, its worker lives on."""
    (tmp_path / "multirun").mkdir()
    (tmp_path / "multirun" / "1").write_text("not a folder")
    rets = launch(x_and_pid, [0, 1, 2, 3], n_jobs=2)
    assert [r.status for r in rets] == [JobStatus.COMPLETED, JobStatus.FAILED] + [JobStatus.COMPLETED] * 2
    assert type(rets[1]._return_value).__name__ == "FileExistsError"
    assert "Traceback" not in capfd.readouterr().err


def test_sqlite_store_from_forked_workers_uses_fresh_connections(launch, tmp_path):
    """The driver has a pooled SQLite connection (prepare_store memoises its client); each worker
    logs through the same memoised client, but on a pool of its own."""
    from backprop_lab.tracking import client as tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = tracking.prepare_store(uri, str(tmp_path / "art"))
    exp = tracking.ensure_experiment(client, "fork", str(tmp_path / "art"))
    driver_pool = id(client._tracking_client.store.engine.pool)  # private: only to observe the pool

    def log_one(cfg):
        worker_client = tracking.prepare_store(uri, str(tmp_path / "art"))
        run = worker_client.create_run(exp, run_name=f"x={cfg.x}")
        worker_client.log_metric(run.info.run_id, "x", float(cfg.x))
        worker_client.set_terminated(run.info.run_id)
        return worker_client is client, id(worker_client._tracking_client.store.engine.pool)

    rets = launch(log_one, list(range(6)), n_jobs=2, warm_start=False)
    assert all(r.status == JobStatus.COMPLETED for r in rets), [r._return_value for r in rets]
    assert all(r.return_value[0] for r in rets)  # the inherited client ...
    assert all(r.return_value[1] != driver_pool for r in rets)  # ... on a new pool
    runs = client.search_runs([exp])
    assert sorted(r.data.metrics["x"] for r in runs) == [float(x) for x in range(6)]
    assert all(r.info.status == "FINISHED" for r in runs)


APP = """
import os, sys, time, hydra
@hydra.main(version_base="1.3", config_path=None)
def main(cfg):
    marks = os.environ["MARKS"]
    try:  # the mark inside: the test's SIGINT may come as soon as it exists
        open(os.path.join(marks, f"started-{os.getpid()}"), "w").close()
        time.sleep(60)
    except KeyboardInterrupt:
        time.sleep(0.5)  # a clean-up that a second SIGINT must not cut short
        open(os.path.join(marks, f"cleaned-{os.getpid()}"), "w").close()
        raise
main()
"""


@pytest.mark.parametrize("to_group", [False, True], ids=["driver-only", "whole-group"])
def test_sigint_stops_every_worker_cleanly(tmp_path, to_group):
    (tmp_path / "app.py").write_text(textwrap.dedent(APP))
    marks = tmp_path / "marks"
    marks.mkdir()
    cmd = [sys.executable, str(tmp_path / "app.py"), "--multirun", "+x=1,2,3,4",
           "hydra/launcher=backprop_lab_fork", "hydra.launcher.n_jobs=2", "hydra.launcher.warm_start=false",
           f"hydra.sweep.dir={tmp_path / 'mr'}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**ENV, "MARKS": str(marks)}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(list(marks.glob("started-*"))) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        workers = [int(p.name.split("-")[1]) for p in marks.glob("started-*")]
        assert len(workers) == 2, proc.communicate()[1][-2000:] if proc.poll() is not None else "no workers"
        states = [sigint_state(pid) for pid in (proc.pid, *workers)]  # said if they do not end
        if to_group:  # what a terminal's Ctrl-C does
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the sweep did not end 30 s after SIGINT; before it: {'; '.join(states)}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert sorted(int(p.name.split("-")[1]) for p in marks.glob("cleaned-*")) == sorted(workers), err[-2000:]
    assert len(list(marks.glob("started-*"))) == 2  # no job started after Ctrl-C
    for pid in workers:
        assert not _alive(pid), f"worker {pid} outlived the driver"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def x_marked_pid(cfg):
    return cfg.x, cfg.get("marked", False), os.getpid()


def test_workers_compose_with_the_sweepers_composer_and_its_bases(launch):
    """use_composer: the sweeper's JobComposer, its base composed when it planned the jobs (and
    marked here). Every job's config comes from that base; composing a base again raises."""
    from omegaconf import open_dict

    from backprop_lab.sweep.jobs import JobComposer

    class NoMoreCompositions:
        def __getattr__(self, name):
            raise AssertionError(f"composed again ({name})")

    def share(launcher, cfg):
        composer = JobComposer(cfg)
        composer.compose(["x=9"])  # the plan
        for base in composer.bases.values():
            with open_dict(base):
                base.marked = True
        composer.loader = NoMoreCompositions()
        launcher.use_composer(composer)

    composer = "backprop_lab.sweep.jobs.JobComposer"
    rets = launch(x_marked_pid, [1, 2, 3], n_jobs=2, composer=composer, before=share)
    assert [r.return_value[:2] for r in rets] == [(1, True), (2, True), (3, True)]
    assert os.getpid() not in {r.return_value[2] for r in rets[1:]}  # jobs 1, 2: in forked workers
    unshared = launch(x_marked_pid, [1], n_jobs=2, before=share)  # composer: null (Hydra's): ignored
    assert unshared[0].return_value[:2] == (1, False)


def test_history_writer_thread_works_in_workers_forked_after_the_driver_used_it(launch):
    from backprop_lab.tracking import client as tracking

    assert tracking._history_pool().submit(os.getpid).result() == os.getpid()  # the driver's thread

    def submit(cfg):
        return tracking._history_pool().submit(lambda: cfg.x).result(timeout=20)

    rets = launch(submit, [1, 2], n_jobs=2)
    assert [r.return_value for r in rets] == [1, 2], [r._return_value for r in rets]


def test_lean_run_job_writes_and_returns_what_hydras_run_job_does(tmp_path):
    """job.run_job (one copy of the config) against Hydra's run_job (four) on the same job of the
    project's config: the task sees the same config and HydraConfig, the job folders hold the same
    bytes, the JobReturns are equal; hydra.job.chdir=true goes to Hydra's run_job."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job
    from omegaconf import OmegaConf, open_dict

    from hydra_plugins.backprop_lab_launcher import job as lean_job

    def task(cfg):
        return OmegaConf.to_yaml(cfg), OmegaConf.to_container(HydraConfig.get(), resolve=True)

    def one(run, where, extra=()):
        cfg = loader.load_sweep_config(base, ["optim.lr=0.3", "init=normal", "++sweep.job=1", *extra])
        with open_dict(cfg):
            cfg.hydra.sweep.dir, cfg.hydra.job.id, cfg.hydra.job.num = str(tmp_path / where), 3, 3
        ret = run(hydra_context=context, task_function=task, config=cfg, job_dir_key="hydra.sweep.dir",
                  job_subdir_key="hydra.sweep.subdir")
        assert HydraConfig.instance().cfg is previous  # restored
        text = repr((ret.return_value, ret.cfg, ret.hydra_cfg, ret.overrides, ret.working_dir, ret.task_name,
                     ret.cfg._metadata, ret.hydra_cfg._metadata, OmegaConf.to_yaml(ret.hydra_cfg)))
        files = {p.name: p.read_bytes() for p in (tmp_path / where / "3" / ".hydra").iterdir()}
        return ret, text.replace(str(tmp_path / where), "DIR"), files

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            base = GlobalHydra.instance().hydra.compose_config(
                "config", ["+sweep=default", f"tracking.artifact_root={tmp_path}"], run_mode=RunMode.MULTIRUN)
            loader = GlobalHydra.instance().config_loader()
            context = HydraContext(config_loader=loader, callbacks=Callbacks(base))
            HydraConfig.instance().set_config(base)
            previous = HydraConfig.instance().cfg
            assert lean_job.covered(loader.load_sweep_config(base, ["seed=1"]))  # the project's jobs
            theirs, their_text, their_files = one(run_job, "hydra")
            ours, our_text, our_files = one(lean_job.run_job, "lean")
            assert our_text == their_text and "  lr: 0.3\n" in ours.return_value[0]
            assert ours.hydra_cfg.hydra._get_parent() is ours.hydra_cfg  # a root of its own, as Hydra's copy
            assert set(our_files) == {"config.yaml", "hydra.yaml", "overrides.yaml"}
            assert {k: v.replace(str(tmp_path / "lean").encode(), b"DIR") for k, v in our_files.items()} == \
                {k: v.replace(str(tmp_path / "hydra").encode(), b"DIR") for k, v in their_files.items()}
            assert (tmp_path / "lean" / "3" / f"{ours.task_name}.log").is_file()  # the job's own log
            chdir = ["hydra.job.chdir=true"]
            moved = one(lean_job.run_job, "chdir", chdir)[0]
            assert not lean_job.covered(loader.load_sweep_config(base, chdir))
            job_dir = tmp_path / "chdir" / "3"
            assert moved.working_dir == str(job_dir) and Path.cwd() != job_dir  # Hydra's: cd, then back
    finally:
        GlobalHydra.instance().clear()


AWKWARD = ["", " lead", "trail ", "1", "1.5", "true", "null", "~", "a: b", "#c", "- d", "'q'", '"dq"',
           "${x}", "\\${escaped}", "???", "line\nbreak", "two\n\nbreaks\n", "tab\there", "\x85next",
           "\u2028sep", "caf\u00e9", "\U0001f600 outside the BMP", "{flow}", "[list]", "@at", "`tick`",
           "word " * 30, "x" * 130, "long, quoted: " + "y " * 60, "%pct", "!bang", "*star", "&amp",
           "end\n", "  indented\n  block\n", "\x00nul", "back\\slash"]


def test_yaml_of_a_config_emitted_by_entries_is_omegaconfs():
    """job.to_yaml (each top-level entry, or the hydra node's, emitted once per distinct value)
    gives OmegaConf.to_yaml's text, on awkward strings (quoting, folding, block scalars, escapes,
    characters outside the BMP) and values, from its cache too and with one entry changed."""
    from omegaconf import OmegaConf

    from hydra_plugins.backprop_lab_launcher import job as lean_job

    entries = {f"s{i}": text for i, text in enumerate(AWKWARD)}
    entries.update({"n": None, "i": 3, "f": 1e-08, "nan": float("nan"), "inf": float("-inf"), "b": False,
                    "empty_dict": {}, "empty_list": [], "nested": {"a": [1, {"b": AWKWARD[:8]}, []],
                                                                   "c": {"d": {"e": "word " * 30}}},
                    "list": [AWKWARD, {"k": "v"}, None], "'quoted key'": 1, "key with spaces": "v",
                    # mappings split into their entries (bare keys, to depth 3) and not (the rest)
                    "yes": {"a": 1}, "On": {"b": {"c": 2}}, "with space": {"d": [3]},
                    "deep": {"a": {"b": {"c": {"d": {"e": AWKWARD[3]}}}}, "x": {}}})
    lean_job._YAML_PARTS.clear()
    for shape in (entries, {"hydra": entries}):
        for changed in (None, None, "s5", "nested", "deep"):  # first, from the cache, one entry new
            if changed:
                shape_entries = shape.get("hydra", shape)
                shape_entries[changed] = f"changed {changed}"
            cfg = OmegaConf.create(shape)
            assert lean_job.to_yaml(cfg) == OmegaConf.to_yaml(cfg)
    assert lean_job._YAML_PARTS  # the entries were kept
    for whole in ({}, {"hydra": {}}, {"hydra": {"a": 1}, "task": 2}, ["a list"]):
        cfg = OmegaConf.create(whole)
        assert lean_job.to_yaml(cfg) == OmegaConf.to_yaml(cfg)
