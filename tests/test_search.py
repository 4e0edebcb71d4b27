"""make search: an Optuna study whose trials' seeds are child runs of one parent (docs/search.md).

Real components: Hydra's compose API over conf/, a real SQLite MLflow store and Optuna storage in
tmp_path, real subprocesses for SIGKILL. Tiny: 60 epochs, 2 seeds, 6 trials.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from backprop_lab.core.data import load_dataset
from backprop_lab.core.mlp import MLP
from backprop_lab.core.optim import make_optimizer
from backprop_lab.core.rng import make_rng
from backprop_lab.core.train import train
from test_sweep import sweep_in_process

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
TRIALS = 6
TINY = ["train.epochs=60", "data.n_samples=120", "search.report_every=10",
        "search.pruner.warmup_epochs=10", "search.pruner.startup_trials=2", "search.seeds=[0,1]"]


# Two workers sharing one study: one seed per trial, short runs, no gradient check (the trials'
# runs are checked whole by test_trials_are_children_of_one_parent_and_some_are_pruned).
SHARED = ["train.epochs=20", "data.n_samples=120", "search.report_every=10", "search.pruner.warmup_epochs=10",
          "search.pruner.startup_trials=2", "search.seeds=[0]", "gradcheck.enabled=false"]


def _args(store: Path, trials: int = TRIALS, jobs: int = 1, tiny: list[str] = TINY) -> list[str]:
    return [f"TRIALS={trials}", f"JOBS={jobs}", f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
            f"tracking.artifact_root={store / 'art'}", *tiny]


def _search(store: Path, **kw) -> tuple[int, str]:
    from backprop_lab.search.owner import main

    out_path = store.parent / f"{store.name}.out"
    with open(out_path, "w") as out:
        code = main(_args(store, **kw), CONF, out=out)
    return code, out_path.read_text()


def _client(store: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{store / 'mlflow.db'}")


def _children(store: Path):
    client = _client(store)
    exp = client.get_experiment_by_name("backprop-lab/search-default")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("bpl.role") == "parent"]
    return parents, [r for r in runs if r.data.tags.get("bpl.role") != "parent"]


def _live_params(store: Path) -> list[dict]:
    """The params of the study's trials as the search counts them, in order."""
    import optuna

    from backprop_lab.search.study import live

    (name,) = optuna.get_all_study_names(f"sqlite:///{store / 'optuna.db'}")
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{store / 'optuna.db'}")
    return [(t.params, t.state.name) for t in live(study.get_trials())]


def _running_trial_and_run(store: Path) -> bool:
    """A trial RUNNING in the Optuna storage and, beside the parent, a run RUNNING in MLflow."""
    try:
        with sqlite3.connect(f"file:{store / 'optuna.db'}?mode=ro", uri=True, timeout=0.1) as con:
            trials = con.execute("select count(*) from trials where state='RUNNING'").fetchone()[0]
        with sqlite3.connect(f"file:{store / 'mlflow.db'}?mode=ro", uri=True, timeout=0.1) as con:
            runs = con.execute("select count(*) from runs where status='RUNNING'").fetchone()[0]
    except sqlite3.OperationalError:  # a store not created yet, or locked by a write in flight
        return False
    return trials == 1 and runs >= 2


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    store = tmp_path_factory.mktemp("search") / "store"
    code, text = _search(store)
    return store, code, text


# --------------------------------------------------------------------------- the core hook


def test_a_callback_returning_true_stops_training_where_it_asked():
    data = load_dataset("moons", rng=make_rng(0, "data"), dtype="float64", n_samples=80, noise=0.1,
                        test_fraction=0.25)
    model = MLP((2, 4, 1))
    params = model.init_params("he", make_rng(0, "init"))
    seen = []

    def stop_at_5(epoch, metrics):
        seen.append(epoch)
        return epoch == 4

    stopped = train(model, params, data, make_optimizer("gd", 0.1), epochs=50, rng=None,
                    callback=stop_at_5)
    assert (stopped.status, stopped.stopped_epoch, stopped.diverged_epoch) == ("stopped", 5, None)
    assert seen == [0, 1, 2, 3, 4] and list(stopped.history["epoch"]) == [0, 1, 2, 3, 4]
    assert stopped.final["final/epochs_run"] == 5.0
    # final/* at the parameters reached: those of a plain 5-epoch run
    five = train(model, params, data, make_optimizer("gd", 0.1), epochs=5, rng=None)
    assert five.status == "finished" and five.stopped_epoch is None
    assert stopped.final["final/test_loss"] == five.final["final/test_loss"]
    np.testing.assert_array_equal(stopped.params["W1"], five.params["W1"])
    # a callback returning None (a progress bar) never stops
    full = train(model, params, data, make_optimizer("gd", 0.1), epochs=8, rng=None,
                 callback=lambda e, m: None)
    assert full.status == "finished" and full.final["final/epochs_run"] == 8.0


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("args, expected", [
    (["SPACE=nope"], "search: invalid config: SPACE=nope: no such search space; valid: default"),
    (["TRIALS=0"], "search: invalid config: search.trials=0: must be >= 1"),
    (["search.params.lr.low=2.0"], "search: invalid config: search.params.lr: empty range: low=2.0"),
    (["search.params.init=[]"], "search: invalid config: search.params.init=[]: empty list of choices"),
    (["+search.params.widht={low:2,high:4}"], "search: invalid config: widht=2: unknown key"),
])
def test_bad_input_ends_in_one_line_exit_2_and_writes_nothing(tmp_path, capsys, args, expected):
    from backprop_lab.search.owner import main

    store = tmp_path / "store"
    code = main([*args, f"tracking.uri=sqlite:///{store / 'mlflow.db'}"], CONF)
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith(expected), err
    assert not store.exists() and list(tmp_path.iterdir()) == []


def test_the_entry_point_exits_2(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/search.py", "TRIALS=0",
                           f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- a tiny search


@pytest.mark.slow
def test_trials_are_children_of_one_parent_and_some_are_pruned(searched):
    store, code, text = searched
    assert code == 0, text
    assert f"[{TRIALS}/{TRIALS}]" in text
    parents, children = _children(store)
    assert len(parents) == 1
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert all(c.info.status == "FINISHED" for c in children)
    trials = {c.data.tags["bpl.trial"] for c in children}
    assert len(trials) == TRIALS
    pruned = [c for c in children if c.data.tags["bpl.status"] == "pruned"]
    assert pruned, "no trial was pruned"
    for run in pruned:  # stopped where the pruner said, before the last epoch
        epoch = int(run.data.tags["bpl.pruned_epoch"])
        assert epoch == run.data.metrics["final/epochs_run"] < 60
    # a trial's runs are logged like a sweep job's: params, metrics, gradient check, figures
    done = next(c for c in children if c.data.tags["bpl.status"] == "finished")
    assert done.data.params["optim.lr"] and done.data.params["seed"] in ("0", "1")
    assert "gradcheck/trained/max_rel_err" in done.data.metrics
    arts = {a.path for a in _client(store).list_artifacts(done.info.run_id, "plots")}
    assert "plots/decision_boundary.png" in arts
    # the parent answers at a glance
    p = _client(store).get_run(parent.info.run_id)
    note = p.data.tags["mlflow.note.content"]
    best = p.data.tags["bpl.best_trial"]
    assert f"**Best: trial {best}**" in note and f"runs/{p.data.tags['bpl.best_child_run_id']})" in note
    n_pruned = len({c.data.tags["bpl.trial"] for c in pruned})
    assert p.data.metrics["search/n_pruned"] == n_pruned and f"{n_pruned} pruned" in note
    assert p.data.metrics["search/epochs_saved"] > 0 and "saved" in note
    figures = {a.path for a in _client(store).list_artifacts(p.info.run_id, "search")}
    assert {"search/optimization_history.png", "search/parallel_coordinate.png",
            "search/param_importances.png", "search/trials.csv"} <= figures
    assert p.info.status == "FINISHED"


@pytest.mark.slow
def test_sigkill_mid_search_then_the_same_command_finishes_with_no_duplicate_run(searched, tmp_path):
    store_a = searched[0]
    store = tmp_path / "store"
    cmd = [sys.executable, "scripts/search.py", *_args(store)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # wait for two trials to end
            if line.startswith("[2/"):
                break
        # Freeze the search (SIGSTOP), look at both stores, and kill it only while a trial is
        # RUNNING in the study and one of its seeds' runs in MLflow; else let it go on and look
        # again. A kill timed by a sleep raced with short (pruned) trials on a busy machine.
        deadline = time.time() + 60
        while time.time() < deadline:
            os.kill(proc.pid, signal.SIGSTOP)
            if _running_trial_and_run(store):
                os.kill(proc.pid, signal.SIGKILL)
                break
            os.kill(proc.pid, signal.SIGCONT)
            time.sleep(0.02)
        else:
            pytest.fail("no trial was seen running within 60 s")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    # The same command again: its main() in-process (the killed one was the real entry point).
    code, text = _search(store)
    assert code == 0, text
    assert "1 trial(s) left RUNNING by a killed search re-asked" in text
    parents, children = _children(store)
    assert len(parents) == 1  # the same parent, resumed
    assert all(c.info.status == "FINISHED" for c in children)
    per_trial_seed = [(c.data.tags["bpl.trial"], c.data.params["seed"]) for c in children]
    assert len(per_trial_seed) == len(set(per_trial_seed)), "a trial logged a seed twice"
    configs = [(c.data.tags["bpl.config_key"]) for c in children]
    assert len(configs) == len(set(configs)), "a configuration was trained twice"
    # and the same command gave the same trials as the uninterrupted search (seeded TPE)
    assert _live_params(store) == _live_params(store_a)


@pytest.mark.slow
def test_two_workers_share_one_study(tmp_path):
    store = tmp_path / "store"
    code, text = _search(store, trials=4, jobs=2, tiny=SHARED)
    assert code == 0, text
    assert "4 trials (0 done), 1 seed(s) each, 2 worker(s)" in text
    parents, children = _children(store)
    assert len(parents) == 1 and len(_live_params(store)) == 4
    assert len({c.data.tags["bpl.trial"] for c in children}) == 4 and len(children) == 4
    keys = [(c.data.tags["bpl.trial"], c.data.params["seed"]) for c in children]
    assert len(keys) == len(set(keys))


def test_a_pruned_run_is_never_reused_as_a_finished_config(tmp_path):
    from backprop_lab.tracking import client as tracking

    client = tracking.prepare_store(f"sqlite:///{tmp_path / 'mlflow.db'}", str(tmp_path / "art"))
    exp = tracking.ensure_experiment(client, "reuse", str(tmp_path / "art"))
    for status in ("pruned", "stopped"):
        run = client.create_run(exp, tags={"bpl.config_key": "k", "bpl.role": "child", "bpl.status": status})
        client.set_terminated(run.info.run_id, "FINISHED")
    assert tracking.find_finished_run(client, exp, "k") is None
    done = client.create_run(exp, tags={"bpl.config_key": "k", "bpl.role": "child", "bpl.status": "finished"})
    client.set_terminated(done.info.run_id, "FINISHED")
    assert tracking.find_finished_run(client, exp, "k").info.run_id == done.info.run_id


# --------------------------------------------------------------------------- notebook 04


def _notebook_text(nb) -> str:
    return "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "")
                   for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.mark.slow
def test_notebook_04_says_what_is_missing_then_compares_search_and_grid(searched):
    import run_notebooks

    store = searched[0]
    env = {"BPL_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
    path = REPO / "notebooks" / "04-search-vs-grid.ipynb"
    nb = run_notebooks.execute(path, env, timeout=300)  # no grid yet: runs through, names the command
    text = _notebook_text(nb)
    assert "No grid" in text and "`make sweep`" in text and f"{TRIALS} trials" in text
    assert run_notebooks.count_figures(nb) == 1  # the search's curve alone
    # a tiny grid in the same store (2 widths x 2 seeds at one lr and init), then both are compared
    # (scripts/train.py's multirun in this process, one job at a time)
    outcome = sweep_in_process(
        "+sweep=default", "init=he", "optim.lr=1.0", "model.width=2,8", "seed=0,1", "train.epochs=60",
        "data.n_samples=120", "hydra.launcher.n_jobs=1", f"tracking.uri=sqlite:///{store / 'mlflow.db'}",
        f"tracking.artifact_root={store / 'art'}", f"hydra.sweep.dir={store.parent / 'multirun'}")
    assert [r.status for r in outcome] == ["finished"] * 4, outcome
    nb = run_notebooks.execute(path, env, timeout=300)
    text = _notebook_text(nb)
    assert "grid: 4 runs, 2 configurations" in text
    assert "against the grid's **2 configurations** (4 runs)" in text
    assert ("came within one std" in text) or ("did not reach" in text)
    assert run_notebooks.count_figures(nb) == 1


def test_reask_stale_repeats_killed_and_failed_trials_but_not_diverged_ones():
    import optuna
    from optuna.trial import TrialState

    from backprop_lab.search.study import DIVERGED_ATTR, RETRY_ATTR, counted, reask_stale

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    for x in (0.1, 0.2, 0.3, 0.4):
        study.enqueue_trial({"x": x})
    trials = [study.ask() for _ in range(4)]
    for t in trials:
        t.suggest_float("x", 0.0, 1.0)
    study.tell(trials[0], 0.9)  # complete
    study.tell(trials[1], state=TrialState.FAIL)  # an error: repeated
    trials[2].set_user_attr(DIVERGED_ATTR, 2)
    study.tell(trials[2], state=TrialState.FAIL)  # diverged on every seed: a result, kept
    # trials[3] stays RUNNING: its search was killed
    assert reask_stale(study) == (1, 1)
    assert counted(study.get_trials()) == 2  # the complete and the diverged trial
    repeats = [study.ask() for _ in range(2)]  # asked first, with the same params
    assert sorted((t.suggest_float("x", 0.0, 1.0), t.user_attrs[RETRY_ATTR]) for t in repeats) == \
        [(0.2, [1]), (0.4, [3])]
    for t in repeats:
        study.tell(t, 0.5)
    assert reask_stale(study) == (0, 0)  # repeated once, not again
    assert counted(study.get_trials()) == 4
