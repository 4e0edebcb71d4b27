"""Figures for runs and sweeps. Every ``*_figure`` function returns a ``matplotlib.figure.Figure``.

Figures are built with ``Figure()`` directly, never through ``pyplot``: nothing is shown, no
global figure list grows during a sweep of hundreds of runs, and no GUI backend is touched
(the Agg canvas is attached explicitly). Save with :func:`save_figure` (DPI and fast PNG
compression in one place).

Speed matters because a sweep renders three figures per run inside a tracking budget of
0.15 s per run. Profiling showed text layout dominating, so: axes sit at fixed positions (no
constrained/tight layout, which measures every tick label twice), ticks are few and placed
explicitly, the decision boundary is one ``imshow`` plus a single 0.5 contour instead of a
filled ``contourf`` (dozens of polygons), and ``DPI`` is modest. docs/gradcheck.md ("Plot
timings") has the measured cost.
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

#: dots per inch used for saved PNGs (figure sizes below are in inches).
DPI = 80
FIGSIZE = (4.0, 3.6)
CURVES_FIGSIZE = (7.0, 2.8)
# Fixed axes rectangles [left, bottom, width, height] in figure fractions.
MAIN_RECT = (0.13, 0.11, 0.82, 0.8)
PROBA_CMAP = "RdBu_r"  # class 0 blue, class 1 red, 0.5 white
POINT_CMAP = ListedColormap(["#2166ac", "#b2182b"])


def _figure(figsize) -> Figure:
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)  # explicit Agg canvas: savefig never looks for a GUI backend
    return fig


def save_figure(fig: Figure, path) -> None:
    """Write ``fig`` as PNG at ``DPI``; zlib level 1 is ~3x faster than the default 6 and the
    files of these flat-colour plots grow by only ~20 %."""
    fig.savefig(path, dpi=DPI, format="png", pil_kwargs={"compress_level": 1})


def _set_extent(ax, extent):
    xmin, xmax, ymin, ymax = extent
    ax.set_xlim(xmin, xmax)
    ax.set_ylim(ymin, ymax)
    ax.set_xticks(np.linspace(xmin, xmax, 3))  # few, explicit ticks: tick artists are costly
    ax.set_yticks(np.linspace(ymin, ymax, 3))
    ax.tick_params(labelsize=7)
    ax.set_xlabel("x1", fontsize=8)
    ax.set_ylabel("x2", fontsize=8, labelpad=1)


def _scatter_split(ax, dataset):
    """Train points as filled circles, test points as crosses, coloured by class."""
    ax.scatter(dataset.X_train[:, 0], dataset.X_train[:, 1], c=dataset.y_train, cmap=POINT_CMAP,
               vmin=0, vmax=1, s=10, edgecolors="k", linewidths=0.3, label="train")
    ax.scatter(dataset.X_test[:, 0], dataset.X_test[:, 1], c=dataset.y_test, cmap=POINT_CMAP,
               vmin=0, vmax=1, s=14, marker="x", linewidths=0.8, label="test")


def data_figure(dataset) -> Figure:
    """Scatter of ``dataset`` (X_train: (N, 2), y_train: (N,), X_test, y_test) on its extent."""
    fig = _figure(FIGSIZE)
    ax = fig.add_axes(MAIN_RECT)
    _scatter_split(ax, dataset)
    _set_extent(ax, dataset.extent)
    ax.legend(loc="upper left", fontsize=7)
    ax.set_title(f"{dataset.name}: {len(dataset.y_train)} train / {len(dataset.y_test)} test",
                 fontsize=9)
    return fig


def dataset_digest(dataset) -> str:
    """sha256 of a dataset's name, extent and arrays: the cache key of its pictures."""
    h = hashlib.sha256(repr((dataset.name, dataset.extent)).encode())
    for a in (dataset.X_train, dataset.y_train, dataset.X_test, dataset.y_test):
        h.update(str(a.dtype).encode() + np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def data_png(dataset) -> bytes:
    """PNG bytes of :func:`data_figure`, rendered once per distinct dataset in this process.

    Every run of a sweep over the same data config logs the same ``plots/data.png``; caching
    it removes one of the three renders from each run (~1/4 .. 1/3 of the plot time).
    """
    key = dataset_digest(dataset)
    if key not in _DATA_PNG_CACHE:
        if len(_DATA_PNG_CACHE) >= 8:  # a sweep uses a handful of datasets; stay bounded
            _DATA_PNG_CACHE.pop(next(iter(_DATA_PNG_CACHE)))
        buf = io.BytesIO()
        save_figure(data_figure(dataset), buf)
        _DATA_PNG_CACHE[key] = buf.getvalue()
    return _DATA_PNG_CACHE[key]


_DATA_PNG_CACHE: dict[str, bytes] = {}


def curves_figure(history) -> Figure:
    """Loss and accuracy per epoch, train and test.

    history: mapping with ``"epoch"`` and ``"train/loss"``, ``"test/loss"``, ``"train/acc"``,
    ``"test/acc"``, each (E,) (the TrainResult.history names).
    """
    fig = _figure(CURVES_FIGSIZE)
    ax_loss = fig.add_axes((0.08, 0.16, 0.38, 0.72))
    ax_acc = fig.add_axes((0.58, 0.16, 0.38, 0.72))
    epoch = np.asarray(history["epoch"])
    for ax, metric, label, corner in ((ax_loss, "loss", "BCE loss", "upper right"),
                                      (ax_acc, "acc", "accuracy", "lower right")):
        for split, style in (("train", "-"), ("test", "--")):
            ax.plot(epoch, np.asarray(history[f"{split}/{metric}"]), style, label=split)
        # Few ticks: creating tick artists is most of the render time of this figure.
        ax.xaxis.set_major_locator(MaxNLocator(3, integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(3))
        ax.tick_params(labelsize=7)
        ax.set_xlabel("epoch", fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc=corner)  # a fixed corner: loc="best" scans every data point
    ax_acc.set_ylim(-0.02, 1.02)
    ax_acc.set_yticks([0.0, 0.5, 1.0])
    return fig


def boundary_grid(extent, grid):
    """The lattice of the decision boundary: xx, yy (grid, grid) over ``extent``."""
    xmin, xmax, ymin, ymax = extent
    return np.meshgrid(np.linspace(xmin, xmax, grid), np.linspace(ymin, ymax, grid))


def boundary_proba(model, params, points, grid) -> np.ndarray:
    """P(y=1) at ``points`` (grid*grid, 2) -> (grid, grid); NaN where the model diverged."""
    with np.errstate(all="ignore"):  # a diverged model may give NaN: drawn blank, not raised
        return np.asarray(model.predict_proba(params, points)).reshape(grid, grid)


def boundary_title(dataset, finite: bool, title=None) -> str:
    if title is None:
        title = f"{dataset.name}: P(y=1) blue 0 .. red 1, line 0.5"
    return title if finite else title + " [non-finite output]"


def has_boundary(proba) -> bool:
    """True when the 0.5 line exists: all finite and 0.5 strictly inside the range."""
    return bool(np.isfinite(proba).all() and proba.min() < 0.5 < proba.max())


def boundary_layout(dataset, proba, title):
    """Figure, axes and image of the decision boundary without its 0.5 line (see below)."""
    fig = _figure(FIGSIZE)
    ax = fig.add_axes(MAIN_RECT)
    image = ax.imshow(proba, extent=dataset.extent, origin="lower", cmap=PROBA_CMAP, vmin=0.0,
                      vmax=1.0, alpha=0.6, interpolation="nearest", aspect="auto")
    _scatter_split(ax, dataset)
    _set_extent(ax, dataset.extent)
    # No colorbar: it costs a second axes (~1/3 of the render time); the title says what the
    # shading means and the black line is P = 0.5.
    ax.set_title(title, fontsize=9)
    return fig, ax, image


def boundary_contour(ax, xx, yy, proba):
    """The P = 0.5 line (zorder 2: above the image and the points)."""
    return ax.contour(xx, yy, proba, levels=[0.5], colors="k", linewidths=1.0)


def decision_boundary_figure(model, params, dataset, *, grid=200, title=None) -> Figure:
    """P(y=1 | x) over ``dataset.extent`` on a grid x grid lattice, the 0.5 line and the points.

    The extent is fixed per dataset (not fitted to the points) so that boundaries of different
    runs line up side by side. model.predict_proba(params, X: (grid*grid, 2)) -> (grid*grid,).
    ``render.decision_boundary_png`` draws the same picture faster from a cached figure.
    """
    xx, yy = boundary_grid(dataset.extent, grid)
    points = np.column_stack([xx.ravel(), yy.ravel()]).astype(
        next(iter(params.values())).dtype)  # (grid*grid, 2)
    proba = boundary_proba(model, params, points, grid)
    title = boundary_title(dataset, bool(np.isfinite(proba).all()), title)
    fig, ax, _ = boundary_layout(dataset, proba, title)
    if has_boundary(proba):
        boundary_contour(ax, xx, yy, proba)
    return fig


def heatmap_figure(values, row_labels, col_labels, *, title="", cbar_label="", fmt="{:.2f}",
                   xlabel="", ylabel="") -> Figure:
    """Annotated heatmap of ``values`` (R, C); NaN cells (missing/failed runs) show "n/a".

    Used for sweep summaries, e.g. test accuracy with rows = learning rates, columns = widths.
    fmt: a ``str.format`` pattern for the cell text.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape != (len(row_labels), len(col_labels)):
        raise ValueError(f"heatmap values have shape {values.shape}; expected "
                         f"({len(row_labels)}, {len(col_labels)}) from the row/column labels")
    n_rows, n_cols = values.shape
    width, height = 1.9 + 0.75 * n_cols, 1.2 + 0.45 * n_rows  # inches; margins fixed below
    fig = _figure((width, height))
    ax = fig.add_axes((0.9 / width, 0.6 / height, 0.75 * n_cols / width, 0.45 * n_rows / height))
    masked = np.ma.masked_invalid(values)
    im = ax.imshow(masked, cmap="viridis", aspect="auto")
    ax.set_facecolor("0.85")  # shows through masked (NaN) cells
    finite = values[np.isfinite(values)]
    mid = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(n_rows):
        for j in range(n_cols):
            v = values[i, j]
            text = fmt.format(v) if np.isfinite(v) else "n/a"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="k" if np.isfinite(v) and v > mid else "w" if np.isfinite(v) else "0.3")
    ax.set_xticks(range(n_cols), [str(c) for c in col_labels])
    ax.set_yticks(range(n_rows), [str(r) for r in row_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, cax=fig.add_axes(((1.0 + 0.75 * n_cols) / width, 0.6 / height,
                                       0.15 / width, 0.45 * n_rows / height)), label=cbar_label)
    return fig
