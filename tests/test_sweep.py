"""Sweep level (issue 3): presets, up-front validation, parent run and children, the summary.

Fast tests compose the real presets in-process; the slow ones run the real command line
(`scripts/train.py --multirun`) into a SQLite store and a sweep dir under tmp_path.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PRESETS = ("default", "seeds", "datasets", "optimizers", "deep_init")
ENV = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
       "RAY_USAGE_STATS_ENABLED": "0"}


def store_args(tmp_path: Path) -> list[str]:
    return [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
            f"tracking.artifact_root={tmp_path / 'art'}",
            f"hydra.sweep.dir={tmp_path / 'multirun'}"]


def run_sweep(tmp_path: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real command line of `make sweep`, into tmp_path."""
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", *args, *store_args(tmp_path)]
    return subprocess.run(cmd, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=timeout)


def client_for(tmp_path: Path):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")


def runs_of(client, experiment: str, flt: str = ""):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing"
    return client.search_runs([exp.experiment_id], flt, max_results=1000)


def compose_sweep(*overrides: str):
    """The driver's view of `--multirun <overrides>`: jobs expanded and validated in-process."""
    from hydra.types import RunMode

    from backprop_lab.sweep import owner as sweep

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        from hydra.core.global_hydra import GlobalHydra

        cfg = GlobalHydra.instance().hydra.compose_config(
            "config", overrides=list(overrides), run_mode=RunMode.MULTIRUN)
        return sweep.compose_jobs(cfg, sweep.expand_jobs(cfg))


# --------------------------------------------------------------------------- presets (fast)


@pytest.mark.parametrize("preset", [pytest.param("default", marks=pytest.mark.slow), *PRESETS[1:]])
def test_every_preset_expands_and_validates(preset):
    jobs = compose_sweep(f"+sweep={preset}")
    rcs = [j.run_config for j in jobs]
    assert {rc.experiment_name for rc in rcs} == {f"backprop-lab/{preset}"}
    assert {(rc.sweep or {}).get("preset") for rc in rcs} == {preset}
    assert len({j.config_key for j in jobs}) == len(jobs), "two jobs compute the same thing"
    if preset == "default":
        assert len({rc.optim.lr for rc in rcs}) >= 3 and len({rc.model.width for rc in rcs}) >= 4
        assert len({rc.init.name for rc in rcs}) >= 3 and len(jobs) >= 36
    elif preset == "seeds":
        assert len({rc.seed for rc in rcs}) >= 5
    elif preset == "datasets":
        assert {rc.data.name for rc in rcs} == {"blobs", "moons", "circles", "xor", "spirals"}
    elif preset == "optimizers":
        assert {rc.optim.name for rc in rcs} == {"gd", "sgd", "momentum", "nesterov", "adam"}
    elif preset == "deep_init":
        # He et al. (2015, Fig. 3): depth 30, every scheme at the same lr, seeds for bands.
        assert all(len(rc.model.hidden_sizes) >= 30 and rc.model.activation == "relu" for rc in rcs)
        assert {rc.init.name for rc in rcs} >= {"he", "xavier", "lecun", "normal"}
        assert {rc.init.std for rc in rcs if rc.init.name == "normal"} == {0.01}
        assert len({rc.seed for rc in rcs}) >= 3 and {rc.sweep["per"] for rc in rcs} == {"init"}


def test_expansion_matches_basic_sweeper_order_and_command_line_wins():
    jobs = compose_sweep("+sweep=default", "model.width=3,5", "seed=0", "train.epochs=7")
    assert len(jobs) == 3 * 3 * 2  # the command line replaced the preset's widths
    assert {j.run_config.model.width for j in jobs} == {3, 5}
    assert {j.run_config.train.epochs for j in jobs} == {7}
    # BasicSweeper crosses in key order, the last key varying fastest.
    assert [j.run_config.model.width for j in jobs[:4]] == [3, 5, 3, 5]


def test_sweep_key_is_the_definition_not_the_force_flag_or_store():
    from backprop_lab.sweep.owner import sweep_key

    base = compose_sweep("optim.lr=0.1,0.2", "train.epochs=5")
    forced = compose_sweep("optim.lr=0.1,0.2", "train.epochs=5", "force=true",
                           "tracking.uri=sqlite:////tmp/elsewhere.db")
    other = compose_sweep("optim.lr=0.1,0.3", "train.epochs=5")
    assert sweep_key("p", base) == sweep_key("p", forced) == sweep_key("p", list(reversed(base)))
    assert sweep_key("p", base) != sweep_key("p", other)
    assert sweep_key("p", base) != sweep_key("q", base)


def test_bad_value_in_any_job_names_the_job_and_key():
    from backprop_lab.sweep.owner import SweepError

    with pytest.raises(SweepError, match=r"job 2 \(optim\.lr=-1 model\.width=2\): .*optim\.lr=-1: must be > 0"):
        compose_sweep("optim.lr=0.1,-1", "model.width=2,4")


# --------------------------------------------------------------------------- real command lines


@pytest.mark.parametrize("bad, expected", [
    ("model.width=4,0", "model.width=0: must be >= 1"),
    ("optim.lr=0.1,abc", "optim.lr=abc: must be a number"),
    ("optim.lrr=0.1,0.2", "optim.lrr"),
    ("init=he,nope", "init"),
])
def test_other_bad_values_are_caught_before_the_first_job(bad, expected):
    from backprop_lab.sweep.owner import SweepError

    with pytest.raises(SweepError) as info:
        compose_sweep("train.epochs=5", bad)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.slow
def test_bad_sweep_value_one_line_nonzero_nothing_written(tmp_path):
    result = run_sweep(tmp_path, "+sweep=default", "optim.lr=0.1,-1", "seed=0")
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0] == ("sweep: job 4 (init=he optim.lr=-1 model.width=2): "
                        "invalid config: optim.lr=-1: must be > 0")
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()
    assert not (tmp_path / "art").exists()


@pytest.mark.slow
def test_unknown_preset_nonzero_names_valid_presets_nothing_written(tmp_path):
    result = run_sweep(tmp_path, "+sweep=nope")
    assert result.returncode != 0
    # Hydra's own message today ("Could not find 'sweep/nope'" + options); one line once
    # scripts/train.py pre-checks the preset as it does single-run overrides.
    assert "nope" in result.stderr and all(p in result.stderr for p in PRESETS)
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "multirun").exists()


@pytest.mark.slow
def test_four_job_sweep_one_parent_four_children_summary(tmp_path):
    result = run_sweep(tmp_path, "+sweep=default", "init=he,xavier", "optim.lr=0.1,1.0",
                       "model.width=3", "seed=0", "train.epochs=15")
    assert result.returncode == 0, result.stderr[-2000:]
    header = [ln for ln in result.stdout.splitlines() if ln.startswith("sweep default: 4 jobs, 0 already")]
    assert header and "new parent" in header[0] and "mlflow.db" in header[0]
    assert "sweep default: 4 jobs: 4 finished, 0 diverged, 0 failed, 0 skipped; best " in result.stdout

    client = client_for(tmp_path)
    parents = runs_of(client, "backprop-lab/default", "tags.`bpl.role` = 'parent'")
    assert len(parents) == 1
    parent = parents[0]
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("sweep:default ")
    tags = parent.data.tags
    assert tags["bpl.preset"] == "default" and tags["bpl.sweep_dir"] == str(tmp_path / "multirun")
    assert "4 jobs" in tags["mlflow.note.content"] and len(tags["bpl.sweep_key"]) == 64
    assert parent.data.metrics["sweep/n_finished"] == 4 and parent.data.metrics["sweep/n_failed"] == 0

    children = runs_of(client, "backprop-lab/default",
                       f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    got = sorted((c.data.params["init.name"], c.data.params["optim.lr"], c.data.params["model.width"])
                 for c in children)
    assert got == sorted((i, lr, "3") for i in ("he", "xavier") for lr in ("0.1", "1.0"))
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags["bpl.role"] for c in children} == {"child"}
    best = max(children, key=lambda c: c.data.metrics["final/test_acc"])
    assert parent.data.metrics["sweep/best_test_acc"] == best.data.metrics["final/test_acc"]
    assert tags["bpl.best_child_run_id"] in {c.info.run_id for c in children}

    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/children.csv", "sweep/heatmap_he.png", "sweep/heatmap_xavier.png"}
    import pandas as pd

    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "sweep/children.csv", str(tmp_path)))
    assert len(table) == 4 and set(table["status"]) == {"finished"}
    assert set(table["run_id"]) == {c.info.run_id for c in children}
    assert {"init", "optim.lr", "final/test_acc", "gradcheck_max_rel_err", "seconds"} <= set(table.columns)


@pytest.mark.slow
def test_seeds_preset_prints_mean_and_std_per_setting(tmp_path):
    result = run_sweep(tmp_path, "+sweep=seeds", "model.width=2,4", "seed=0,1,2", "train.epochs=5")
    assert result.returncode == 0, result.stderr[-2000:]
    for width in (2, 4):
        line = next(ln for ln in result.stdout.splitlines() if ln.startswith(f"  model.width={width}:"))
        assert " +- " in line and line.endswith("over 3 seeds"), line
    client = client_for(tmp_path)
    parent = runs_of(client, "backprop-lab/seeds", "tags.`bpl.role` = 'parent'")[0]
    assert parent.data.tags["bpl.preset"] == "seeds"
    # Seeds are averaged in the heatmap cells: one figure, for the preset's one init scheme.
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")} == {
        "sweep/children.csv", "sweep/heatmap_he.png"}
