"""The sweep as its owner runs it (issue 12): up-front validation (each preset's jobs:
test_sweep_jobs.py), the parent the sweeper creates and hands to each job through the job's
config, the summary built from the jobs' return values, one line per run, names that tell configs
apart, and the dry run.

Fast tests compose the real presets, or run a real Hydra multirun in-process; the others read
the session's `tiny_sweep` (tests/conftest.py) or run the real command line into tmp_path.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import initialize_config_dir

from conftest import clean_env, sigint_state, train_command

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
ENV = clean_env()


def store_args(tmp_path: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"tracking.artifact_root={tmp_path / 'art'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}"]


def run_sweep(tmp_path: Path, *args: str, timeout: float = 600, env: dict | None = None
              ) -> subprocess.CompletedProcess:
    """The real command line of `make sweep`, into tmp_path."""
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", *args, *store_args(tmp_path)]
    return subprocess.run(cmd, cwd=tmp_path, env=env or ENV, capture_output=True, text=True,
                          timeout=timeout)


def client_for(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def runs_of(client, experiment: str, flt: str = ""):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing"
    return client.search_runs([exp.experiment_id], flt, max_results=1000)


def compose_sweep(*overrides: str):
    """The driver's view of `--multirun <overrides>`: jobs expanded and validated in-process."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from backprop_lab.sweep import jobs as sweep_jobs

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = GlobalHydra.instance().hydra.compose_config(
            "config", overrides=list(overrides), run_mode=RunMode.MULTIRUN)
        return sweep_jobs.plan_jobs(cfg, list(cfg.hydra.overrides.task), None)


# --------------------------------------------------------------------------- presets (fast)


def test_expansion_matches_basic_sweeper_order_and_command_line_wins():
    jobs = compose_sweep("+sweep=default", "model.width=3,5", "seed=0", "train.epochs=7")
    assert len(jobs) == len(compose_sweep("+sweep=default", "model.width=3", "seed=0")) * 2
    assert {j.run_config.model.width for j in jobs} == {3, 5}
    assert {j.run_config.train.epochs for j in jobs} == {7}
    # BasicSweeper crosses in key order, the last key varying fastest.
    assert [j.run_config.model.width for j in jobs[:4]] == [3, 5, 3, 5]


def test_run_names_carry_every_override_and_differ_when_configs_differ():
    """A user override (train.epochs) is in the name, so 200 and 1000 epochs never share one."""
    short, long = compose_sweep("optim.lr=0.1,0.2", "train.epochs=200"), compose_sweep("optim.lr=0.1,0.2")
    assert [j.name for j in short] == ["lr=0.1 epochs=200", "lr=0.2 epochs=200"]
    assert [j.name for j in long] == ["lr=0.1", "lr=0.2"]
    assert short[0].values == {"lr": 0.1, "epochs": 200}
    odd = compose_sweep("gradcheck.h=1e-5,1e-4", "data.n_samples=100", "optim=adam", "optim.beta1=0.8")
    # Unknown keys by their last part; the group choice by its short name.
    assert odd[0].name == "opt=adam beta1=0.8 h=1e-05 n_samples=100"
    assert len(odd[0].name) <= 45


def test_sweep_key_is_the_definition_not_the_force_flag_or_store():
    from backprop_lab.sweep.jobs import sweep_key

    base = compose_sweep("optim.lr=0.1,0.2", "train.epochs=5")
    forced = compose_sweep("optim.lr=0.1,0.2", "train.epochs=5", "force=true",
                           "tracking.uri=sqlite:////tmp/elsewhere.db")
    other = compose_sweep("optim.lr=0.1,0.3", "train.epochs=5")
    assert sweep_key("p", base) == sweep_key("p", forced) == sweep_key("p", list(reversed(base)))
    assert sweep_key("p", base) != sweep_key("p", other)
    assert sweep_key("p", base) != sweep_key("q", base)


@pytest.mark.parametrize("single, swept", [
    ("optim.lrr=0.1", "optim.lrr=0.1,0.2"),
    ("init=hee", "init=he,hee"),
    ("optim.lr=-1", "optim.lr=0.1,-1"),
    ("model.width=0", "model.width=4,0"),
    ("optim.lr=abc", "optim.lr=0.1,abc"),
    # issue 13: values that used to pass and then fail, hang or eat memory in every job
    ("optim.lr=inf", "optim.lr=0.1,inf"),
    ("model.depth=2000", "model.depth=2,2000"),
    ("gradcheck.h=1e-300", "gradcheck.h=1e-6,1e-300"),
    ("experiment_name=../../x", "experiment_name=a,../../x"),
])
def test_a_bad_sweep_gets_the_single_runs_line(single, swept):
    """One error path: the sweep's first bad job raises exactly the ConfigError a single run
    with that job's value raises (Hydra's composition errors included, with a suggestion)."""
    from backprop_lab.config.overrides import check_overrides
    from backprop_lab.config.schema import ConfigError, validate

    with pytest.raises(ConfigError) as in_sweep:
        compose_sweep("train.epochs=5", swept)
    try:
        check_overrides(str(CONF), ["train.epochs=5", single])
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            from hydra import compose

            validate(compose("config", overrides=["train.epochs=5", single]))
    except ConfigError as exc:
        alone = str(exc)
    else:
        pytest.fail(f"{single} passed as a single run")
    assert str(in_sweep.value) == alone and "\n" not in alone
    if single in ("optim.lrr=0.1", "init=hee"):
        assert re.search(r"did you mean (optim\.lr|he)\?", alone), alone


# --------------------------------------------------------------------------- in-process multirun


def test_parent_reaches_jobs_through_config_and_summary_comes_from_return_values(tmp_path, capsys):
    """A real Hydra multirun with the project's sweeper and Hydra's basic launcher, in-process; the
    task function returns made-up accuracies that exist nowhere else: the parent's summary can
    only have come from the return values. Each job read its parent from its own config."""
    import io

    from hydra.core.global_hydra import GlobalHydra
    from matplotlib.figure import Figure

    from backprop_lab.tracking.run import RunSummary

    png = io.BytesIO()
    Figure(figsize=(1, 1)).savefig(png, format="png")  # a stand-in decision boundary
    seen = []

    def task(cfg):
        seen.append(dict(cfg.sweep))
        k = len(seen)
        return RunSummary("finished", cfg.sweep.run_name, run_id=f"made-up-{k}", test_acc=0.5 + k / 100,
                          test_loss=1.0 / k, values={"lr": cfg.optim.lr, "width": cfg.model.width},
                          seed=cfg.seed, boundary_png=png.getvalue())

    overrides = ["optim.lr=0.1,0.2", "model.width=2,3", "train.epochs=5", "hydra/launcher=basic",
                 *store_args(tmp_path)]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        GlobalHydra.instance().hydra.multirun("config", task, overrides)
    out = capsys.readouterr().out

    client = client_for(tmp_path)
    [parent] = runs_of(client, "backprop-lab/train", "tags.`bpl.role` = 'parent'")
    assert parent.info.status == "FINISHED"
    assert [s["parent_run_id"] for s in seen] == [parent.info.run_id] * 4
    assert [(s["job"], s["n_jobs"]) for s in seen] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [s["run_name"] for s in seen] == ["lr=0.1 width=2 epochs=5", "lr=0.1 width=3 epochs=5",
                                             "lr=0.2 width=2 epochs=5", "lr=0.2 width=3 epochs=5"]
    # The best made-up job is the 4th (0.54): in the metrics, the tag, the note and the terminal.
    assert parent.data.metrics["sweep/best_test_acc"] == 0.54
    assert parent.data.tags["bpl.best_child_run_id"] == "made-up-4"
    assert "made-up-4" in parent.data.tags["mlflow.note.content"]
    assert "Best: lr=0.2 width=3, test acc 0.540 (n=1)" in out
    assert "sweep custom: 4 jobs: 4 finished, 0 diverged, 0 failed, 0 skipped" in out
    import pandas as pd

    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "sweep/children.csv", str(tmp_path)))
    assert list(table["run_id"]) == [f"made-up-{k}" for k in range(1, 5)]
    assert list(table["final/test_acc"]) == [0.51, 0.52, 0.53, 0.54]
    columns = {"lr", "width", "seed", "status", "final/test_acc", "final/test_loss", "run_id", "run_name"}
    assert columns <= set(table.columns)
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert files == {"sweep/children.csv", "sweep/summary.png", "sweep/gallery.png"}
    # No store lookups left: no sweep dir tag anywhere.
    assert "bpl.sweep_dir" not in parent.data.tags


def test_a_rerun_sweep_says_when_the_runs_it_skips_lost_their_artifacts(tmp_path, capsys):
    """A FINISHED run of one job's config whose artifacts were deleted: the sweep skips it (its
    metrics are in the store) and says, in one line, that its artifacts are gone."""
    from hydra.core.global_hydra import GlobalHydra

    from backprop_lab.tracking import client as tracking
    from backprop_lab.tracking.run import RunSummary

    swept = ["optim.lr=0.1,0.2", "train.epochs=5"]
    key = compose_sweep(*swept)[0].config_key
    client = tracking.prepare_store(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "art"))
    exp = tracking.ensure_experiment(client, "backprop-lab/train", str(tmp_path / "art"))
    old = client.create_run(exp, tags={"bpl.config_key": key, "bpl.role": "child"}).info.run_id
    client.set_terminated(old, "FINISHED")  # its artifacts never written (as if deleted)

    def task(cfg):
        return RunSummary("finished", cfg.sweep.run_name, run_id="made-up", test_acc=0.5, test_loss=1.0)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        GlobalHydra.instance().hydra.multirun("config", task, [*swept, "hydra/launcher=basic",
                                                               *store_args(tmp_path)])
    lines = capsys.readouterr().out.splitlines()
    [said] = [ln for ln in lines if "lost their artifacts" in ln]
    assert said.startswith("sweep custom: 1 of the finished runs it skips lost their artifacts (run "
                           f"{old}: ") and said.endswith("config/config.yaml is missing); they stay skipped, "
                                                         "force=true re-runs every job")
    assert "2 jobs, 1 already finished -> will be skipped" in lines[0]


# --------------------------------------------------------------------------- the session's tiny sweep


@pytest.mark.slow
def test_tiny_sweep_one_parent_every_child_linked_through_its_config(tiny_sweep):
    assert tiny_sweep.returncode == 0, tiny_sweep.stderr[-2000:]
    assert tiny_sweep.stderr == ""
    [parent] = tiny_sweep.runs("tags.`bpl.role` = 'parent'")
    children = tiny_sweep.runs("tags.`bpl.role` = 'child'")
    assert parent.info.status == "FINISHED" and len(children) == 8
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.info.status for c in children} == {"FINISHED"}
    assert sorted(c.data.tags["bpl.status"] for c in children) == ["diverged"] * 4 + ["finished"] * 4
    # The id travelled in each job's own config (Hydra records a job's overrides in its folder)...
    for n in range(8):
        recorded = (tiny_sweep.root / "multirun" / str(n) / ".hydra" / "overrides.yaml").read_text()
        assert f"++sweep.parent_run_id='{parent.info.run_id}'" in recorded
    # ... and is not a param of the run (nor part of its identity).
    assert not any(k.startswith("sweep.") and k != "sweep.preset" for c in children for k in c.data.params)
    names = [c.info.run_name for c in children]
    assert len(set(names)) == 8 and all(n.endswith("epochs=30 seed=0") or n.endswith("epochs=30 seed=1")
                                        for n in names), names
    tags = parent.data.tags
    assert tags["bpl.preset"] == "default" and len(tags["bpl.sweep_key"]) == 64
    assert "bpl.sweep_dir" not in tags
    assert parent.data.metrics["sweep/n_finished"] == 4 and parent.data.metrics["sweep/n_diverged"] == 4
    finished = [c for c in children if c.data.tags["bpl.status"] == "finished"]
    best = max(finished, key=lambda c: c.data.metrics["final/test_acc"])
    assert tags["bpl.best_child_run_id"] in {c.info.run_id for c in finished}
    assert parent.data.metrics["sweep/best_test_acc"] <= best.data.metrics["final/test_acc"]
    client = tiny_sweep.client()
    files = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/children.csv", "sweep/summary.png"} <= files
    assert not list(tiny_sweep.root.glob("*.lock")), "the sweep's lock file is deleted when it ends"


@pytest.mark.slow
def test_tiny_sweep_terminal_one_line_per_run_then_a_compact_summary(tiny_sweep):
    lines = tiny_sweep.stdout.splitlines()
    run_lines = [ln for ln in lines if re.match(r"\[\d/8\] ", ln)]
    # One line per run as it ends (in any order: the default launcher runs one job per core).
    assert sorted(ln[:5] for ln in run_lines) == [f"[{k}/8]" for k in range(1, 9)], tiny_sweep.stdout
    assert all(re.search(r"~\d+:\d\d left$", ln) for ln in run_lines), run_lines
    assert lines[0].startswith("sweep default: 8 jobs, 0 already finished -> will be skipped; new parent")
    end = lines.index(next(ln for ln in lines if ln.startswith("sweep default: 8 jobs: ")))
    assert "4 finished, 4 diverged, 0 failed, 0 skipped" in lines[end]
    summary = lines[end + 1:]
    assert len(summary) <= 15, summary  # compact: no row per run again
    assert any(" +- " in ln and "(n=2)" in ln for ln in summary)
    assert any(ln.startswith("Best: ") for ln in summary)


def sweep_in_process(*args: str) -> list:
    """`scripts/train.py --multirun <args>` in this process: Hydra's multirun with the project's
    sweeper and launcher and the entry point's own task function (`main` undecorated); returns
    the sweeper's RunSummary per job. For sweeps whose jobs need no worker of their own (a dry
    run, a rerun that skips everything, n_jobs=1); the real command line has its own tests."""
    import importlib.util

    from hydra.core.global_hydra import GlobalHydra

    spec = importlib.util.spec_from_file_location("bpl_train_script", REPO / "scripts" / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    overrides = [a for a in args if a != "--multirun"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return GlobalHydra.instance().hydra.multirun("config", script.main.__wrapped__, overrides)


@pytest.mark.slow
def test_rerun_that_skips_everything_says_so_in_one_line_and_dry_run_writes_nothing(tiny_sweep, capfd):
    """In-process (the command line's resume: test_reliability's SIGKILL test; its dry run:
    test_cli's `make sweep DRY=1`)."""
    db = tiny_sweep.root / "mlflow.db"
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    capfd.readouterr()
    sweep_in_process(*tiny_sweep.args, "hydra.sweeper.dry_run=true")
    out, err = capfd.readouterr()
    assert err == "", err
    assert out.count("skip (FINISHED as run ") == 8
    assert out.splitlines()[-1] == ("sweep default (dry run): 8 jobs, 8 would be skipped, "
                                    "0 would run; nothing was written")
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest

    assert [s.status for s in sweep_in_process(*tiny_sweep.args)] == ["skipped"] * 8
    out, err = capfd.readouterr()
    assert err == ""
    [line] = out.splitlines()
    assert line.startswith("sweep default: all 8 jobs already finished (parent run ")
    assert len(tiny_sweep.runs()) == 9


# --------------------------------------------------------------------------- real command lines


@pytest.mark.slow
def test_misspelt_key_in_a_sweep_one_line_exit_2_nothing_written(tmp_path):
    result = run_sweep(tmp_path, "+sweep=default", "optim.lrr=0.1,0.2")
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "invalid config: optim.lrr=0.1: unknown key (did you mean optim.lr?); valid keys here: name, lr "
        "(to add a new key use +optim.lrr=...)"]
    assert result.stdout == "" and list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_two_sweeps_on_one_store_at_once_one_is_refused(tmp_path):
    """Two real processes start the same sweep on one fresh SQLite store together: one runs it,
    the other is refused with one line (exit 2); no duplicate, no run without its parent."""
    args = ["--multirun", "+sweep=default", "init=he", "seed=0", "optim.lr=0.1,1.0", "model.width=4,8",
            "train.epochs=400"]
    procs = [subprocess.Popen(train_command(tmp_path, *args), cwd=tmp_path, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    done = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in done)
    assert codes == [0, 2], done
    refused = next(err for code, _, err in done if code == 2)
    assert len(refused.splitlines()) == 1 and "another sweep is writing into experiment" in refused
    client = client_for(tmp_path)
    [parent] = runs_of(client, "backprop-lab/default", "tags.`bpl.role` = 'parent'")
    children = runs_of(client, "backprop-lab/default", "tags.`bpl.role` = 'child'")
    assert len(children) == 4 and len({c.data.tags["bpl.config_key"] for c in children}) == 4
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}


def test_the_lease_lets_one_holder_in_at_a_time(tmp_path):
    """The tracking-server lock (an experiment tag with a heartbeat), on a real MLflow client:
    a second holder is refused while the first holds it, and two racing takers get one lease."""
    import threading

    from backprop_lab.sweep import lock
    from backprop_lab.tracking import client as tracking

    client = tracking.prepare_store(f"sqlite:///{tmp_path / 'm.db'}", str(tmp_path / "art"))
    exp_id = tracking.ensure_experiment(client, "leased", str(tmp_path / "art"))
    with lock._lease(client, exp_id, "leased"):
        assert client.get_experiment(exp_id).tags[lock.LEASE_TAG]
        with pytest.raises(lock.SweepBusy, match="another sweep is writing into experiment 'leased'"):
            with lock._lease(client, exp_id, "leased"):
                pass
    assert lock.LEASE_TAG not in client.get_experiment(exp_id).tags

    outcomes = []

    def take() -> None:
        try:
            with lock._lease(client, exp_id, "leased"):
                outcomes.append("held")
                barrier.wait(timeout=10)
        except lock.SweepBusy:
            outcomes.append("refused")
            barrier.wait(timeout=10)

    barrier = threading.Barrier(2)
    threads = [threading.Thread(target=take) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["held", "refused"]


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [(), ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")],
                         ids=["default-forked", "joblib2"])
def test_ctrl_c_ends_in_one_line_parent_killed_no_child_running(tmp_path, launcher):
    import signal
    import sqlite3
    import time

    args = ["--multirun", "init=he", "optim.lr=0.05,0.1,0.2", "model.width=16,24", "train.epochs=20000",
            *launcher]
    proc = subprocess.Popen(train_command(tmp_path, *args), cwd=tmp_path, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    db = tmp_path / "mlflow.db"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                    running = conn.execute(
                        "SELECT count(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid WHERE "
                        "t.key = 'bpl.role' AND t.value = 'child' AND r.status = 'RUNNING'").fetchone()[0]
            except sqlite3.Error:
                continue
            if running:
                break
        else:
            pytest.fail("no job started")
        time.sleep(1.0)
        state = sigint_state(proc.pid)  # said if the driver does not take it
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, f"{state} before Ctrl-C: {err[-3000:]}"
    assert err.splitlines() == ["interrupted: run the same command to resume"], err[-3000:]
    client = client_for(tmp_path)
    [parent] = runs_of(client, "backprop-lab/train", "tags.`bpl.role` = 'parent'")
    assert parent.info.status == "KILLED"
    statuses = [c.info.status for c in runs_of(client, "backprop-lab/train", "tags.`bpl.role` = 'child'")]
    assert statuses and "RUNNING" not in statuses and "KILLED" in statuses


def test_the_sqlite_lock_refuses_a_second_holder_and_frees_on_release(tmp_path):
    """The OS lock beside a SQLite store: a second holder is refused while the first holds it."""
    from backprop_lab.sweep import lock

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with lock.hold(None, uri, "7", "e"):
        with pytest.raises(lock.SweepBusy, match=r"another sweep is writing into experiment 'e' \(pid "):
            with lock.hold(None, uri, "7", "e"):
                pass
    with lock.hold(None, uri, "7", "e") as held:  # free again
        path = tmp_path / "mlflow.db.sweep-7.lock"
        # The file holds the disk reserve while the sweep runs; freeing it keeps the lock.
        assert path.stat().st_size > lock.RESERVE_BYTES
        assert held.free_reserve() is True and path.stat().st_size < 200
        with pytest.raises(lock.SweepBusy):
            with lock.hold(None, uri, "7", "e"):
                pass
    assert list(tmp_path.iterdir()) == [], "a sweep that ended leaves no lock file behind"


def test_the_sqlite_lock_retakes_a_file_its_holder_deleted_as_it_was_opened(tmp_path, monkeypatch):
    """The race of deleting the lock file: a sweep opens the file, its holder deletes it and lets
    go, the sweep locks the deleted file. It must notice and lock the file at the path, or two
    sweeps would hold 'the' lock at once."""
    from backprop_lab.sweep import lock

    path = tmp_path / "mlflow.db.sweep-7.lock"
    opened = []
    real_open = os.open

    def open_then_holder_lets_go(file, flags, mode=0o777):
        fd = real_open(file, flags, mode)
        opened.append(fd)
        if len(opened) == 1:
            os.unlink(file)  # the holder deleted it (and closed: nothing else holds a lock on it)
        return fd

    monkeypatch.setattr(lock.os, "open", open_then_holder_lets_go)
    with lock.hold(None, f"sqlite:///{tmp_path / 'mlflow.db'}", "7", "e"):
        assert len(opened) == 2, "the deleted file was locked and kept"
        assert path.exists() and os.path.samestat(os.fstat(opened[1]), os.stat(path))
        with pytest.raises(lock.SweepBusy):  # the file at the path is the one held
            with lock.hold(None, f"sqlite:///{tmp_path / 'mlflow.db'}", "7", "e"):
                pass
    assert not path.exists()


def test_no_room_for_the_reserve_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from backprop_lab.sweep import lock

    def full(fd, data, offset):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lock.os, "pwrite", full)
    with pytest.raises(lock.StoreFull) as err:
        with lock.hold(None, f"sqlite:///{tmp_path / 'mlflow.db'}", "7", "e"):
            pass
    assert "no room for the sweep's 1 MiB reserve" in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_the_summary_figure_is_drawn_in_a_forked_child_or_here_when_the_child_fails(tmp_path):
    # sweep.owner.finish draws the summary figure on the idle core: report.draw_aside.
    from matplotlib.figure import Figure

    from backprop_lab.sweep import report

    me = os.getpid()

    def figure(fail_in_child: bool):
        def make():
            if fail_in_child and os.getpid() != me:
                raise RuntimeError("child fails")
            (tmp_path / f"drawn-by-{os.getpid()}").touch()
            return Figure(figsize=(1, 1))
        return make

    report.draw_aside(figure(False), tmp_path / "a.png")()
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")
    [drawer] = [int(p.name.rsplit("-", 1)[1]) for p in tmp_path.glob("drawn-by-*")]
    assert drawer != me  # a child drew it
    for p in tmp_path.glob("drawn-by-*"):
        p.unlink()

    report.draw_aside(figure(True), tmp_path / "b.png")()  # the child failed: drawn here instead
    assert (tmp_path / "b.png").read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.glob("drawn-by-*")] == [f"drawn-by-{me}"]
    report.draw_aside(lambda: None, tmp_path / "c.png")()  # no figure (no finished run): no file
    assert not (tmp_path / "c.png").exists()
