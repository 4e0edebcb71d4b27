"""backprop_lab.analysis on a real store filled by a real tiny sweep (see analysis_store.py)."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow import MlflowClient

from analysis_store import (
    DEEP_DEPTH,
    DEEP_GRID,
    DEFAULT_EPOCHS,
    DEFAULT_GRID,
    DIVERGING_LR,
    grid_size,
    tiny_store,
)
from backprop_lab import analysis

DEFAULT = "backprop-lab/default"


@pytest.fixture(scope="session")
def store(request, tmp_path_factory):
    return tiny_store(tmp_path_factory, request.session, "analysis")


@pytest.fixture(scope="session")
def runs(store):
    """The latest default sweep: 15 runs of its own and 1 reused from the one-job sweep before it.

    Every run at lr=DIVERGING_LR diverged (a real overflow); every other one finished.
    """
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


def test_unknown_experiment_names_the_preset_command(tmp_path, empty_store):
    uri = empty_store
    MlflowClient(uri).create_experiment("backprop-lab/default", artifact_location=str(tmp_path / "a"))
    with pytest.raises(analysis.AnalysisError, match=r"`make sweep SWEEP=deep_init` first") as info:
        analysis.load_runs(uri, experiment="backprop-lab/deep_init")
    assert "known: backprop-lab/default" in str(info.value)
    with pytest.raises(analysis.AnalysisError, match=r"no runs .* `make sweep` first"):
        analysis.load_runs(uri, experiment=DEFAULT)
    with pytest.raises(analysis.AnalysisError, match=r"no sweep .* `make sweep` first"):
        analysis.latest_sweep(uri, DEFAULT)


def test_load_runs_columns_are_the_short_names_of_config_names():
    from backprop_lab.config.names import SHORT_NAMES

    assert set(analysis.PARAM_COLUMNS) == set(SHORT_NAMES.values())
    assert all(SHORT_NAMES[dotted] == short for short, dotted in analysis.PARAM_COLUMNS.items())


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
    assert set(runs["data"]) == {"moons"} and set(runs["opt"]) == {"gd"} and set(runs["act"]) == {"relu"}
    assert set(runs["n_test"]) == {80}  # 400 points, test_fraction 0.2 (conf/data/moons.yaml)
    diverging = runs["lr"] == DIVERGING_LR
    assert set(runs.loc[diverging, "status"]) == {"diverged"} and diverging.sum() == len(runs) // 2
    assert set(runs.loc[~diverging, "status"]) == {"finished"}
    assert set(runs["role"]) == {"child"}
    parent = analysis.latest_sweep(store.uri, DEFAULT)
    reused = runs[runs["reused"]]
    assert len(reused) == 1 and reused["parent_run_id"].item() != parent
    assert reused[["init", "lr", "width", "seed"]].iloc[0].tolist() == ["he", 1.0, 2, 0]
    assert set(runs.loc[~runs["reused"], "parent_run_id"]) == {parent}
    # Every value matches what MLflow holds for that run.
    client = MlflowClient(store.uri)
    for row in runs.itertuples():
        run = client.get_run(row.run_id)
        assert float(run.data.params["optim.lr"]) == row.lr
        assert int(run.data.params["model.width"]) == row.width
        assert run.data.tags["bpl.status"] == row.status
        mine = runs.loc[runs["run_id"] == row.run_id, "final/test_acc"].item()
        assert mine == run.data.metrics["final/test_acc"]
    # A diverged run skips its second check when its parameters are no longer finite.
    for when, checked in (("init", runs), ("trained", runs[~diverging])):
        assert checked[f"gradcheck/{when}/max_rel_err"].notna().all()
        assert checked[f"gradcheck/{when}/W1/max_rel_err"].le(checked[f"gradcheck/{when}/max_rel_err"]).all()


@pytest.mark.slow
def test_diverged_runs_report_status_epoch_and_their_finite_history(store, runs):
    diverged = runs[runs["status"] == "diverged"]
    assert len(diverged) == grid_size(DEFAULT_GRID) // len(DEFAULT_GRID["optim.lr"])
    assert set(runs.loc[runs["status"] == "finished", "diverged_epoch"].isna()) == {True}
    client = MlflowClient(store.uri)
    hist = analysis.load_histories(store.uri, diverged["run_id"], metrics=("train/loss", "test/acc"))
    for row in diverged.itertuples():
        tags = client.get_run(row.run_id).data.tags
        assert tags["bpl.status"] == "diverged" and int(tags["bpl.diverged_epoch"]) == row.diverged_epoch
        assert 0 < row.diverged_epoch < DEFAULT_EPOCHS  # it really stopped early
        assert runs.loc[runs["run_id"] == row.run_id, "final/epochs_run"].item() == row.diverged_epoch
        # History keeps the epochs before diverged_epoch, all finite; final/* repeat the last row.
        mine = hist[hist["run_id"] == row.run_id]
        assert set(mine["epoch"]) == set(range(row.diverged_epoch)) and np.isfinite(mine["value"]).all()
        last_loss = mine[(mine["metric"] == "train/loss") & (mine["epoch"] == row.diverged_epoch - 1)]
        assert last_loss["value"].item() > 1e100  # the blow-up just before the overflow
        assert client.get_run(row.run_id).data.metrics["final/train_loss"] == pytest.approx(
            last_loss["value"].item(), rel=1e-5)
    every, _ = analysis.load_sweep(store.uri, DEFAULT, "all")
    again = every.set_index("run_id").loc[diverged["run_id"]]
    assert (again["status"] == "diverged").all()
    assert again["diverged_epoch"].tolist() == diverged["diverged_epoch"].tolist()


@pytest.mark.slow
def test_load_sweep_latest_equals_parent_and_all(store, runs):
    by_sweep, parent = analysis.load_sweep(store.uri, DEFAULT, "latest")
    assert parent == analysis.latest_sweep(store.uri, DEFAULT)
    assert set(by_sweep["run_id"]) == set(runs["run_id"])
    every, none = analysis.load_sweep(store.uri, DEFAULT, "all")  # both sweeps' children, no parents
    assert none is None and set(every["run_id"]) == set(runs["run_id"]) and not every["reused"].any()
    assert set(every["role"]) == {"child"}
    deep, _ = analysis.load_sweep(store.uri, "backprop-lab/deep_init")
    assert len(deep) == grid_size(DEEP_GRID) and set(deep["depth"]) == {DEEP_DEPTH}
    with pytest.raises(analysis.AnalysisError, match="not found"):
        analysis.load_runs(store.uri, parent_run_id="0" * 32)


@pytest.mark.slow
def test_load_histories_long_frame_matches_metric_history(store, runs):
    metrics = ("train/loss", "test/acc")
    hist = analysis.load_histories(store.uri, runs["run_id"], metrics=metrics)  # history.csv
    api = analysis.load_histories(store.uri, runs["run_id"], metrics=metrics, source="metrics")
    for frame in (hist, api):
        assert list(frame.columns) == ["run_id", "epoch", "metric", "value"]
        # Diverged runs hold only their epochs before diverged_epoch.
        assert len(frame) == len(metrics) * runs["final/epochs_run"].sum()
        assert runs["final/epochs_run"].min() < DEFAULT_EPOCHS
        assert set(frame["epoch"]) == set(range(DEFAULT_EPOCHS))
    # MLflow holds 6 significant digits, history.csv the exact floats.
    assert (hist[["run_id", "epoch", "metric"]] == api[["run_id", "epoch", "metric"]]).all().all()
    np.testing.assert_allclose(hist["value"], api["value"], rtol=1e-5)
    one = runs["run_id"].iloc[0]
    direct = MlflowClient(store.uri).get_metric_history(one, "train/loss")
    mine = api[(api["run_id"] == one) & (api["metric"] == "train/loss")]
    assert mine["value"].tolist() == [m.value for m in sorted(direct, key=lambda m: m.step)]


@pytest.mark.slow
def test_summary_ranks_the_real_sweep_by_the_mean_over_seeds(runs):
    keys = analysis.summary.swept_keys(runs)
    assert keys == ["lr", "width", "init", "seed"]
    table = analysis.summary.rank(runs, keys)  # n_test from load_runs' column
    assert len(table) == grid_size(DEFAULT_GRID) // len(DEFAULT_GRID["seed"])
    lost = table[table["lr"] == DIVERGING_LR]  # every seed diverged: counted, never ranked
    assert (lost["n"] == 0).all() and (lost["n_diverged"] == 2).all() and lost["rank"].isna().all()
    assert table["rank"].dropna().tolist() == list(range(1, len(table) - len(lost) + 1))
    best = table.iloc[0]
    mine = runs[(runs["lr"] == best["lr"]) & (runs["width"] == best["width"])
                & (runs["init"] == best["init"])].set_index("run_id")
    assert best["mean"] == pytest.approx(mine["final/test_acc"].mean()) and best["n"] == len(mine) == 2
    assert mine.loc[best["best_run_id"], "final/test_acc"] == mine["final/test_acc"].max()
    assert best["tied"] and (table["n_test"].dropna() == 80).all()


@pytest.mark.slow
def test_gradcheck_long_has_every_tensor_when_and_stat(store, runs):
    long = analysis.gradcheck_long(runs)
    assert set(long["param"]) == {"W1", "b1", "W2", "b2"}
    assert set(long["when"]) == {"init", "trained"} and set(long["stat"]) == {"max_rel_err", "median_rel_err"}
    trained = runs["gradcheck/trained/max_rel_err"].notna()  # all finished runs, not every diverged one
    assert trained[runs["status"] == "finished"].all() and not trained.all()
    assert len(long) == (len(runs) + trained.sum()) * 4 * 2
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


# --- the fast read (tracking/tables.py) against MLflow's search_runs ------------------------

def _both_paths(uri: str, **selection):
    fast = analysis.load_runs(uri, **selection)
    slow = analysis.load_runs(uri, **selection, fast=False)
    assert (fast.attrs["read_path"], slow.attrs["read_path"]) == ("sql", "search_runs")
    return fast, slow


@pytest.mark.slow
def test_load_runs_sql_read_equals_search_runs_on_the_real_sweep(store, runs):
    """Every selection: the latest sweep (its children + the reused run found by id), and the
    whole experiment (parents dropped); same rows, columns, values and dtypes."""
    import pandas as pd

    assert runs.attrs["read_path"] == "sql" and runs["reused"].sum() == 1
    for selection in ({"parent_run_id": analysis.latest_sweep(store.uri, DEFAULT)},
                      {"experiment": DEFAULT}):
        fast, slow = _both_paths(store.uri, **selection)
        pd.testing.assert_frame_equal(fast, slow)
    assert fast["status"].eq("diverged").any() and fast.filter(like="gradcheck/").shape[1] > 0


def test_load_runs_sql_read_keeps_nan_names_and_skips_deleted_runs(tmp_path, empty_store):
    """What search_runs returns: a metric stored as NaN stays NaN, an unnamed run takes its
    mlflow.runName tag, deleted runs and other experiments' runs are left out."""
    import math

    import pandas as pd

    client = MlflowClient(empty_store)
    exp = client.create_experiment(DEFAULT, artifact_location=str(tmp_path / "a"))
    other = client.create_experiment("backprop-lab/other", artifact_location=str(tmp_path / "b"))
    kept = client.create_run(exp, run_name="kept", tags={"bpl.status": "finished"})
    client.log_param(kept.info.run_id, "optim.lr", "0.1")
    client.log_metric(kept.info.run_id, "final/test_loss", float("nan"))
    for step, value in enumerate([3.0, 2.0]):  # the newest step wins
        client.log_metric(kept.info.run_id, "final/test_acc", value, step=step)
    client.set_terminated(kept.info.run_id)
    deleted = client.create_run(exp)
    client.delete_run(deleted.info.run_id)
    client.create_run(other)
    fast, slow = _both_paths(empty_store, experiment=DEFAULT)
    pd.testing.assert_frame_equal(fast, slow)
    assert list(fast["run_id"]) == [kept.info.run_id] and fast.loc[0, "run_name"] == "kept"
    assert math.isnan(fast.loc[0, "final/test_loss"]) and fast.loc[0, "final/test_acc"] == 2.0
    assert fast.loc[0, "lr"] == 0.1 and fast.loc[0, "status"] == "finished"


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["table changed", "statement raised"])
def test_load_runs_sql_read_failure_falls_back_with_one_warning(store, runs, monkeypatch, fault):
    import warnings

    import pandas as pd

    from backprop_lab.tracking import tables

    if fault == "table changed":  # a column MLflow no longer has: no query is sent
        monkeypatch.setitem(tables.READ_COLUMNS, "runs", tables.READ_COLUMNS["runs"] | {"gone"})
    else:  # e.g. a column whose type changed: the database refuses the statement
        import types

        import sqlalchemy.exc

        def refuse(sql):
            raise sqlalchemy.exc.OperationalError(sql, (), Exception("no such column: name"))
        monkeypatch.setattr(tables, "sqlalchemy", types.SimpleNamespace(text=refuse))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = analysis.load_runs(store.uri, parent_run_id=analysis.latest_sweep(store.uri, DEFAULT))
    said = [str(w.message) for w in caught if "MLflow's tables" in str(w.message)]
    assert len(said) == 1 and "search_runs" in said[0] and "\n" not in said[0]
    assert again.attrs["read_path"] == "search_runs" and again["reused"].sum() == 1
    pd.testing.assert_frame_equal(again, runs)
