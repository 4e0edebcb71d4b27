"""The figure helpers of `backprop_lab.analysis` (import them from there): artifact images, curves.

Kept apart so analysis.py stays the loaders and tables; both names are re-exported by it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def run_image(tracking_uri: str, run_id: str, path: str = "plots/decision_boundary.png") -> np.ndarray:
    """The PNG artifact `path` of a run as an image array (H, W, 3 or 4), floats in [0, 1]."""
    import matplotlib.image as mpimg

    from .store import AnalysisError, _client

    client = _client(tracking_uri)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, path, tmp)
        except Exception as error:  # missing file or run: name both and what exists
            folder = str(Path(path).parent) if "/" in path else None
            try:
                listed = ", ".join(a.path for a in client.list_artifacts(run_id, folder)) or "none"
            except Exception:
                listed = "unknown run"
            raise AnalysisError(f"artifact {path!r} not found in run {run_id} "
                                f"(present: {listed})") from error
        return mpimg.imread(local)


def plot_curves(ax, histories: pd.DataFrame, runs: pd.DataFrame, metric: str = "train/loss",
                hue: str = "init", log: bool = True, log_top: float = 1e30) -> None:
    """Draw `metric` against epoch for every run on `ax`, one colour per value of runs[hue].

    histories: long frame from load_histories; runs: frame from load_runs (for the hue column).
    A diverging run's loss climbs to ~1e300 before the overflow, where autoscaling a log axis
    overflows a float itself: with `log`, values above `log_top` leave the top of the axis.
    """
    import matplotlib as mpl

    data = histories[histories["metric"] == metric].merge(runs[["run_id", hue]], on="run_id")
    levels = sorted(runs[hue].dropna().unique().tolist())
    colours = dict(zip(levels, mpl.colormaps["tab10"].colors, strict=False))  # tab10: 10 at most
    for level in levels:
        for i, (_, curve) in enumerate(data[data[hue] == level].groupby("run_id")):
            ax.plot(curve["epoch"], curve["value"], color=colours[level], lw=1, alpha=0.8,
                    label=str(level) if i == 0 else None)
    positive = data.loc[data["value"] > 0, "value"]
    if log and len(positive) and positive.max() > log_top:
        ax.set_ylim(positive.min() / 2, log_top)  # fixed before the log scale would autoscale
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.legend(title=hue, fontsize=8)
