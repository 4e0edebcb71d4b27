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
import math
import textwrap

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


# A sweep's comparison figure: accuracy on one colour scale from chance (0.5) to 1 for every preset.
SUMMARY_CMAP = "viridis"
SUMMARY_CELL = (1.05, 0.62)  # inches per heatmap cell (width, height): room for three text lines
TIE_COLOUR = "#e41a1c"


def summary_figure(means, stds, row_labels, col_labels, *, panel_titles=None, notes=None,
                   highlight=None, row_name="", col_name="", title="", cbar_label="test accuracy",
                   vmin=0.5, vmax=1.0, chance=0.5, max_panels_per_line=3) -> Figure:
    """Heatmap panels (P, R, C) on ONE colour scale vmin..vmax with the chance level marked on it.

    means, stds: (P, R, C) arrays (NaN: no run to average, drawn hatched and "n/a"); every cell
    shows its mean, "± std" (when finite) and ``notes[p, i, j]`` (e.g. "n=2, 1 diverged").
    highlight: (P, R, C) bool, cells outlined (the best and those tied with it). Values below
    vmin take the "under" colour and the colour bar's lower triangle. panel_titles: P strings.
    """
    means = np.asarray(means, dtype=float)
    stds = np.asarray(stds, dtype=float)
    if means.ndim == 2:
        means, stds = means[None], stds[None]
    n_panels, n_rows, n_cols = means.shape
    if (n_rows, n_cols) != (len(row_labels), len(col_labels)) or stds.shape != means.shape:
        raise ValueError(f"summary values have shape {means.shape} (stds {stds.shape}); expected "
                         f"(P, {len(row_labels)}, {len(col_labels)}) from the row/column labels")
    panel_titles = list(panel_titles) if panel_titles is not None else [""] * n_panels
    notes = np.full(means.shape, "", dtype=object) if notes is None else np.asarray(notes, dtype=object)
    highlight = np.zeros(means.shape, bool) if highlight is None else np.asarray(highlight, bool)

    from matplotlib import colormaps
    from matplotlib.colors import Normalize
    from matplotlib.patches import Rectangle

    cmap = colormaps[SUMMARY_CMAP].with_extremes(under="0.3", bad="0.93")
    norm = Normalize(vmin, vmax)
    per_line = max(1, min(n_panels, max_panels_per_line))
    n_lines = -(-n_panels // per_line)
    cw, ch = SUMMARY_CELL
    pw, ph = cw * n_cols, ch * n_rows  # one panel, inches
    left, gap, right, vgap = 0.95, 0.3, 1.4, 0.75
    bottom = 0.55
    body = max(n_lines * ph + (n_lines - 1) * vgap, 1.6)  # the colour bar needs some height
    width = max(left + per_line * pw + (per_line - 1) * gap + right, 4.5)
    # The title wrapped to the figure's width (~13 characters of 9 pt text per inch).
    title = "\n".join(w for line in title.splitlines() for w in textwrap.wrap(line, int(width * 13)))
    top = 0.2 + 0.17 * (title.count("\n") + 1) * bool(title) + 0.25 * any(panel_titles)
    left += (width - (left + per_line * pw + (per_line - 1) * gap + right)) / 2  # centred if widened
    # Whole 0.05 in: a whole number of pixels at 80 or 100 dpi (a fraction would round either way).
    width, height = math.ceil(width * 20) / 20, math.ceil((top + body + bottom) * 20) / 20
    bottom = height - top - body
    fig = _figure((width, height))
    image = None
    for p in range(n_panels):
        line, slot = divmod(p, per_line)
        x0 = left + slot * (pw + gap)
        pad = (body - n_lines * ph - (n_lines - 1) * vgap) / 2  # a short strip sits mid-height
        y0 = height - top - pad - (line + 1) * ph - line * vgap
        ax = fig.add_axes((x0 / width, y0 / height, pw / width, ph / height))
        image = ax.imshow(np.ma.masked_invalid(means[p]), cmap=cmap, norm=norm, aspect="auto",
                          interpolation="nearest")
        for (i, j), v in np.ndenumerate(means[p]):
            if not np.isfinite(v):  # no run to average: hatched, clearly not a colour of the scale
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///",
                                       edgecolor="0.75", linewidth=0))
            dark = np.isfinite(v) and norm(v) < 0.6
            colour = "w" if dark else "k"
            main = f"{v:.3f}" if np.isfinite(v) else "n/a"
            ax.text(j, i - 0.17, main, ha="center", va="center", fontsize=10, color=colour,
                    fontweight="bold")
            sub = f"± {stds[p, i, j]:.3f}" if np.isfinite(v) and np.isfinite(stds[p, i, j]) else ""
            if sub:
                ax.text(j, i + 0.1, sub, ha="center", va="center", fontsize=8, color=colour)
            if notes[p, i, j]:
                ax.text(j, i + 0.34, str(notes[p, i, j]), ha="center", va="center", fontsize=7,
                        color=colour)
            if highlight[p, i, j]:
                ax.add_patch(Rectangle((j - 0.46, i - 0.46), 0.92, 0.92, fill=False,
                                       edgecolor=TIE_COLOUR, linewidth=2.5))
        ax.set_xticks(range(n_cols), [str(c) for c in col_labels], fontsize=8)
        ax.set_yticks(range(n_rows), [str(r) for r in row_labels] if slot == 0 else [], fontsize=8)
        ax.tick_params(length=0)
        ax.set_xlabel(col_name, fontsize=9, labelpad=2)
        if slot == 0:
            ax.set_ylabel(row_name, fontsize=9)
        if panel_titles[p]:
            ax.set_title(panel_titles[p], fontsize=9)
    cax = fig.add_axes(((width - right + 0.25) / width, bottom / height, 0.16 / width, body / height))
    bar = fig.colorbar(image, cax=cax, extend="min")
    ticks = np.round(np.linspace(vmin, vmax, 6), 3)
    bar.set_ticks(ticks, labels=[f"{t:g}" + (" chance" if np.isclose(t, chance) else "") for t in ticks])
    if not np.isclose(ticks, chance).any():
        bar.ax.axhline(chance, color="w", linewidth=1.5)
    bar.ax.tick_params(labelsize=7)
    bar.set_label(cbar_label, fontsize=8)
    if title:
        fig.text(0.5, 1 - 0.1 / height, title, ha="center", va="top", fontsize=9)
    return fig


def gallery_figure(images, titles, *, ncols=None, title="", tile=2.6) -> Figure:
    """Tiles of images (each (H, W, 3|4) floats or uint8, e.g. decision-boundary PNGs) with titles.

    ncols: tiles per line (default: up to 4); tile: inches per tile side.
    """
    images = list(images)
    titles = list(titles)
    if len(images) != len(titles) or not images:
        raise ValueError(f"gallery needs one title per image and at least one image; got "
                         f"{len(images)} images and {len(titles)} titles")
    ncols = ncols or min(len(images), 4)
    nlines = -(-len(images) // ncols)
    head = 0.35 if title else 0.05
    cap = 0.38  # inches for each tile's title (two short lines)
    width, height = ncols * tile, math.ceil((head + nlines * (tile + cap)) * 20) / 20
    head = height - nlines * (tile + cap)  # whole 0.05 in (whole pixels), the slack on top
    fig = _figure((width, height))
    for k, (img, text) in enumerate(zip(images, titles, strict=True)):
        line, slot = divmod(k, ncols)
        y0 = height - head - (line + 1) * (tile + cap)
        ax = fig.add_axes((slot * tile / width, y0 / height, tile / width, tile / height))
        ax.imshow(np.asarray(img), interpolation="antialiased")
        ax.set_axis_off()
        ax.set_title(text, fontsize=7.5, pad=2)
    if title:
        fig.text(0.5, 1 - 0.05 / height, title, ha="center", va="top", fontsize=10)
    return fig
