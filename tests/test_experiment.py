"""experiment.run without the Hydra CLI: a real run into a temporary SQLite store, read back."""

import json
import re
import time

import numpy as np
import pytest
import yaml
from hydra import compose, initialize
from mlflow import MlflowClient

from backprop_lab.config import names
from backprop_lab.config import schema as C
from backprop_lab.tracking import run as experiment
from backprop_lab.tracking.run import JobContext, SweepJob

EPOCHS = 12
ARTIFACTS = {"plots/decision_boundary.png", "plots/curves.png", "plots/data.png", "config/config.yaml",
             "config/overrides.yaml", "history.npz", "params.npz", "gradcheck.json"}
TAGS = ("bpl.status", "bpl.config_key", "bpl.role", "bpl.preset", "bpl.git_commit", "bpl.git_dirty",
        "bpl.python", "bpl.numpy", "bpl.mlflow")


@pytest.fixture(scope="module")
def hydra_ctx():
    with initialize(config_path="../conf", version_base="1.3"):
        yield


@pytest.fixture()
def make_cfg(tmp_path, hydra_ctx):
    def make(*overrides):
        store = [f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                 f"tracking.artifact_root={tmp_path / 'art'}"]
        return compose("config", overrides=[*store, f"train.epochs={EPOCHS}", *overrides])
    return make


def _image_steps(paths, key="decision_boundary"):
    """Steps of MLflow's log_image files (images/<key>+step+<step>+timestamp+...png)."""
    return sorted(int(m.group(1)) for p in paths
                  if (m := re.fullmatch(rf"images/{key}\+step\+(\d+)\+timestamp\+\d+\+[-0-9a-f]+\.png", p)))


def _artifacts(client, run_id, path=None):
    out = []
    for f in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, f.path) if f.is_dir else [f.path]
    return out


@pytest.mark.slow
def test_single_run_logs_every_contracted_name(make_cfg, tmp_path, capsys):
    overrides = ("optim.lr=0.5", "model.width=4")
    summary = experiment.run(make_cfg(*overrides), JobContext(overrides=overrides))
    assert summary.status == "finished" and summary.run_name == "lr=0.5 width=4"
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "lr=0.5 width=4" in line and "finished" in line and "test_acc=" in line

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "lr=0.5 width=4"
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.name == "backprop-lab/train" and exp.artifact_location.startswith((tmp_path / "art").as_uri())

    rc = C.validate(make_cfg(*overrides))
    assert run.data.params == C.flatten(rc)  # every param, exactly

    from backprop_lab.core.mlp import MLP
    from backprop_lab.core.train import metric_names

    per_epoch = metric_names(MLP(rc.model.layer_sizes(2), rc.model.activation))
    assert {"train/loss", "test/acc", "grad_norm/W1", "update_ratio/W2", "dead_relu/layer1"} <= set(per_epoch)
    for key in per_epoch:
        history = client.get_metric_history(summary.run_id, key)
        assert sorted(m.step for m in history) == list(range(EPOCHS)), key
    metrics = run.data.metrics
    for key in ("final/train_loss", "final/train_acc", "final/test_loss", "final/test_acc",
                "final/epochs_run", "time/train_s", "time/gradcheck_s", "time/total_s", "time/wall_s"):
        assert key in metrics, key
    assert metrics["final/epochs_run"] == EPOCHS
    for when in ("init", "trained"):
        assert metrics[f"gradcheck/{when}/max_rel_err"] < 1e-6
        assert f"gradcheck/{when}/kink_skipped" in metrics
        for p in ("W1", "b1", "W2", "b2"):
            assert f"gradcheck/{when}/{p}/max_rel_err" in metrics
            assert f"gradcheck/{when}/{p}/median_rel_err" in metrics

    tags = run.data.tags
    for key in TAGS:
        assert key in tags, key
    assert (tags["bpl.status"], tags["bpl.role"]) == ("finished", "single")
    assert tags["bpl.config_key"] == C.config_key(rc) == summary.config_key
    assert "mlflow.parentRunId" not in tags

    listed = _artifacts(client, summary.run_id)
    assert {a for a in listed if not a.startswith("images/")} == ARTIFACTS
    assert _image_steps(listed) == [0, 10, EPOCHS]  # log_image: snapshot_schedule(12) + the end
    [ds] = run.inputs.dataset_inputs
    assert ds.dataset.name == "blobs-train" and len(ds.dataset.digest) >= 8
    assert any(t.key == "mlflow.data.context" and t.value == "train" for t in ds.tags)

    # Artifacts: exact history, reloadable params and config, gradcheck report.
    local = client.download_artifacts(summary.run_id, "", str(tmp_path / "dl"))
    with np.load(f"{local}/history.npz") as stored:
        history = {k: stored[k] for k in stored.files}
    assert set(history) == set(per_epoch) | {"epoch"} and list(history["epoch"]) == list(range(EPOCHS))
    assert history["train/loss"][-1] == pytest.approx(
        client.get_metric_history(summary.run_id, "train/loss")[-1].value, rel=1e-5)
    assert set(np.load(f"{local}/params.npz").files) == {"W1", "b1", "W2", "b2"}
    assert C.validate(yaml.safe_load(open(f"{local}/config/config.yaml"))) == rc
    assert yaml.safe_load(open(f"{local}/config/overrides.yaml")) == list(overrides)
    report = json.load(open(f"{local}/gradcheck.json"))
    assert report["init"]["passed"] and report["trained"]["mode"] == "full"


@pytest.mark.slow
def test_same_config_is_skipped_unless_forced(make_cfg, tmp_path, capsys):
    first = experiment.run(make_cfg())
    again = experiment.run(make_cfg())
    assert again.status == "skipped" and again.run_id == first.run_id
    assert "skipped" in capsys.readouterr().out.splitlines()[-1]
    forced = experiment.run(make_cfg("force=true"))
    assert forced.status == "finished" and forced.run_id != first.run_id
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("backprop-lab/train").experiment_id])
    assert len(runs) == 2


def test_invalid_config_writes_nothing(make_cfg, tmp_path):
    with pytest.raises(C.ConfigError, match=r"optim\.lr=-1: must be > 0"):
        experiment.run(make_cfg("optim.lr=-1"))
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "art").exists()


def test_multirun_mode_returns_failed_summary_instead_of_raising(make_cfg, tmp_path):
    summary = experiment.run(make_cfg("model.width=0"), JobContext(mode="multirun"))
    assert summary.status == "failed" and "model.width=0" in summary.error
    assert not (tmp_path / "mlflow.db").exists()


def test_diverged_run_is_finished_with_status_and_epoch(make_cfg, tmp_path):
    summary = experiment.run(make_cfg("optim.lr=10000", "train.epochs=60"))
    assert summary.status == "diverged"
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary.run_id)
    assert run.info.status == "FINISHED" and run.data.tags["bpl.status"] == "diverged"
    epoch = int(run.data.tags["bpl.diverged_epoch"])
    assert 0 < epoch < 60
    history = client.get_metric_history(summary.run_id, "train/loss")
    assert len(history) == epoch and all(np.isfinite(m.value) for m in history)


def test_sweep_job_reads_parent_and_name_from_its_config_not_as_params(make_cfg, tmp_path, capsys):
    from backprop_lab.tracking import client as tracking

    rc = C.validate(make_cfg())
    uri, art = tracking.resolve_tracking(rc)
    client = tracking.prepare_store(uri, art)
    exp_id = tracking.ensure_experiment(client, rc.experiment_name, art)
    parent = client.create_run(exp_id, tags={"bpl.role": "parent"})
    sweep = SweepJob(parent.info.run_id, "lr=0.3 init=xavier", 2, 5, 0.0)
    overrides = ("init=xavier", "optim.lr=0.3", "+sweep=default")
    summary = experiment.run(make_cfg(*overrides, *sweep.overrides()), JobContext("multirun", overrides))
    run = client.get_run(summary.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert (run.data.tags["bpl.role"], run.data.tags["bpl.preset"]) == ("child", "default")
    assert run.info.run_name == summary.run_name == "lr=0.3 init=xavier"
    assert {k for k in run.data.params if k.startswith("sweep.")} == {"sweep.preset"}
    assert summary.values == {"lr": 0.3, "init": "xavier"} and summary.seed == 0
    assert capsys.readouterr().out.startswith("[2/5] lr=0.3 init=xavier")


def test_a_job_logs_the_compute_its_sweep_did_ahead_and_computes_itself_without_it(make_cfg, tmp_path):
    """sweep.computed names a file of tracking.record.save_computed: the job logs that compute (its
    time/train_s is the file's), the same params and history as computing itself; a file of
    another config, a truncated one or none: the job computes (its own time/train_s)."""
    from backprop_lab.tracking import client as tracking
    from backprop_lab.tracking import record

    overrides = ("init=xavier", "optim.lr=0.3", "+sweep=default")
    rc = C.validate(make_cfg(*overrides))
    key = C.config_key(rc)
    uri, art = tracking.resolve_tracking(rc)
    client = tracking.prepare_store(uri, art)
    parent = client.create_run(tracking.ensure_experiment(client, rc.experiment_name, art), tags={})
    computed = record.compute_ahead(rc)
    computed.outcome.scalars["time/train_s"] = 1234.5  # which compute the run logged
    record.save_computed(tmp_path / "ahead.pkl", key, computed)
    record.save_computed(tmp_path / "other.pkl", "another-config-key", computed)
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "ahead.pkl").read_bytes()[:100])
    logged = {}
    for k, name in enumerate(("ahead.pkl", "other.pkl", "cut.pkl", "missing.pkl")):
        sweep = SweepJob(parent.info.run_id, f"job {k}", k + 1, 4, 0.0, str(tmp_path / name))
        summary = experiment.run(make_cfg(*overrides, "force=true", *sweep.overrides()),
                                 JobContext("multirun", overrides))
        assert summary.status == "finished", summary.error
        run = client.get_run(summary.run_id)
        assert "sweep.computed" not in run.data.params and run.data.tags["bpl.config_key"] == key
        params = client.download_artifacts(summary.run_id, "params.npz", str(tmp_path / name[:-4]))
        with np.load(params) as stored:
            weights = {p: stored[p] for p in stored.files}
        history = [(m.step, m.value) for m in client.get_metric_history(summary.run_id, "train/loss")]
        logged[name] = (run.data.metrics["time/train_s"], weights, history)
    assert logged["ahead.pkl"][0] == 1234.5 and not (tmp_path / "ahead.pkl").exists()  # read once
    assert all(logged[name][0] != 1234.5 for name in ("other.pkl", "cut.pkl", "missing.pkl"))
    for name in ("other.pkl", "cut.pkl", "missing.pkl"):
        assert logged[name][2] == logged["ahead.pkl"][2] and len(logged[name][2]) == EPOCHS
        assert all(np.array_equal(logged[name][1][p], w) for p, w in logged["ahead.pkl"][1].items())


def test_store_failing_in_create_run_is_one_failed_job(make_cfg, tmp_path, monkeypatch, capsys):
    """A full disk (or any store error) while creating the run: the job ends failed with one line,
    whichever way the run is created (MLflow's create_run, or the SQL path that refuses to fall
    back to it when the store failed)."""
    import sqlite3

    import sqlalchemy.exc

    from backprop_lab.tracking import client as tracking

    def full_disk(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    def sqlite_full(*args, **kwargs):
        full = sqlite3.OperationalError("database or disk is full")  # SQLite's SQLITE_FULL text
        raise sqlalchemy.exc.OperationalError("INSERT", (), full)

    monkeypatch.setattr(tracking, "_insert_run", sqlite_full)
    summary = experiment.run(make_cfg(), JobContext(mode="multirun"))
    assert summary.status == "failed" and summary.error.startswith("tracking store: ")
    assert "disk is full" in summary.error and summary.run_id is None
    capsys.readouterr()
    monkeypatch.setattr(tracking, "_insert_run", lambda *args: None)  # MLflow's create_run's turn
    monkeypatch.setattr(MlflowClient, "create_run", full_disk)
    summary = experiment.run(make_cfg(), JobContext(mode="multirun"))
    assert (summary.status, summary.error) == ("failed", "tracking store: [Errno 28] No space left on device")
    assert summary.run_id is None
    [line] = capsys.readouterr().out.splitlines()
    assert line.endswith("(tracking store: [Errno 28] No space left on device)")
    with pytest.raises(C.UserError, match="tracking store: .*No space left"):
        experiment.run(make_cfg())  # a single run: the entry point prints it as one line


def test_crash_after_start_ends_run_failed_with_traceback(make_cfg, tmp_path, monkeypatch):
    # Fault injection (the store, MLflow and the run are real): the curves figure raises while
    # the history is being written on the background thread.
    from backprop_lab.figures import render

    def broken(history):
        raise RuntimeError("figure exploded")

    monkeypatch.setattr(render, "curves_png", broken)
    summary = experiment.run(make_cfg(), JobContext(mode="multirun"))
    assert summary.status == "failed" and "figure exploded" in summary.error
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run(summary.run_id)
    assert run.info.status == "FAILED" and run.data.tags["bpl.status"] == "failed"
    text = open(client.download_artifacts(summary.run_id, "error/traceback.txt", str(tmp_path))).read()
    assert "figure exploded" in text


@pytest.mark.parametrize("overrides,name", [
    ((), "defaults"),
    (("model.width=16", "optim.lr=0.1", "init=he"), "lr=0.1 width=16 init=he"),
    (("+sweep=default", "seed=3", "optim=adam", "model.activation=tanh", "hydra.verbose=true"),
     "opt=adam act=tanh seed=3"),
    (("data=moons", "train.epochs=5", "tracking.uri=sqlite:///x.db", "experiment_name=x"),
     "data=moons epochs=5"),
    (("gradcheck.h=1e-5", "data.n_samples=10", "gradcheck.n_samples=3"),
     "data.n_samples=10 gradcheck.n_samples=3 h=1e-5"),
])
def test_run_names_use_short_names_and_carry_every_override(overrides, name):
    assert names.run_name(overrides) == name


def test_blas_threads_limit_the_run_and_are_not_part_of_its_identity(make_cfg):
    from threadpoolctl import threadpool_info

    from backprop_lab.config.schema import config_key, validate

    before = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    with experiment.blas_threads(1):
        assert {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"} == {1}
    assert [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"] == before
    one, default = validate(make_cfg("blas_threads=1")), validate(make_cfg("blas_threads=null"))
    assert (one.blas_threads, default.blas_threads) == (1, None)
    assert config_key(one) == config_key(default)


# --------------------------------------------------------------------------- what a run records


def _recorded_run(make_cfg, *overrides):
    """record.train_and_log on a run created as run.run creates it: (client, run_id, Recorded)."""
    from backprop_lab.tracking import client as tracking
    from backprop_lab.tracking import record

    rc = C.validate(make_cfg(*overrides))
    uri, art = tracking.resolve_tracking(rc)
    client = tracking.prepare_store(uri, art)
    info = client.create_run(tracking.ensure_experiment(client, rc.experiment_name, art)).info
    return client, info.run_id, record.train_and_log(client, info, rc, overrides, time.perf_counter())


def test_boundary_images_form_over_log_spaced_steps_and_the_trained_one_is_returned(make_cfg, tmp_path):
    from PIL import Image

    client, run_id, recorded = _recorded_run(make_cfg, "train.epochs=120")
    assert recorded.status == "finished"
    listed = _artifacts(client, run_id)
    assert _image_steps(listed) == [0, 10, 100, 120]  # MLflow's image grid: one step per snapshot
    assert sum(p.endswith("+compressed.webp") for p in listed) == 4  # the grid's thumbnails
    assert client.get_run(run_id).data.tags["mlflow.loggedImages"].lower() == "true"
    local = client.download_artifacts(run_id, "", str(tmp_path / "dl"))
    assert recorded.boundary_png == open(f"{local}/plots/decision_boundary.png", "rb").read()
    assert recorded.boundary_png.startswith(b"\x89PNG")
    frames = {int(re.search(r"\+step\+(\d+)\+", p).group(1)): np.asarray(Image.open(f"{local}/{p}"))
              for p in listed if p.endswith(".png") and p.startswith("images/")}
    assert {f.shape for f in frames.values()} == {(230, 256, 3)}  # the thumbnail's size: no rescale
    assert not np.array_equal(frames[0], frames[120])  # the boundary moved while training


@pytest.mark.parametrize(("overrides", "steps"), [
    (("seed=1",), [30]),  # not in train.snapshot_seeds ([0]): the final boundary only
    (("seed=1", "train.snapshot_seeds=[0,1]"), [0, 10, 30]),
    (("seed=2", "train.snapshot_seeds=null"), [0, 10, 30]),  # null: every seed
])
def test_only_the_snapshot_seeds_log_the_boundary_forming_every_run_its_last(make_cfg, overrides, steps):
    client, run_id, recorded = _recorded_run(make_cfg, "train.epochs=30", *overrides)
    assert recorded.status == "finished"
    assert _image_steps(_artifacts(client, run_id)) == steps


@pytest.mark.parametrize("optim", ["gd", "sgd"])
def test_snapshots_hand_the_params_of_their_epoch_and_change_nothing(optim):
    from backprop_lab.core.data import load_dataset
    from backprop_lab.core.mlp import MLP
    from backprop_lab.core.optim import make_optimizer
    from backprop_lab.core.rng import make_rng
    from backprop_lab.core.train import snapshot_schedule, train

    assert snapshot_schedule(1) == [0] and snapshot_schedule(1000) == [0, 10, 100]
    assert snapshot_schedule(20000) == [0, 10, 100, 1000, 10000]
    ds = load_dataset("moons", rng=make_rng(0, "data"))
    model = MLP((2, 6, 1))
    params = model.init_params("he", make_rng(0, "init"))

    def fit(epochs, **kw):
        return train(model, params, ds, make_optimizer(optim, 0.1), epochs=epochs,
                     rng=make_rng(0, "shuffle"), **kw)

    seen = {}
    watched = fit(120, snapshot_epochs=snapshot_schedule(120),
                  on_snapshot=lambda e, p: seen.setdefault(e, {k: v.copy() for k, v in p.items()}))
    plain = fit(120)
    assert sorted(seen) == [0, 10, 100]
    for k in plain.history:  # bit-identical with and without snapshots
        assert np.array_equal(watched.history[k], plain.history[k]), k
    assert all(np.array_equal(watched.params[k], plain.params[k]) for k in params)
    for epoch, snap in seen.items():  # the parameters after `epoch` epochs
        after = fit(epoch).params if epoch else params
        assert all(np.array_equal(snap[k], after[k]) for k in params), epoch


def test_a_bug_in_the_fused_path_only_fails_the_logged_gradient_check(make_cfg, monkeypatch, tmp_path):
    from backprop_lab.core import compute, mlp
    from backprop_lab.core.data import load_dataset
    from backprop_lab.core.gradcheck import check_gradients
    from backprop_lab.core.rng import make_rng

    rc = C.validate(make_cfg())
    ds = load_dataset(rc.data.name, rng=make_rng(rc.seed, "data"))
    model = mlp.MLP(rc.model.layer_sizes(2), activation=rc.model.activation)
    clean = compute.compute(rc, ds, model)
    for when in ("init", "trained"):
        assert clean.gradcheck[when]["passed"] and clean.gradcheck[when]["path"] == "fused"
        assert clean.scalars[f"gradcheck/{when}/max_rel_err"] < 1e-6

    real = mlp.bce_sum_and_grad  # used by the fused path only (the plain one: bce_with_logits)

    def scaled_dz(*args):
        part, dz = real(*args)
        dz *= 1.01
        return part, dz

    monkeypatch.setattr(mlp, "bce_sum_and_grad", scaled_dz)
    params = model.init_params(rc.init.name, make_rng(rc.seed, "init"))
    X, y = ds.X_train[:64], ds.y_train[:64]
    assert check_gradients(model, params, X, y, path="plain").passed  # the reference cannot see it
    buggy = compute.compute(rc, ds, model)
    for when in ("init", "trained"):
        assert not buggy.gradcheck[when]["passed"]
        assert buggy.scalars[f"gradcheck/{when}/max_rel_err"] > 1e-3  # dz x 1.01: ~5e-3

    summary = experiment.run(make_cfg())  # and what the run logs says so
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    assert client.get_run(summary.run_id).data.metrics["gradcheck/init/max_rel_err"] > 1e-3
    report = json.load(open(client.download_artifacts(summary.run_id, "gradcheck.json", str(tmp_path))))
    assert report["init"]["passed"] is False and report["init"]["path"] == "fused"


def test_long_runs_log_bounded_series_and_keep_the_exact_history(make_cfg, monkeypatch, tmp_path):
    from backprop_lab import analysis
    from backprop_lab.tracking import record

    assert record.SERIES_POINTS >= 500  # what the UI draws per curve
    monkeypatch.setattr(record, "SERIES_POINTS", 50)  # the same rule, on a run the test can afford
    client, run_id, recorded = _recorded_run(make_cfg, "train.epochs=300")
    steps = [m.step for m in client.get_metric_history(run_id, "train/loss")]
    assert sorted(steps) == sorted(set(steps)) and len(steps) == 50
    assert min(steps) == 0 and max(steps) == 299  # first and last epoch, real epoch numbers
    gaps = np.diff(sorted(steps))
    assert gaps.max() - gaps.min() <= 1  # evenly spaced
    assert client.get_run(run_id).data.metrics["train/loss"] == pytest.approx(
        recorded.metrics["final/train_loss"], rel=1e-2)  # the latest value is the last epoch's

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    exact = analysis.load_histories(uri, [run_id], metrics=("train/loss",), source="artifact")
    logged = analysis.load_histories(uri, [run_id], metrics=("train/loss",), source="metrics")
    assert list(exact["epoch"]) == list(range(300)) and list(logged["epoch"]) == sorted(steps)
    on_steps = exact.set_index("epoch").loc[sorted(steps), "value"].to_numpy()
    assert np.allclose(logged["value"], on_steps, rtol=5e-6, atol=0)  # the same values, 6 digits
    assert analysis.load_histories(uri, [run_id], metrics=("train/loss",)).equals(exact)  # auto

    # A run logged before history.npz existed: its history.csv is read instead.
    old = client.create_run(client.get_run(run_id).info.experiment_id).info.run_id
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "history.csv").write_text("epoch,train/loss\n0,0.5\n1,0.25\n")
    client.log_artifact(old, str(tmp_path / "old" / "history.csv"))
    assert list(analysis.load_histories(uri, [old], metrics=("train/loss",))["value"]) == [0.5, 0.25]
