"""Store preparation, experiments, run lookup and batched logging against a real SQLite store."""

import os
import socket
import time

import pytest

from backprop_lab.env import free_port
from backprop_lab.tracking import client as tracking


@pytest.fixture()
def store(tmp_path):
    uri = f"sqlite:///{tmp_path / 'deep' / 'folder' / 'mlflow.db'}"
    art = str(tmp_path / "art")
    client = tracking.prepare_store(uri, art)
    return client, uri, art


def test_prepare_store_creates_folder_and_schema(store, tmp_path):
    client, uri, art = store
    assert (tmp_path / "deep" / "folder" / "mlflow.db").stat().st_size > 0
    assert (tmp_path / "art").is_dir()
    # Schema present: a second prepare on the same file keeps what the first one wrote.
    client.create_experiment("kept")
    again = tracking.prepare_store(uri, art)
    assert sorted(e.name for e in again.search_experiments()) == ["Default", "kept"]
    # The Default experiment points under our artifact root, not where the schema was built.
    assert again.get_experiment("0").artifact_location == (tmp_path / "art" / "0").as_uri()


def test_unwritable_store_path_fails_with_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(tracking.StoreError) as info:
        tracking.prepare_store(f"sqlite:///{blocker / 'sub' / 'mlflow.db'}", str(tmp_path / "art"))
    msg = str(info.value)
    assert "\n" not in msg and str(blocker / "sub") in msg and "writable path" in msg
    assert not (blocker.parent / "art").exists() or True  # the artifact folder is checked later


def test_unwritable_artifact_root_fails_with_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(tracking.StoreError) as info:
        tracking.prepare_store(f"sqlite:///{tmp_path / 'm.db'}", str(blocker / "art"))
    assert "artifact root" in str(info.value) and "\n" not in str(info.value)



def test_unreachable_server_fails_fast_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    t = time.perf_counter()
    with pytest.raises(tracking.StoreError) as info:
        tracking.prepare_store(uri)
    assert time.perf_counter() - t < 5
    assert uri in str(info.value) and "not reachable" in str(info.value)


def test_silent_server_times_out_fast():
    # Accepts connections (listen backlog) but never answers: one ~2.5 s timeout, no retries.
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        uri = f"http://127.0.0.1:{srv.getsockname()[1]}"
        t = time.perf_counter()
        with pytest.raises(tracking.StoreError) as info:
            tracking.check_server(uri)
        assert time.perf_counter() - t < 5
    assert uri in str(info.value)


def test_resolve_defaults_to_the_repo_store(tmp_path):
    from types import SimpleNamespace as NS

    root = tracking.repo_root()
    assert (root / "pyproject.toml").is_file()
    uri, art = tracking.resolve_tracking(NS(tracking=NS(uri=None, artifact_root=None)))
    assert uri == f"sqlite:///{root / 'mlflow.db'}" and art == str(root / "mlartifacts")
    uri, art = tracking.resolve_tracking(NS(tracking=NS(uri="http://127.0.0.1:5001", artifact_root=None)))
    assert (uri, art) == ("http://127.0.0.1:5001", None)


def test_experiment_gets_explicit_file_artifact_location(store, tmp_path):
    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "backprop-lab/test", art)
    assert tracking.ensure_experiment(client, "backprop-lab/test", art) == exp_id
    loc = client.get_experiment(exp_id).artifact_location
    assert loc == (tmp_path / "art" / "backprop-lab" / "test").as_uri()


def test_experiment_with_server_only_location_is_refused(store):
    client, _, art = store
    client.create_experiment("made-by-ui", artifact_location="mlflow-artifacts:/1")
    with pytest.raises(tracking.StoreError, match="only a server can write"):
        tracking.ensure_experiment(client, "made-by-ui", art)


def test_log_history_bulk_path_matches_public_api(store):
    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "hist", art)
    fast = client.create_run(exp_id).info.run_id
    slow = client.create_run(exp_id).info.run_id
    series = [("train/loss", range(300), [1.0 / (i + 1) for i in range(300)]),
              ("test/acc", range(300), [i / 300 for i in range(300)]),
              ("bad", range(3), [1.0, float("nan"), float("inf")])]
    tracking.log_history(client, fast, series, 1000)
    tracking.log_metrics(client, slow, tracking.metric_batch(series, 1000))
    for key in ("train/loss", "test/acc", "bad"):
        a = [(m.step, m.value) for m in client.get_metric_history(fast, key)]
        b = [(m.step, m.value) for m in client.get_metric_history(slow, key)]
        assert sorted(a) == sorted(b)
    assert len(client.get_metric_history(fast, "train/loss")) == 300
    assert len(client.get_metric_history(fast, "bad")) == 1  # non-finite values dropped
    assert client.get_run(fast).data.metrics == client.get_run(slow).data.metrics
    assert client.get_run(fast).data.metrics["train/loss"] == pytest.approx(1 / 300, rel=1e-5)


def test_metric_values_rounded_to_six_significant_digits():
    import numpy as np

    values = [0.123456789, 123456789.0, 0.0, -2 / 3, 1e-310, float("nan"), 3.14159265e-200]
    got = tracking.round_sig_array(values)
    want = [tracking.round_sig(v) for v in values]
    assert np.allclose(got, want, rtol=1e-15, equal_nan=True)
    assert tracking.round_sig(0.123456789) == 0.123457
    assert tracking.round_sig(123456789.0) == 123457000.0
    assert tracking.round_sig(0.0) == 0.0
    [m] = tracking.metric_batch([("k", [4], [2.0 / 3.0])], 7)
    assert (m.key, m.step, m.timestamp, m.value) == ("k", 4, 7, 0.666667)


def test_params_over_100_go_in_chunks(store):
    client, _, art = store
    run_id = client.create_run(tracking.ensure_experiment(client, "p", art)).info.run_id
    tracking.log_params(client, run_id, {f"p.{i}": i for i in range(250)} | {"long": "x" * 7000})
    params = client.get_run(run_id).data.params
    assert len(params) == 251 and params["p.249"] == "249" and len(params["long"]) == 6000


def test_find_finished_runs(store, tmp_path):
    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "find", art)
    running = client.create_run(exp_id, tags={"bpl.config_key": "k1", "bpl.role": "child"})
    assert tracking.find_finished_run(client, exp_id, "k1") is None  # RUNNING does not count
    client.set_terminated(running.info.run_id, "FINISHED")
    assert tracking.find_finished_run(client, exp_id, "k1").info.run_id == running.info.run_id
    failed = client.create_run(exp_id, tags={"bpl.config_key": "k2", "bpl.role": "child"})
    client.set_terminated(failed.info.run_id, "FAILED")
    assert tracking.find_finished_run(client, exp_id, "k2") is None


def test_environment_tags_name_versions_and_git():
    import mlflow
    import numpy

    tags = tracking.environment_tags()
    assert tags["bpl.numpy"] == numpy.__version__ and tags["bpl.mlflow"] == mlflow.__version__
    assert tags["bpl.python"].startswith("3.11")
    assert len(tags["bpl.git_commit"]) == 40 and tags["bpl.git_dirty"] in ("true", "false")


def _log_same_dataset(uri, experiment_id, barrier, out):
    from backprop_lab.core.data import load_dataset
    from backprop_lab.core.rng import make_rng
    from backprop_lab.tracking import client as tracking

    client = tracking.MlflowClient(uri)
    run_id = client.create_run(experiment_id).info.run_id
    ds = load_dataset("blobs", rng=make_rng(0, "data"))
    barrier.wait()
    try:
        tracking.log_dataset(client, run_id, ds.X_train, ds.y_train, name="blobs", context="train")
        out.put((run_id, "ok"))
    except Exception as exc:  # reported to the test, which fails on it
        out.put((run_id, repr(exc)))


@pytest.mark.slow
def test_parallel_runs_logging_the_same_dataset_do_not_collide(tmp_path):
    """Jobs that start together with the same data race on MLflow's unique dataset row."""
    import multiprocessing as mp

    from backprop_lab.tracking import client as tracking

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracking.prepare_store(uri, str(tmp_path / "art"))
    client = tracking.MlflowClient(uri)
    # A fork server that imported MLflow once: each racer is a fork of it (a spawned racer paid
    # MLflow's import, ~5 s of CPU, eight times), and none inherits this process's threads. Its
    # SQL store module too (with SQLAlchemy and alembic): else each racer's first MlflowClient
    # imports them, ~1.2 s of CPU each (a module missing in another MLflow is skipped).
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["backprop_lab.tracking.client", "backprop_lab.core.data",
                                "mlflow.store.tracking.sqlalchemy_store"])
    for round_ in range(2):  # without the retry this failed in the first round here
        exp_id = tracking.ensure_experiment(client, f"race-{round_}", str(tmp_path / "art"))
        barrier, out = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_log_same_dataset, args=(uri, exp_id, barrier, out)) for _ in range(4)]
        for p in procs:
            p.start()
        results = [out.get(timeout=120) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        assert [r for _, r in results] == ["ok"] * 4, results
        for run_id, _ in results:
            inputs = client.get_run(run_id).inputs.dataset_inputs
            assert [d.dataset.name for d in inputs] == ["blobs"]
        digests = {d.dataset.digest for r, _ in results for d in client.get_run(r).inputs.dataset_inputs}
        assert len(digests) == 1


def test_run_created_in_sql_equals_create_run(store, capsys):
    """create_run's SQL path leaves the run MLflow's create_run leaves: info, tags, run name,
    artifact location, and a run the public API then logs to and ends."""
    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "create", art)
    tags = {"bpl.role": "child", "mlflow.user": "someone", "mlflow.source.type": "LOCAL"}
    ours = tracking.create_run(client, exp_id, tags=tags, run_name="lr=0.1 seed=0")
    theirs = client.create_run(exp_id, tags=tags, run_name="lr=0.1 seed=0").info
    stored = client.get_run(ours.run_id)
    for info in (ours, stored.info):
        for field in ("experiment_id", "user_id", "status", "end_time", "lifecycle_stage", "run_name"):
            assert getattr(info, field) == getattr(theirs, field), field
        assert info.artifact_uri == theirs.artifact_uri.replace(theirs.run_id, ours.run_id)
    assert stored.info.start_time == ours.start_time
    assert stored.data.tags == client.get_run(theirs.run_id).data.tags
    found = client.search_runs([exp_id], "tags.`bpl.role` = 'child' and attributes.status = 'RUNNING'")
    assert {r.info.run_id for r in found} == {ours.run_id, theirs.run_id}
    tracking.write_batch(client, ours.run_id, params=[tracking.Param("optim.lr", "0.1")],
                         end_status="FINISHED")
    assert client.get_run(ours.run_id).info.status == "FINISHED" and capsys.readouterr().err == ""


@pytest.mark.parametrize("fault", ["table changed", "experiment deleted"])
def test_run_creation_falls_back_to_create_run(store, monkeypatch, capsys, fault):
    from mlflow.exceptions import MlflowException

    client, _, art = store
    exp_id = tracking.ensure_experiment(client, f"create-{fault.split()[0]}", art)
    monkeypatch.setattr(tracking, "_WARNED", set())
    if fault == "table changed":
        monkeypatch.setattr(tracking, "RUNS_COLUMNS", tracking.RUNS_COLUMNS | {"workspace"})
        info = tracking.create_run(client, exp_id, tags={"bpl.role": "child"}, run_name="n")
        assert client.get_run(info.run_id).data.tags["bpl.role"] == "child"
        assert capsys.readouterr().err.count("backprop-lab warning") == 1
    else:  # MLflow's own refusal, as create_run gives it; nothing for the user to upgrade
        client.delete_experiment(exp_id)
        with pytest.raises(MlflowException, match="must be in the 'active' state"):
            tracking.create_run(client, exp_id, tags={}, run_name="n")
        assert capsys.readouterr().err == ""


def _inputs(client, run_id):
    return [(d.dataset.to_dictionary(), [(t.key, t.value) for t in d.tags])
            for d in client.get_run(run_id).inputs.dataset_inputs]


def test_dataset_input_linked_in_sql_equals_log_inputs(store, capsys):
    """A run whose experiment holds the dataset already is linked to it in one transaction:
    the same inputs as MLflow's log_inputs gives (dataset, context tag), once however often."""
    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import DatasetInput, InputTag

    from backprop_lab.core.data import load_dataset
    from backprop_lab.core.rng import make_rng

    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "inputs", art)
    first, ours, theirs = (client.create_run(exp_id).info.run_id for _ in range(3))
    ds = load_dataset("blobs", rng=make_rng(0, "data"))
    log = dict(name="blobs-train", context="train")
    assert tracking.log_dataset(client, first, ds.X_train, ds.y_train, **log) == "log_inputs"  # new
    assert tracking.log_dataset(client, ours, ds.X_train, ds.y_train, **log) == "sql"
    assert tracking.log_dataset(client, ours, ds.X_train, ds.y_train, **log) == "sql"  # no second link
    entity = from_numpy(ds.X_train, targets=ds.y_train, name="blobs-train", source=tracking._LOCAL_SOURCE())
    client.log_inputs(theirs, datasets=[DatasetInput(entity._to_mlflow_entity(),
                                                     tags=[InputTag("mlflow.data.context", "train")])])
    assert _inputs(client, ours) == _inputs(client, theirs) == _inputs(client, first)
    assert len(_inputs(client, ours)) == 1 and capsys.readouterr().err == ""


@pytest.mark.parametrize("fault", ["table changed", "run deleted"])
def test_dataset_input_falls_back_to_log_inputs(store, monkeypatch, capsys, fault):
    from mlflow.exceptions import MlflowException

    from backprop_lab.core.data import load_dataset
    from backprop_lab.core.rng import make_rng

    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "inputs-fallback", art)
    first, run_id = (client.create_run(exp_id).info.run_id for _ in range(2))
    ds = load_dataset("blobs", rng=make_rng(0, "data"))
    log = dict(name="blobs-train", context="train")
    tracking.log_dataset(client, first, ds.X_train, ds.y_train, **log)
    monkeypatch.setattr(tracking, "_WARNED", set())
    if fault == "table changed":
        monkeypatch.setattr(tracking, "INPUTS_COLUMNS", tracking.INPUTS_COLUMNS | {"model_id"})
        assert tracking.log_dataset(client, run_id, ds.X_train, ds.y_train, **log) == "log_inputs"
        assert _inputs(client, run_id) == _inputs(client, first)
        assert capsys.readouterr().err.count("backprop-lab warning") == 1
    else:  # MLflow's own refusal, as log_inputs gives it; nothing for the user to upgrade
        client.delete_run(run_id)
        with pytest.raises(MlflowException, match="must be in the 'active' state"):
            tracking.log_dataset(client, run_id, ds.X_train, ds.y_train, **log)
        assert capsys.readouterr().err == ""


def test_log_history_async_writes_the_same_rows(store):
    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "hist-async", art)
    fast = client.create_run(exp_id).info.run_id
    slow = client.create_run(exp_id).info.run_id
    series = [("train/loss", range(0, 500, 2), [1.0 / (i + 1) for i in range(250)]),
              ("grad_norm/W1", range(250), [1e-3 * i / 7 for i in range(250)])]
    written = tracking.log_history_async(client, fast, series, 1234).result()
    assert written.path == "bulk"  # the pinned MLflow takes the fast insert
    latest = written.latest
    assert sorted((m.key, m.step) for m in latest) == [("grad_norm/W1", 249), ("train/loss", 498)]
    tracking.log_metrics(client, fast, latest)
    tracking.log_metrics(client, slow, tracking.metric_batch(series, 1234))
    for key in ("train/loss", "grad_norm/W1"):
        a = sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(fast, key))
        b = sorted((m.step, m.value, m.timestamp) for m in client.get_metric_history(slow, key))
        assert a == b and len(a) == 250


def test_sqlite_store_runs_in_wal_mode(store):
    import sqlite3

    client, uri, _ = store
    db = tracking.sqlite_path(uri)
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    engine = client._tracking_client.store.engine
    with engine.connect() as conn:  # MLflow's own connections: no fsync per commit
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


def test_prepare_store_again_after_the_file_was_deleted(tmp_path):
    uri, art = f"sqlite:///{tmp_path / 'm.db'}", str(tmp_path / "art")
    first = tracking.prepare_store(uri, art)
    assert tracking.prepare_store(uri, art) is first  # same file: not checked again
    first._tracking_client.store.engine.dispose()
    for suffix in ("", "-wal", "-shm"):
        (tmp_path / f"m.db{suffix}").unlink(missing_ok=True)
    client = tracking.prepare_store(uri, art)
    assert (tmp_path / "m.db").is_file()
    assert tracking.ensure_experiment(client, "again", art)


def test_metrics_table_contract_of_the_pinned_mlflow(store):
    """The fast history insert writes MLflow's `metrics` table directly. Upgrading MLflow makes
    this test fail on purpose: re-check what docs/pipeline.md ("Upgrading MLflow") lists, then
    move the pin."""
    import sqlite3

    import mlflow
    from mlflow.store.tracking.dbmodels.models import SqlMetric

    assert mlflow.__version__ == "3.17.2"
    table = SqlMetric.__table__
    assert table.name == "metrics" and set(table.c.keys()) == tracking.METRICS_COLUMNS
    assert set(table.primary_key.columns.keys()) == tracking.METRICS_COLUMNS
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlTag

    assert set(SqlLatestMetric.__table__.c.keys()) == tracking.LATEST_METRICS_COLUMNS
    assert set(SqlTag.__table__.c.keys()) == tracking.TAGS_COLUMNS
    assert set(SqlParam.__table__.c.keys()) == tracking.PARAMS_COLUMNS
    from mlflow.store.tracking.dbmodels.models import SqlRun

    assert SqlRun.__tablename__ == "runs" and set(SqlRun.__table__.c.keys()) == tracking.RUNS_COLUMNS
    from mlflow.store.tracking.dbmodels.models import SqlDataset, SqlInput, SqlInputTag

    assert set(SqlInput.__table__.c.keys()) == tracking.INPUTS_COLUMNS
    assert set(SqlInputTag.__table__.c.keys()) == tracking.INPUT_TAGS_COLUMNS
    assert set(SqlDataset.__table__.c.keys()) == tracking.DATASETS_COLUMNS
    assert {c.name for c in SqlInput.__table__.primary_key} == {  # log_dataset's ON CONFLICT
        "source_type", "source_id", "destination_type", "destination_id"}
    for model in (SqlLatestMetric, SqlTag, SqlParam):  # write_batch's ON CONFLICT targets
        assert {c.name for c in model.__table__.primary_key} == {"key", "run_uuid"}
    client, uri, _ = store
    with sqlite3.connect(tracking.sqlite_path(uri)) as con:  # the migrated store itself
        info = con.execute("PRAGMA table_info(metrics)").fetchall()
    assert {row[1]: row[2] for row in info} == {
        "key": "VARCHAR(250)", "value": "FLOAT", "timestamp": "BIGINT", "step": "BIGINT",
        "is_nan": "BOOLEAN", "run_uuid": "VARCHAR(32)"}
    assert client._tracking_client.store.engine.url.drivername == "sqlite"  # the attribute used


def test_read_columns_contract_of_the_pinned_mlflow(store, monkeypatch):
    """analysis.load_runs reads MLflow's runs, params, tags and latest_metrics tables directly
    (tracking/tables.py): every column it reads is in MLflow's models and in a migrated store."""
    import sqlite3

    import mlflow

    from backprop_lab.tracking import tables

    assert mlflow.__version__ == "3.17.2"  # moved together with the metrics contract above
    tables.check_tables()
    client, uri, _ = store
    with sqlite3.connect(tracking.sqlite_path(uri)) as con:
        for table, columns in tables.READ_COLUMNS.items():
            have = {row[1] for row in con.execute(f"PRAGMA table_info({table})")}
            assert columns <= have, (table, sorted(columns - have))
    monkeypatch.setitem(tables.READ_COLUMNS, "runs", tables.READ_COLUMNS["runs"] | {"gone"})
    with pytest.raises(LookupError, match="'runs' table lacks columns \\['gone'\\]"):
        tables.check_tables()


SERIES = [("train/loss", range(40), [1.0 / (i + 1) for i in range(40)]),
          ("test/acc", range(40), [i / 40 for i in range(40)])]


def _rows(client, run_id):
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k, _, _ in SERIES}


class _RenamedInternals:
    """An MLflow client whose private `_tracking_client` has another name (public API intact)."""

    def __init__(self, client):
        self.tracking_uri, self.log_batch = client.tracking_uri, client.log_batch


@pytest.mark.parametrize("fault", ["attribute renamed", "table changed", "insert raised"])
def test_fast_history_insert_falls_back_to_log_batch_with_one_warning(store, monkeypatch, capsys, fault):
    import sqlalchemy.exc

    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "fallback", art)
    reference = client.create_run(exp_id).info.run_id
    tracking.log_metrics(client, reference, tracking.metric_batch(SERIES, 5))
    monkeypatch.setattr(tracking, "_WARNED", set())
    writer = client
    if fault == "attribute renamed":
        writer = _RenamedInternals(client)
    elif fault == "table changed":  # e.g. a new column the insert would not fill
        monkeypatch.setattr(tracking, "METRICS_COLUMNS", tracking.METRICS_COLUMNS | {"model_id"})
    else:
        def fail(*args):
            raise sqlalchemy.exc.OperationalError("INSERT", (), Exception("no such column: is_nan"))
        monkeypatch.setattr(tracking, "_insert_metric_rows", fail)
    runs = [client.create_run(exp_id).info.run_id for _ in range(2)]
    for run_id in runs:  # two runs of one process: one warning
        written = tracking.log_history_async(writer, run_id, SERIES, 5).result()
        assert written.path == "log_batch"
        tracking.log_metrics(client, run_id, written.latest)
    err = capsys.readouterr().err
    assert err.count("backprop-lab warning") == 1 and err.count("\n") == 1 and "log_batch" in err
    for run_id in runs:
        assert _rows(client, run_id) == _rows(client, reference)
    assert client.get_run(runs[0]).data.metrics == client.get_run(reference).data.metrics


def test_a_full_disk_fails_the_history_write_without_the_fallback_warning(store, monkeypatch, capsys):
    """The fast insert meets a full disk: that is the store failing (the run ends FAILED with
    its line), not MLflow's schema changing, so no 'Upgrading MLflow' warning and no slow retry."""
    import sqlite3

    import sqlalchemy.exc

    client, _, art = store
    run_id = client.create_run(tracking.ensure_experiment(client, "full", art)).info.run_id
    monkeypatch.setattr(tracking, "_WARNED", set())

    def full(*args):
        full_disk = sqlite3.OperationalError("database or disk is full")  # SQLite's SQLITE_FULL text
        raise sqlalchemy.exc.OperationalError("INSERT", (), full_disk)

    monkeypatch.setattr(tracking, "_insert_metric_rows", full)
    with pytest.raises(sqlalchemy.exc.OperationalError, match="disk is full"):
        tracking.log_history_async(client, run_id, SERIES, 5).result()
    assert capsys.readouterr().err == ""
    assert client.get_metric_history(run_id, "train/loss") == []


def _final_batch():
    return [tracking.Metric("train/loss", 0.25, 5, 7), tracking.Metric("final/test_acc", 0.875, 5, 0),
            tracking.Metric("final/test_acc", 0.875, 5, 0)]  # a repeated row: stored once


def test_batch_in_one_sql_transaction_equals_log_batch(store, capsys):
    """write_batch's direct write leaves a run exactly as log_batch does: params, metric rows,
    latest metrics (only where newer: MLflow's step, timestamp, value order) and tags."""
    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "final", art)
    runs = [client.create_run(exp_id, run_name="same").info.run_id for _ in range(2)]
    tags = {"bpl.status": "finished", tracking.LOGGED_IMAGES_TAG: True}
    for run_id, sql in zip(runs, (True, False), strict=True):
        tracking.log_metrics(client, run_id, [tracking.Metric("train/loss", 0.5, 5, 9),  # newer step
                                              tracking.Metric("final/test_acc", 0.125, 4, 0)])  # older ts
        tracking.log_tags(client, run_id, {"bpl.status": "running"})
        params = [tracking.Param("optim.lr", "0.1"), tracking.Param("model.hidden_sizes", "[10]")]
        if sql:
            assert tracking.write_batch(client, run_id, params=params) == "sql"  # the pinned MLflow
            assert tracking.write_batch(client, run_id, metrics=_final_batch(), tags=tags,
                                        end_status="FINISHED") == "sql"
        else:
            client.log_batch(run_id, params=params)
            tracking.log_metrics(client, run_id, _final_batch(), tags=tags)
            client.set_terminated(run_id, "FINISHED")
    ours_info, theirs_info = (client.get_run(r).info for r in runs)
    assert ours_info.status == theirs_info.status == "FINISHED"
    assert theirs_info.end_time - 60_000 < ours_info.end_time <= theirs_info.end_time  # ms, set now
    assert ours_info.lifecycle_stage == "active" and ours_info.run_name == theirs_info.run_name
    ours, theirs = (client.get_run(r).data for r in runs)
    assert ours.metrics == theirs.metrics == {"train/loss": 0.5, "final/test_acc": 0.875}
    assert ours.tags == theirs.tags and ours.tags["mlflow.loggedImages"] == "True"
    assert ours.params == theirs.params == {"optim.lr": "0.1", "model.hidden_sizes": "[10]"}
    again = [tracking.Param("optim.lr", "0.1")]  # logged before: log_batch's rules, no warning
    assert tracking.write_batch(client, runs[0], params=again) == "log_batch"
    with pytest.raises(tracking.MlflowException, match="Changing param values is not allowed"):
        tracking.write_batch(client, runs[0], params=[tracking.Param("optim.lr", "0.2")])
    assert capsys.readouterr().err == ""
    for key in ("train/loss", "final/test_acc"):
        assert ([(m.step, m.value, m.timestamp) for m in client.get_metric_history(runs[0], key)]
                == [(m.step, m.value, m.timestamp) for m in client.get_metric_history(runs[1], key)])


@pytest.mark.parametrize("fault", ["table changed", "runs table changed", "run deleted"])
def test_sql_batch_falls_back_to_log_batch(store, monkeypatch, capsys, fault):
    from mlflow.exceptions import MlflowException

    client, _, art = store
    run_id = client.create_run(tracking.ensure_experiment(client, "final-fallback", art)).info.run_id
    monkeypatch.setattr(tracking, "_WARNED", set())
    if fault != "run deleted":  # MLflow's tables are not the pinned ones: its public API, ended
        if fault == "table changed":
            monkeypatch.setattr(tracking, "TAGS_COLUMNS", tracking.TAGS_COLUMNS | {"extra"})
        else:  # e.g. a column the UPDATE of the run's end would have to set too
            monkeypatch.setattr(tracking, "RUNS_COLUMNS", tracking.RUNS_COLUMNS | {"ended_by"})
        assert tracking.write_batch(client, run_id, metrics=_final_batch(),
                                    tags={"bpl.status": "finished"}, end_status="FINISHED") == "log_batch"
        assert client.get_run(run_id).data.metrics == {"train/loss": 0.25, "final/test_acc": 0.875}
        assert client.get_run(run_id).data.tags["bpl.status"] == "finished"
        assert client.get_run(run_id).info.status == "FINISHED" and client.get_run(run_id).info.end_time
        assert capsys.readouterr().err.count("backprop-lab warning") == 1
    else:  # MLflow's own refusal, as log_batch gives it; nothing for the user to upgrade
        client.delete_run(run_id)
        with pytest.raises(MlflowException, match="must be in the 'active' state"):
            tracking.write_batch(client, run_id, metrics=_final_batch(), tags={"bpl.status": "finished"})
        assert capsys.readouterr().err == ""


def _frames():
    """Two (step, (230, 256, 3) uint8) pictures, smooth like a boundary (WebP is lossy)."""
    import numpy as np

    yy, xx = np.mgrid[0:230, 0:256]
    return [(step, np.stack([xx, yy, (xx + yy + step) % 256], -1).astype(np.uint8)) for step in (0, 10)]


def _image_files(client, run_id, tmp_path):
    """{name with the uuid as U: decoded pixels} of the run's images/ artifacts."""
    import re

    import numpy as np
    from PIL import Image

    local = client.download_artifacts(run_id, "images", str(tmp_path / run_id))
    names = [a.path.removeprefix("images/") for a in client.list_artifacts(run_id, "images")]
    return {re.sub(r"\+[-0-9a-f]{36}(\+compressed)?\.", r"+U\1.", n): np.asarray(Image.open(f"{local}/{n}"))
            for n in names}


def test_images_written_directly_read_back_as_log_image_writes_them(store, tmp_path):
    """The pinned MLflow takes the direct path; MLflow's API lists the same names in the same
    folder as log_image's, the same tag, the same PNG pixels and a WebP thumbnail of the same size.
    Upgrading MLflow makes this fail on purpose (IMAGE_LAYOUT_MLFLOW, docs/pipeline.md)."""
    import numpy as np

    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "images", art)
    direct, public = (client.create_run(exp_id).info for _ in range(2))
    frames = _frames()
    written = tracking.log_images_async(client, direct.run_id, "boundary/a", frames, 1234,
                                        artifact_uri=direct.artifact_uri).result()
    assert written == tracking.ImageWrite(2, "files")
    for step, image in frames:
        client.log_image(public.run_id, image, key="boundary/a", step=step, timestamp=1234)
    ours, theirs = (_image_files(client, r.run_id, tmp_path) for r in (direct, public))
    assert sorted(ours) == sorted(theirs) == [
        "boundary~a+step+0+timestamp+1234+U+compressed.webp", "boundary~a+step+0+timestamp+1234+U.png",
        "boundary~a+step+10+timestamp+1234+U+compressed.webp", "boundary~a+step+10+timestamp+1234+U.png"]
    for step, image in frames:
        name = f"boundary~a+step+{step}+timestamp+1234+U"
        assert np.array_equal(ours[f"{name}.png"], image) and np.array_equal(theirs[f"{name}.png"], image)
        thumb = ours[f"{name}+compressed.webp"]
        assert thumb.shape == theirs[f"{name}+compressed.webp"].shape == image.shape
        assert np.abs(thumb.astype(int) - image).mean() < 3  # lossy, but the same picture
    for run in (direct, public):
        assert client.get_run(run.run_id).data.tags[tracking.LOGGED_IMAGES_TAG] == "True"


@pytest.mark.parametrize("fault", ["unchecked MLflow", "write failed"])
def test_direct_image_files_fall_back_to_log_image_with_one_warning(store, tmp_path, monkeypatch, capsys,
                                                                     fault):
    client, _, art = store
    exp_id = tracking.ensure_experiment(client, "images-fallback", art)
    monkeypatch.setattr(tracking, "_WARNED", set())
    if fault == "unchecked MLflow":  # another MLflow version: its layout is not known to match
        monkeypatch.setattr(tracking, "IMAGE_LAYOUT_MLFLOW", ())
    else:  # the PNG is written, then the thumbnail fails: no half-written image is left
        from pathlib import Path

        write_bytes = Path.write_bytes

        def refuse_thumbnails(path, data):
            if path.name.endswith(".webp"):
                raise OSError("thumbnail refused")
            return write_bytes(path, data)
        monkeypatch.setattr(Path, "write_bytes", refuse_thumbnails)
    runs = [client.create_run(exp_id).info for _ in range(2)]
    for run in runs:  # two runs of one process: one warning
        written = tracking.log_images_async(client, run.run_id, "b", _frames(), 1234,
                                            artifact_uri=run.artifact_uri).result()
        assert written == tracking.ImageWrite(2, "log_image")
        assert sorted(_image_files(client, run.run_id, tmp_path)) == [
            "b+step+0+timestamp+1234+U+compressed.webp", "b+step+0+timestamp+1234+U.png",
            "b+step+10+timestamp+1234+U+compressed.webp", "b+step+10+timestamp+1234+U.png"]
        assert client.get_run(run.run_id).data.tags[tracking.LOGGED_IMAGES_TAG] == "True"
    err = capsys.readouterr().err
    assert err.count("backprop-lab warning") == 1 and "log_image" in err


def _hold_store(uri: str, art: str, conn) -> None:
    """A forked worker of a sweep: it holds the store open while it runs its next job's quick check."""
    from backprop_lab.tracking import store

    client = store.prepare_store(uri, art)
    client.create_experiment("held")  # MLflow's pooled connection stays open: this process holds the store
    store.check_store_quickly(uri)  # what every job of a sweep calls before it logs
    conn.send("ready")
    conn.recv()
    conn.send(os.path.exists(uri.removeprefix("sqlite:///") + "-wal"))


def test_quick_check_of_a_store_open_here_keeps_its_sqlite_locks(tmp_path):
    """A worker that holds the store open and runs the quick check of its next job must keep its
    POSIX locks: else another process closing a connection takes itself for the last one and
    deletes the WAL the worker still writes to (a 1,000-job sweep on 2 workers kept 11 runs).
    The holder is forked from this process, as the launcher forks its workers (no new interpreter)."""
    import multiprocessing as mp
    import sqlite3

    db = tmp_path / "mlflow.db"
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    holder = ctx.Process(target=_hold_store, args=(f"sqlite:///{db}", str(tmp_path / "art"), there))
    holder.start()
    try:
        assert here.poll(120) and here.recv() == "ready"
        with sqlite3.connect(db) as other:  # another process (a worker, the UI) opens and closes it
            assert other.execute("SELECT count(*) FROM experiments").fetchone()[0] == 2
        other.close()
        here.send("go")
        assert here.poll(60)
        wal_kept = here.recv()
    finally:
        holder.join(timeout=60)
        if holder.is_alive():
            holder.kill()
    assert wal_kept is True, "the WAL in use was deleted by another process's close"
