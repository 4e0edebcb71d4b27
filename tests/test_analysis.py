"""backprop_lab.analysis on a real store filled by a real tiny sweep (see analysis_store.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from analysis_store import DEEP_GRID, DEFAULT_EPOCHS, DEFAULT_GRID, grid_size, tiny_store
from mlflow import MlflowClient

from backprop_lab import analysis

DEFAULT = "backprop-lab/default"


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory)


@pytest.fixture(scope="session")
def runs(store):
    """The latest default sweep: 7 runs of its own and 1 reused from the one-job sweep before it."""
    return analysis.load_runs(store.uri, parent_run_id=analysis.latest_sweep(store.uri, DEFAULT))


# --- fast: no sweep needed -----------------------------------------------------------------

@pytest.mark.parametrize("text, value", [
    ("0.1", 0.1), ("16", 16), ("1e-3", 1e-3), ("[10, 10]", [10, 10]), ("None", None),
    ("True", True), ("he", "he"), ("float64", "float64"), (None, None),
])
def test_cast_value_recovers_real_types(text, value):
    cast = analysis.cast_value(text)
    assert cast == value and type(cast) is type(value)


def test_missing_sqlite_store_is_one_line_saying_what_to_run(tmp_path):
    missing = tmp_path / "nothing.db"
    with pytest.raises(analysis.AnalysisError, match=r"make sweep") as info:
        analysis.load_runs(f"sqlite:///{missing}", experiment=DEFAULT)
    assert "\n" not in str(info.value) and str(missing) in str(info.value)
    assert not missing.exists()  # reading must never create an empty store


def test_unknown_experiment_names_the_preset_command(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(uri).create_experiment("backprop-lab/default", artifact_location=str(tmp_path / "a"))
    with pytest.raises(analysis.AnalysisError, match=r"`make sweep SWEEP=deep_init` first") as info:
        analysis.load_runs(uri, experiment="backprop-lab/deep_init")
    assert "known: backprop-lab/default" in str(info.value)
    with pytest.raises(analysis.AnalysisError, match=r"no runs .* `make sweep` first"):
        analysis.load_runs(uri, experiment=DEFAULT)
    with pytest.raises(analysis.AnalysisError, match=r"no sweep .* `make sweep` first"):
        analysis.latest_sweep(uri, DEFAULT)


def test_aggregate_seeds_math_on_a_hand_made_frame():
    frame = pd.DataFrame({"init": ["he", "he", "he", "xavier"], "lr": [0.1] * 4,
                          "final/test_acc": [0.8, 0.9, np.nan, 0.5]})
    agg = analysis.aggregate_seeds(frame, by=["init", "lr"], metrics=["final/test_acc"]).set_index("init")
    assert agg.loc["he", "count"] == 3  # the NaN (failed) run counts as a run, not in the mean
    assert agg.loc["he", "final/test_acc mean"] == pytest.approx(0.85)
    assert agg.loc["he", "final/test_acc std"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert np.isnan(agg.loc["xavier", "final/test_acc std"])


# --- on the real tiny sweep ----------------------------------------------------------------

@pytest.mark.slow
def test_load_runs_one_row_per_child_with_real_types(store, runs):
    assert len(runs) == grid_size(DEFAULT_GRID) and runs["run_id"].is_unique
    assert str(runs["lr"].dtype) == "float64"
    for column in ("width", "depth", "seed", "epochs"):
        assert str(runs[column].dtype) == "Int64", column
    assert set(runs["init"]) == set(DEFAULT_GRID["init"])
    assert set(runs["width"]) == set(DEFAULT_GRID["model.width"])
    assert set(runs["seed"]) == set(DEFAULT_GRID["seed"])
    assert set(runs["lr"]) == set(DEFAULT_GRID["optim.lr"])
    assert set(runs["epochs"]) == {DEFAULT_EPOCHS} and set(runs["depth"]) == {1}
    assert set(runs["dataset"]) == {"moons"} and set(runs["optimizer"]) == {"gd"}
    assert set(runs["status"]) <= {"finished", "diverged"}
    assert set(runs["role"]) == {"child"}
    parent = analysis.latest_sweep(store.uri, DEFAULT)
    reused = runs[runs["reused"]]
    assert len(reused) == 1 and reused["parent_run_id"].item() != parent
    assert reused[["init", "width", "seed"]].iloc[0].tolist() == ["he", 2, 0]
    assert set(runs.loc[~runs["reused"], "parent_run_id"]) == {parent}
    # Every value matches what MLflow holds for that run.
    client = MlflowClient(store.uri)
    for row in runs.itertuples():
        run = client.get_run(row.run_id)
        assert float(run.data.params["optim.lr"]) == row.lr
        assert int(run.data.params["model.width"]) == row.width
        assert run.data.tags["bpl.status"] == row.status
        assert runs.loc[runs["run_id"] == row.run_id, "final/test_acc"].item() == run.data.metrics["final/test_acc"]
    for when in ("init", "trained"):
        assert runs[f"gradcheck/{when}/max_rel_err"].notna().all()
        assert runs[f"gradcheck/{when}/W1/max_rel_err"].le(runs[f"gradcheck/{when}/max_rel_err"]).all()


@pytest.mark.slow
def test_load_sweep_latest_equals_parent_and_all(store, runs):
    by_sweep, parent = analysis.load_sweep(store.uri, DEFAULT, "latest")
    assert parent == analysis.latest_sweep(store.uri, DEFAULT)
    assert set(by_sweep["run_id"]) == set(runs["run_id"])
    every, none = analysis.load_sweep(store.uri, DEFAULT, "all")  # both sweeps' children, no parents
    assert none is None and set(every["run_id"]) == set(runs["run_id"]) and not every["reused"].any()
    assert set(every["role"]) == {"child"}
    deep, _ = analysis.load_sweep(store.uri, "backprop-lab/deep_init")
    assert len(deep) == grid_size(DEEP_GRID) and set(deep["depth"]) == {10}
    with pytest.raises(analysis.AnalysisError, match="not found"):
        analysis.load_runs(store.uri, parent_run_id="0" * 32)


@pytest.mark.slow
def test_load_histories_long_frame_matches_metric_history(store, runs):
    metrics = ("train/loss", "test/acc")
    hist = analysis.load_histories(store.uri, runs["run_id"], metrics=metrics)  # history.csv
    api = analysis.load_histories(store.uri, runs["run_id"], metrics=metrics, source="metrics")
    for frame in (hist, api):
        assert list(frame.columns) == ["run_id", "epoch", "metric", "value"]
        assert len(frame) == len(runs) * len(metrics) * DEFAULT_EPOCHS
        assert set(frame["epoch"]) == set(range(DEFAULT_EPOCHS))
    # MLflow holds 6 significant digits, history.csv the exact floats.
    assert (hist[["run_id", "epoch", "metric"]] == api[["run_id", "epoch", "metric"]]).all().all()
    np.testing.assert_allclose(hist["value"], api["value"], rtol=1e-5)
    one = runs["run_id"].iloc[0]
    direct = MlflowClient(store.uri).get_metric_history(one, "train/loss")
    mine = api[(api["run_id"] == one) & (api["metric"] == "train/loss")]
    assert mine["value"].tolist() == [m.value for m in sorted(direct, key=lambda m: m.step)]


@pytest.mark.slow
def test_aggregate_seeds_matches_direct_computation(runs):
    agg = analysis.aggregate_seeds(runs, by=["init", "width"], metrics=["final/test_acc"])
    assert len(agg) == len(DEFAULT_GRID["init"]) * len(DEFAULT_GRID["model.width"])
    assert (agg["count"] == len(DEFAULT_GRID["seed"])).all()
    for row in agg.itertuples(index=False):
        values = runs.loc[(runs["init"] == row.init) & (runs["width"] == row.width), "final/test_acc"].to_numpy()
        assert row[2] == len(values)
        assert row[3] == pytest.approx(values.mean())
        assert row[4] == pytest.approx(values.std(ddof=1))


@pytest.mark.slow
def test_gradcheck_long_has_every_tensor_when_and_stat(store, runs):
    long = analysis.gradcheck_long(runs)
    assert set(long["param"]) == {"W1", "b1", "W2", "b2"}
    assert set(long["when"]) == {"init", "trained"} and set(long["stat"]) == {"max_rel_err", "median_rel_err"}
    assert len(long) == len(runs) * 4 * 2 * 2
    assert (long["value"] >= 0).all()
    no_check, _ = analysis.load_sweep(store.uri, "backprop-lab/deep_init")  # gradcheck.enabled=false
    with pytest.raises(analysis.AnalysisError, match="gradcheck.enabled=true"):
        analysis.gradcheck_long(no_check)


@pytest.mark.slow
def test_run_image_reads_the_decision_boundary_png(store, runs):
    image = analysis.run_image(store.uri, runs["run_id"].iloc[0], "plots/decision_boundary.png")
    assert image.ndim == 3 and image.shape[2] in (3, 4) and min(image.shape[:2]) > 50
    assert 0.0 <= image.min() and image.max() <= 1.0 and image.std() > 0  # a picture, not a blank
    with pytest.raises(analysis.AnalysisError, match=r"plots/nope.png.*present: .*decision_boundary.png"):
        analysis.run_image(store.uri, runs["run_id"].iloc[0], "plots/nope.png")
