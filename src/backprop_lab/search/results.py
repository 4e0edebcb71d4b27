"""A search read back from the MLflow store, for the notebook and the measurement (pandas).

- `latest_search(uri, experiment)` -> the parent run id of the newest search in the experiment.
- `load_trials(uri, parent_run_id)` -> one row per trial, in trial order: its parameters (short
  names), state (complete | pruned | diverged | failed), seeds scored, mean and std of the final
  test accuracy over them, epochs trained, and `best_so_far` (the best mean of the trials up to
  and including this one, as the search saw it).
- `trials_to_reach(trials, target)` -> how many trials the search needed for a mean >= target.

Every trial's seeds are child runs tagged `bpl.trial` (search/trials.py); the objective is the
sweep summary's (analysis.summary: mean of final/test_acc over scored seeds).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from backprop_lab.analysis import AnalysisError, load_runs, make_command
from backprop_lab.analysis.summary import METRIC, SCORED_STATUSES


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def latest_search(uri: str, experiment: str) -> str:
    """The newest search parent run in `experiment`, or AnalysisError naming the command to run."""
    client = _client(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = [] if exp is None else client.search_runs(
        [exp.experiment_id], filter_string="tags.`bpl.role` = 'parent' and tags.`bpl.study` != ''",
        max_results=1, order_by=["attributes.start_time DESC"])
    if not runs:
        space = experiment.rsplit("search-", 1)[-1]
        hint = "make search" + ("" if space == "default" else f" SPACE={space}")
        raise AnalysisError(f"no search in experiment {experiment!r} of {uri}: run `{hint}` first")
    return runs[0].info.run_id


def load_trials(uri: str, parent_run_id: str) -> pd.DataFrame:
    """One row per trial of the search `parent_run_id` (see the module docstring)."""
    client = _client(uri)
    parent = client.get_run(parent_run_id)
    # By experiment, then filtered: the parent_run_id path reads a sweep's children.csv artifact.
    runs = load_runs(uri, experiment=client.get_experiment(parent.info.experiment_id).name)
    runs = runs[runs["parent_run_id"] == parent_run_id]
    trial_of = {}
    for r in client.search_runs([parent.info.experiment_id],
                                filter_string=f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                max_results=10000):
        trial_of[r.info.run_id] = int(r.data.tags.get("bpl.trial", -1))
    runs = runs.assign(trial=runs["run_id"].map(trial_of))
    keys = [k for k in ("lr", "width", "depth", "init", "opt") if k in runs and runs[k].nunique() > 1]
    rows = []
    for number, part in runs.groupby("trial", sort=True):
        scored = part[part["status"].isin(SCORED_STATUSES)][METRIC].astype(float)
        scored = scored[np.isfinite(scored)]
        statuses = set(part["status"])
        state = ("failed" if "failed" in statuses else "pruned" if "pruned" in statuses
                 else "complete" if len(scored) else "diverged")
        first = part.iloc[0]
        rows.append({"trial": int(number), **{k: first[k] for k in keys}, "state": state,
                     "n": len(scored), "mean": float(scored.mean()) if len(scored) else math.nan,
                     "std": float(scored.std(ddof=1)) if len(scored) > 1 else math.nan,
                     "epochs_run": float(part["final/epochs_run"].fillna(0).sum()),
                     "run_ids": list(part["run_id"])})
    table = pd.DataFrame(rows)
    if table.empty:
        raise AnalysisError(f"search {parent_run_id} has no trials yet: run `make search` to fill it")
    table["best_so_far"] = table["mean"].where(table["state"] == "complete").cummax().ffill()
    return table


def trials_to_reach(trials: pd.DataFrame, target: float) -> int | None:
    """The number of trials (pruned ones included) until a complete trial's mean >= target."""
    reached = np.flatnonzero(trials["best_so_far"].fillna(-np.inf).to_numpy() >= target)
    return int(reached[0]) + 1 if len(reached) else None


def grid_best(uri: str, experiment: str = "backprop-lab/default") -> pd.Series:
    """The grid's best configuration (analysis.summary.rank over lr x width x init): its row."""
    from backprop_lab.analysis import summary

    try:
        runs = load_runs(uri, experiment=experiment)
    except AnalysisError:
        raise AnalysisError(f"no grid in {experiment!r} of {uri}: run `{make_command(experiment)}` "
                            "first") from None
    keys = [k for k in ("lr", "width", "init") if k in runs]
    return summary.rank(runs, keys).iloc[0]
