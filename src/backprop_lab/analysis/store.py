"""Pandas views of an MLflow store for the analysis notebooks (they read; they never train).

The names read here (params, metrics, tags, artifacts) are the ones fixed in
docs/architecture.md. Every loader takes the tracking URI explicitly, so a notebook can
point at the repo's embedded store or at a temporary one in a test.
"""

from __future__ import annotations

import ast
import os
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from mlflow import MlflowClient  # a notebook's telemetry is off: backprop_lab/__init__.py ran first
from mlflow.entities import ViewType

from backprop_lab.config.names import SHORT_NAMES
from backprop_lab.env import repo_root
from backprop_lab.tracking import tables

REPO_ROOT = repo_root()
EXPERIMENT_PREFIX = "backprop-lab/"
CURVE_METRICS = ("train/loss", "train/acc", "test/loss", "test/acc")
# Run-level metrics kept as columns of load_runs; per-epoch ones live in load_histories.
RUN_METRIC_PREFIXES = ("final/", "time/", "gradcheck/")
# Column (the short name of config/names.py) -> the dotted config key (MLflow param) it is read from.
PARAM_COLUMNS = {short: dotted for dotted, short in SHORT_NAMES.items()}
COLUMN_TYPES = {"lr": "float64", "width": "Int64", "depth": "Int64", "seed": "Int64",
                "epochs": "Int64", "n_test": "Int64", "init": "str", "opt": "str", "data": "str",
                "act": "str", "role": "str", "preset": "str", "config_key": "str",
                "parent_run_id": "str"}


class AnalysisError(RuntimeError):
    """A missing store, experiment, sweep or artifact: one line saying what to run first."""


def default_tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI` when set, else the repo's embedded store `sqlite:///<repo>/mlflow.db`."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{REPO_ROOT / 'mlflow.db'}"


def make_command(experiment: str) -> str:
    """The command that fills `experiment`: `make sweep` or `make sweep SWEEP=<preset>`."""
    preset = experiment.removeprefix(EXPERIMENT_PREFIX)
    if preset == "default":
        return "make sweep"
    if preset == "train":
        return "make train"
    return f"make sweep SWEEP={preset}"


def cast_value(text: str | None):
    """MLflow stores every param as a string: '0.1' -> 0.1, '16' -> 16, '[10, 10]' -> [10, 10]."""
    if text is None:
        return None
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    if text in ("True", "true", "False", "false"):
        return text.lower() == "true"
    if text in ("None", "null"):
        return None
    if not text.startswith(("[", "(", "{", "'", '"')):  # a plain word ('he', 'float64'): as is
        return text
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _client(tracking_uri: str) -> MlflowClient:
    # A SQLite URI whose file is missing would silently create an empty store: refuse instead.
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri.removeprefix("sqlite:///"))
        if not path.exists():
            raise AnalysisError(f"no MLflow store at {path}: run `make sweep` first "
                                "(or set BPL_TRACKING_URI to an existing store)")
    return MlflowClient(tracking_uri=tracking_uri)


def _experiment_id(client: MlflowClient, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        known = ", ".join(names) or "none"
        raise AnalysisError(f"experiment {experiment!r} not found in {client.tracking_uri} "
                            f"(known: {known}): run `{make_command(experiment)}` first")
    return found.experiment_id


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:  # pages of 1000: a sweep can outgrow one page
        page = client.search_runs(experiment_ids, filter_string, ViewType.ACTIVE_ONLY,
                                  max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def _fetch(client: MlflowClient, experiment_id: str, *, parent_run_id: str | None = None,
           run_ids: list[str] | None = None, fast: bool = True) -> tuple[list[tables.StoredRun], str]:
    """(runs, path): the ACTIVE runs of the experiment, or those of parent_run_id, or those among
    run_ids. path "sql": four SELECTs on MLflow's tables (tracking/tables.py; SQL stores only);
    "search_runs": MLflow's public search, the reference, taken for a server URI, with fast=False,
    or, with one warning, when the SQL read fails."""
    sql_store = not str(client.tracking_uri).startswith(("http:", "https:", "databricks", "file:"))
    if fast and sql_store:
        try:
            return tables.read_runs(client, experiment_id, parent_run_id=parent_run_id,
                                    run_ids=run_ids), "sql"
        except Exception as exc:  # any surprise: the public API
            first_line = (str(exc).strip().splitlines() or [""])[0][:160]
            warnings.warn(f"backprop-lab: reading runs from MLflow's tables failed ({type(exc).__name__}: "
                          f"{first_line}); using MlflowClient.search_runs (slower); see docs/pipeline.md, "
                          "'Upgrading MLflow'", RuntimeWarning, stacklevel=3)
    if parent_run_id is not None:
        found = _search(client, [experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")
    elif run_ids is not None:
        found = []
        for start in range(0, len(run_ids), 100):  # IN lists stay short
            ids = ", ".join(f"'{run_id}'" for run_id in run_ids[start:start + 100])
            found += _search(client, [experiment_id], f"attributes.run_id IN ({ids})")
    else:
        found = _search(client, [experiment_id], "")
    return [tables.from_mlflow(r) for r in found], "search_runs"


def _row(run: tables.StoredRun) -> dict:
    params, tags, metrics = run.params, run.tags, run.metrics
    row = {"run_id": run.run_id, "run_name": run.run_name,
           "parent_run_id": tags.get("mlflow.parentRunId")}
    for column, key in PARAM_COLUMNS.items():
        row[column] = cast_value(params.get(key))
    # model.hidden_sizes, when a list, overrides width and depth (conf/model/mlp.yaml);
    # width is then that of the first hidden layer.
    hidden = cast_value(params.get("model.hidden_sizes"))
    if isinstance(hidden, list) and hidden:
        row["width"], row["depth"] = hidden[0], len(hidden)
    row["n_test"] = _n_test(params)
    # bpl.status is the project's verdict; MLflow's own status covers runs that died early.
    row["status"] = tags.get("bpl.status") or run.status.lower()
    row["diverged_epoch"] = cast_value(tags.get("bpl.diverged_epoch"))
    for tag in ("role", "preset", "config_key"):
        row[tag] = tags.get(f"bpl.{tag}")
    row["start_time"] = run.start_time
    row.update({k: v for k, v in metrics.items() if k.startswith(RUN_METRIC_PREFIXES)})
    return row


def _n_test(params: dict) -> int | None:
    """Test points of the run's data set, as core.data.load_dataset splits them: round(frac * n)."""
    n, frac = cast_value(params.get("data.n_samples")), cast_value(params.get("data.test_fraction"))
    if isinstance(n, int) and isinstance(frac, (int, float)) and not isinstance(frac, bool):
        return round(frac * n)
    return None


def _reused_runs(client: MlflowClient, parent, have: set[str], fast: bool) -> list[tables.StoredRun]:
    """Runs a sweep reused instead of re-running (skipped jobs: same config already FINISHED).

    They belong to an earlier parent; the sweep lists them in its `sweep/children.csv`.
    A sweep still running has no such table yet, and then nothing is added.
    """
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(parent.info.run_id, "sweep/children.csv", tmp)
        except Exception:  # no table (sweep running or interrupted): only its own children
            return []
        listed = pd.read_csv(local, dtype={"run_id": str}, usecols=["run_id"])["run_id"]
    missing = sorted(set(listed.dropna()) - have)
    if not missing:
        return []
    return _fetch(client, parent.info.experiment_id, run_ids=missing, fast=fast)[0]


def load_runs(tracking_uri: str, experiment: str | None = None,
              parent_run_id: str | None = None, fast: bool = True) -> pd.DataFrame:
    """One row per run (parents excluded) of an experiment, or the children of one sweep.

    Columns: run_id, run_name, parent_run_id, the config keys under their short names of
    config/names.py (lr, width, depth, init, opt, data, act, epochs, seed; cast to their real
    types), n_test (test points of the data set), status (`bpl.status`),
    diverged_epoch, role, preset, config_key, start_time, reused (a sweep's job that reused
    the FINISHED run of an earlier sweep, listed in its `sweep/children.csv`), then every
    `final/*`, `time/*` and `gradcheck/*` metric under its MLflow name (sorted by name). Sorted by start time
    (then run id).

    fast: read a SQL store's tables directly (1,000 runs: 1-2 s here, 5-12 s otherwise; see
    tracking/tables.py); False, or a server URI, reads through `MlflowClient.search_runs`.
    `frame.attrs["read_path"]` says which path ran ("sql" or "search_runs").
    """
    client = _client(tracking_uri)
    if parent_run_id:
        try:
            parent = client.get_run(parent_run_id)
        except Exception as error:  # MLflow raises its own type for an unknown id
            raise AnalysisError(f"sweep (parent run) {parent_run_id!r} not found in "
                                f"{tracking_uri}: pass a parent run id or 'latest'") from error
        runs, path = _fetch(client, parent.info.experiment_id, parent_run_id=parent_run_id, fast=fast)
        # The same path as the children (after a fallback: no second try, no second warning).
        reused = _reused_runs(client, parent, {r.run_id for r in runs}, path == "sql")
        runs += reused
        where = f"sweep {parent_run_id}"
    elif experiment:
        runs, path = _fetch(client, _experiment_id(client, experiment), fast=fast)
        runs = [r for r in runs if r.tags.get("bpl.role") != "parent"]
        where = f"experiment {experiment!r}"
    else:
        raise AnalysisError("load_runs needs experiment='backprop-lab/<preset>' or parent_run_id=...")
    if not runs:
        hint = make_command(experiment) if experiment else "make sweep"
        raise AnalysisError(f"no runs in {where} of {tracking_uri}: run `{hint}` first")
    reused_ids = {r.run_id for r in reused} if parent_run_id else set()
    frame = pd.DataFrame([_row(r) for r in runs])
    # Metric columns sorted by name: the same frame whichever path read the runs.
    fixed = [c for c in frame.columns if not c.startswith(RUN_METRIC_PREFIXES)]
    frame = frame[fixed + sorted(set(frame.columns) - set(fixed))]
    frame["reused"] = frame["run_id"].isin(reused_ids)
    frame = frame.astype({c: t for c, t in COLUMN_TYPES.items() if c in frame.columns})
    frame["diverged_epoch"] = frame["diverged_epoch"].astype("Int64")
    frame["start_time"] = pd.to_datetime(frame["start_time"], unit="ms")
    frame = frame.sort_values(["start_time", "run_id"], ignore_index=True)
    frame.attrs["read_path"] = path
    return frame


def latest_sweep(tracking_uri: str, experiment: str) -> str:
    """The run id of the newest parent (sweep) run of `experiment`."""
    client = _client(tracking_uri)
    parents = client.search_runs([_experiment_id(client, experiment)], "tags.`bpl.role` = 'parent'",
                                 max_results=1, order_by=["attributes.start_time DESC"])
    if not parents:
        raise AnalysisError(f"no sweep (parent run) in experiment {experiment!r} of "
                            f"{tracking_uri}: run `{make_command(experiment)}` first")
    return parents[0].info.run_id


def load_sweep(tracking_uri: str, experiment: str, sweep: str | None = "latest"):
    """The notebooks' entry: `sweep` is a parent run id, 'latest', or ''/'all' (every run).

    Returns (runs DataFrame as in load_runs, parent run id or None).
    """
    if sweep in (None, "", "all"):
        return load_runs(tracking_uri, experiment=experiment), None
    parent = latest_sweep(tracking_uri, experiment) if sweep == "latest" else sweep
    return load_runs(tracking_uri, parent_run_id=parent), parent


def load_histories(tracking_uri: str, run_ids, metrics=CURVE_METRICS, source: str = "auto",
                   max_workers: int = 8) -> pd.DataFrame:
    """Per-epoch metrics of many runs in one long frame: columns run_id, epoch, metric, value.

    source: "artifact" reads each run's exact history (the `history.npz` artifact: every
    recorded epoch, float64; `history.csv` for runs logged before it); "metrics" reads what
    MLflow holds (each series downsampled to at most 500 epochs and rounded to 6 significant
    digits, what its UI charts); "auto" (default) reads the artifact and falls back to the
    metrics for runs without one (e.g. failed before the end). Requests run in a small thread
    pool because each is a round trip to the store.
    """
    if source not in ("auto", "artifact", "metrics"):
        raise AnalysisError(f"load_histories source={source!r}; valid: auto, artifact, metrics")
    client = _client(tracking_uri)
    metrics = list(metrics)
    columns = ["run_id", "epoch", "metric", "value"]

    def from_metrics(run_id):
        return pd.DataFrame([(run_id, m.step, key, m.value) for key in metrics
                             for m in client.get_metric_history(run_id, key)], columns=columns)

    def from_artifact(run_id):
        with tempfile.TemporaryDirectory() as tmp:
            try:
                with np.load(client.download_artifacts(run_id, "history.npz", tmp)) as stored:
                    table = pd.DataFrame({k: stored[k] for k in ["epoch", *metrics] if k in stored.files})
            except Exception:  # a run logged before history.npz: its history.csv
                table = pd.read_csv(client.download_artifacts(run_id, "history.csv", tmp))
        present = [m for m in metrics if m in table.columns]
        long = table.melt(id_vars="epoch", value_vars=present, var_name="metric")
        return long.assign(run_id=run_id)[columns]

    def fetch(run_id):
        if source == "metrics":
            return from_metrics(run_id)
        try:
            return from_artifact(run_id)
        except Exception:  # no history artifact for this run
            if source == "artifact":
                raise
            return from_metrics(run_id)

    with ThreadPoolExecutor(max_workers=max_workers) as pool:
        parts = list(pool.map(fetch, list(run_ids)))
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return frame.astype({"epoch": "int64", "value": "float64"}).sort_values(
        ["run_id", "metric", "epoch"], ignore_index=True)


def gradcheck_long(runs: pd.DataFrame) -> pd.DataFrame:
    """The per-tensor gradient-check metrics of `runs` as rows: run_id, init, when, param, stat, value.

    Reads columns `gradcheck/<when>/<param>/<stat>` (stat: max_rel_err, median_rel_err).
    """
    columns = [c for c in runs.columns if c.startswith("gradcheck/") and c.count("/") == 3]
    if not columns:
        raise AnalysisError("no gradcheck/<when>/<param>/* metrics in these runs: they ran with "
                            "gradcheck.enabled=false; re-run the sweep with gradcheck.enabled=true")
    long = runs.melt(id_vars=["run_id", "init"], value_vars=columns, var_name="key").dropna()
    parts = long["key"].str.split("/", expand=True)
    long["when"], long["param"], long["stat"] = parts[1], parts[2], parts[3]
    return long.drop(columns="key")[["run_id", "init", "when", "param", "stat", "value"]]
