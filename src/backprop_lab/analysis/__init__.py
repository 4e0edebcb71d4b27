"""Pandas views of an MLflow store for the notebooks: loaders (store.py), figures (plots.py),
rankings and summaries (summary.py: `analysis.summary.rank`, `.answer`, `.summary_figure`, ...).

`from backprop_lab import analysis` gives the notebooks' whole API in one name.
"""

from backprop_lab.analysis import summary
from backprop_lab.analysis.plots import plot_curves, run_image
from backprop_lab.analysis.store import (
    CURVE_METRICS,
    EXPERIMENT_PREFIX,
    PARAM_COLUMNS,
    REPO_ROOT,
    AnalysisError,
    cast_value,
    default_tracking_uri,
    gradcheck_long,
    latest_sweep,
    load_histories,
    load_runs,
    load_sweep,
    make_command,
)

__all__ = [
    "CURVE_METRICS", "EXPERIMENT_PREFIX", "PARAM_COLUMNS", "REPO_ROOT", "AnalysisError",
    "cast_value", "default_tracking_uri", "gradcheck_long", "latest_sweep",
    "load_histories", "load_runs", "load_sweep", "make_command", "plot_curves", "run_image", "summary",
]
