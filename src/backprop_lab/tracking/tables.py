"""Runs read straight from MLflow's SQL tables: the fast path of analysis.load_runs.

`MlflowClient.search_runs` builds an ORM object per param, tag and metric of every run (1,000
runs of this project: ~70,000 objects, seconds). The same rows come back from four plain
SELECTs (runs, then their params, tags and latest metrics) on the store's own engine, for
SQLite and PostgreSQL alike. This reads MLflow's private schema: READ_COLUMNS is checked against
MLflow's table models before any query, tests/test_tracking.py pins it to the MLflow version
(with the history insert's METRICS_COLUMNS), and the caller falls back to `search_runs` on any
failure. Only what search_runs returns is reproduced: ACTIVE runs, a run's newest metric value
per key (`latest_metrics`, NaN where MLflow stored is_nan), its name (or its `mlflow.runName`).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import sqlalchemy

#: table -> the columns read from it (a subset of what MLflow 3.17.2 has: extra columns are fine,
#: a missing one means MLflow changed the table and the fast read is not attempted).
READ_COLUMNS = {
    "runs": frozenset({"run_uuid", "name", "experiment_id", "status", "start_time", "lifecycle_stage"}),
    "params": frozenset({"run_uuid", "key", "value"}),
    "tags": frozenset({"run_uuid", "key", "value"}),
    "latest_metrics": frozenset({"run_uuid", "key", "value", "is_nan"}),
}


class StoredRun(NamedTuple):
    """What analysis reads of one run, from either path."""

    run_id: str
    run_name: str | None
    experiment_id: str
    status: str  # MLflow's: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    start_time: int | None  # ms since the epoch
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, float]


def from_mlflow(run: Any) -> StoredRun:
    """The StoredRun of an `mlflow.entities.Run` (what search_runs returns)."""
    info, data = run.info, run.data
    return StoredRun(info.run_id, info.run_name, str(info.experiment_id), info.status, info.start_time,
                     dict(data.params), dict(data.tags), dict(data.metrics))


def check_tables() -> None:
    """Raise LookupError unless MLflow's table models hold every column of READ_COLUMNS."""
    from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag

    for model in (SqlRun, SqlParam, SqlTag, SqlLatestMetric):
        table = model.__table__
        missing = READ_COLUMNS.get(table.name, frozenset({"<table renamed>"})) - set(table.c.keys())
        if missing:
            raise LookupError(f"MLflow's {table.name!r} table lacks columns {sorted(missing)}")


def read_runs(client: Any, experiment_id: str, *, parent_run_id: str | None = None,
              run_ids: list[str] | None = None) -> list[StoredRun]:
    """The ACTIVE runs of an experiment, or those with tag mlflow.parentRunId = parent_run_id,
    or those among run_ids; as search_runs would return them (in no particular order).

    Raises whatever goes wrong (no SQL store behind the client, a changed schema, a failing
    statement); the caller falls back to search_runs.
    """
    check_tables()
    engine = client._tracking_client.store.engine  # private: the caller falls back on any failure
    where = "experiment_id = :eid AND lifecycle_stage = 'active'"
    binds: dict[str, Any] = {"eid": int(experiment_id)}
    expanding = []
    if parent_run_id is not None:
        where += (" AND run_uuid IN (SELECT run_uuid FROM tags WHERE key = 'mlflow.parentRunId'"
                  " AND value = :parent)")
        binds["parent"] = parent_run_id
    if run_ids is not None:
        if not run_ids:
            return []
        where += " AND run_uuid IN :ids"
        binds["ids"] = list(run_ids)
        expanding.append(sqlalchemy.bindparam("ids", expanding=True))

    def query(sql: str):
        return conn.execute(sqlalchemy.text(sql).bindparams(*expanding), binds).all()

    chosen = f"SELECT run_uuid FROM runs WHERE {where}"
    with engine.connect() as conn:
        runs = query(f"SELECT run_uuid, name, experiment_id, status, start_time FROM runs WHERE {where}")
        params = query(f"SELECT run_uuid, key, value FROM params WHERE run_uuid IN ({chosen})")
        tags = query(f"SELECT run_uuid, key, value FROM tags WHERE run_uuid IN ({chosen})")
        metrics = query("SELECT run_uuid, key, value, is_nan FROM latest_metrics "
                        f"WHERE run_uuid IN ({chosen})")
    by_run: dict[str, tuple[dict, dict, dict]] = {row[0]: ({}, {}, {}) for row in runs}
    for run_id, key, value in params:
        if run_id in by_run:  # a run created between two statements is not in `runs`
            by_run[run_id][0][key] = value
    for run_id, key, value in tags:
        if run_id in by_run:
            by_run[run_id][1][key] = value
    for run_id, key, value, is_nan in metrics:
        if run_id in by_run:
            by_run[run_id][2][key] = float("nan") if is_nan else float(value)
    out = []
    for run_id, name, exp_id, status, start_time in runs:
        params_, tags_, metrics_ = by_run[run_id]
        out.append(StoredRun(run_id, name or tags_.get("mlflow.runName"), str(exp_id), status,
                             start_time, params_, tags_, metrics_))
    return out
