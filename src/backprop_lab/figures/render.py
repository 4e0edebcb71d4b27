"""Fast PNG bytes of the two per-run figures: the same pictures as
``save_figure(decision_boundary_figure(...))`` and ``save_figure(curves_figure(...))``.

Building a figure and letting ``savefig`` draw it costs ~0.2 s, mostly text layout and glyph
rendering of tick labels, titles and legends, which are the same from one run to the next.
So this module keeps one drawn Figure per *layout* (per dataset for the boundary, per epoch
range for the curves) and per run redraws only what changed, Matplotlib "blitting" style:

1. restore a saved background (``canvas.copy_from_bbox`` / ``restore_region``): everything
   that never changes, drawn once (figure, axes patch, titles, static axes);
2. draw the changing artists with ``Axes.draw_artist`` in the reference z-order;
3. artists that are static but lie *above* a changing one (the data points above the
   probability image, the tick marks next to it; the legends above the curves) are drawn once
   on a transparent canvas (a "layer") and alpha-composited over the buffer with NumPy, a
   fraction of the cost of re-rasterizing 400 markers or re-rendering legend text;
4. encode the RGBA buffer as PNG with zlib level 1 (as ``plots.save_figure``), see _encode.

Step 3 blends in float instead of Agg's 8-bit arithmetic, so a pixel under a point or a legend
may differ from the reference by a rounding step or two (tests/test_render.py bounds it);
everything else is drawn by the same Agg calls and is identical. Layouts are cached per process,
at most ``MAX_LAYOUTS`` of each kind (least recently used dropped). Not thread-safe: a process
renders one run at a time.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections import OrderedDict

import contourpy
import matplotlib as mpl
import numpy as np
from matplotlib.path import Path

from backprop_lab.figures import plots

MAX_LAYOUTS = 8  # a sweep uses a handful of datasets / epoch counts


class _LRU(OrderedDict):
    def get_or_make(self, key, make):
        if key in self:
            self.move_to_end(key)
        else:
            if len(self) >= MAX_LAYOUTS:
                self.popitem(last=False)
            self[key] = make()
        return self[key]


_BOUNDARY: _LRU = _LRU()
_CURVES: _LRU = _LRU()


def clear_cache() -> None:
    """Forget every cached layout (tests; a long-lived process that wants its memory back)."""
    _BOUNDARY.clear()
    _CURVES.clear()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _encode(canvas) -> bytes:
    """The canvas as an RGBA PNG (see encode_png)."""
    return encode_png(np.asarray(canvas.buffer_rgba()))


def encode_png(pixels: np.ndarray, dpi: float = plots.DPI) -> bytes:
    """pixels (H, W, 3 or 4) uint8 -> RGB or RGBA PNG, zlib level 1, no row filter, with the
    `dpi` they were drawn at recorded (pHYs).

    Written by hand (4 chunks) rather than with Pillow: on the boundary figure Pillow's
    encoder (adaptive row filters) took 9 ms against 4 ms here, for a larger file (58 kB
    against 51 kB: these flat-colour plots compress well unfiltered). Same pixels decoded.
    """
    h, w, c = pixels.shape
    rows = np.zeros((h, 1 + c * w), np.uint8)  # each row: filter byte 0 ("none") + pixels
    rows[:, 1:] = pixels.reshape(h, c * w)
    colour = {3: 2, 4: 6}[c]  # PNG colour types: 2 = RGB, 6 = RGBA
    per_metre = round(dpi / 0.0254)
    return b"".join([b"\x89PNG\r\n\x1a\n",
                     _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0)),
                     _chunk(b"pHYs", struct.pack(">IIB", per_metre, per_metre, 1)),
                     _chunk(b"IDAT", zlib.compress(rows.data, 1)),
                     _chunk(b"IEND", b"")])


class _Layer:
    """Static artists drawn once on a transparent canvas, composited "over" it later."""

    def __init__(self, ax, artists):
        canvas = ax.figure.canvas
        canvas.get_renderer().clear()  # transparent
        for a in artists:
            ax.draw_artist(a)
        rgba = np.asarray(canvas.buffer_rgba()).reshape(-1, 4)
        self.index = np.flatnonzero(rgba[:, 3])  # only the covered pixels are blended
        alpha = rgba[self.index, 3:].astype(np.float32) / 255
        self.premultiplied = rgba[self.index, :3] * alpha + np.float32(0.5)  # +0.5: round
        self.keep = 1 - alpha

    def composite(self, canvas):
        """Blend over the canvas buffer (opaque: the figure background is white)."""
        pixels = np.asarray(canvas.buffer_rgba()).reshape(-1, 4)
        under = pixels[self.index, :3]
        pixels[self.index, :3] = (self.premultiplied + self.keep * under).astype(np.uint8)


def _finish_layout(fig, animated, dpi=plots.DPI):
    """Set ``animated`` (drawn per run, not part of the background), draw the background."""
    fig.set_dpi(dpi)  # what savefig(dpi=DPI) sets while it draws
    for a in animated:
        a.set_animated(True)
    fig.canvas.draw()
    return fig.canvas.copy_from_bbox(fig.bbox)


class _BoundaryLayout:
    """One dataset's boundary figure: backgrounds per title, the points + axes layer."""

    def __init__(self, dataset, grid, dpi=plots.DPI):
        self.dpi = dpi
        self.xx, self.yy = plots.boundary_grid(dataset.extent, grid)
        title = plots.boundary_title(dataset, True)
        placeholder = np.zeros((grid, grid))  # the image's data is set per run
        self.fig, self.ax, self.image = plots.boundary_layout(dataset, placeholder, title)
        ax = self.ax
        ramp = (self.xx - self.xx.min()) / np.ptp(self.xx)  # any field crossing 0.5
        self.contour = plots.boundary_contour(ax, self.xx, self.yy, ramp)  # paths set per run
        self.points_layer = [c for c in ax.collections if c is not self.contour]
        self.points_layer += [ax.xaxis, ax.yaxis]  # tick marks touch the image's edge pixels
        self.spines = list(ax.spines.values())
        animated = [self.image, self.contour, *self.points_layer, *self.spines]
        self.backgrounds = {title: _finish_layout(self.fig, animated, dpi)}
        self.layer = _Layer(ax, self.points_layer)
        self._points = {}
        # the contour generator Matplotlib's ax.contour uses (same algorithm and options)
        self._contour_options = dict(
            name=mpl.rcParams["contour.algorithm"], corner_mask=mpl.rcParams["contour.corner_mask"],
            line_type=contourpy.LineType.SeparateCode, chunk_size=0)

    def points(self, dtype):
        """The grid as (grid*grid, 2) model inputs in the parameters' dtype."""
        if dtype not in self._points:
            self._points[dtype] = np.column_stack([self.xx.ravel(), self.yy.ravel()]).astype(dtype)
        return self._points[dtype]

    def background(self, title):
        if title not in self.backgrounds:  # e.g. the "[non-finite output]" variant
            self.ax.set_title(title, fontsize=9)
            self.backgrounds[title] = _finish_layout(self.fig, [], self.dpi)
        return self.backgrounds[title]

    def draw(self, proba, title):
        """Draw the picture of ``proba`` on the layout's canvas (returned)."""
        canvas, ax = self.fig.canvas, self.ax
        canvas.restore_region(self.background(title))
        self.image.set_data(proba)
        ax.draw_artist(self.image)
        self.layer.composite(canvas)
        if plots.has_boundary(proba):
            gen = contourpy.contour_generator(self.xx, self.yy, np.ma.asarray(proba),
                                              **self._contour_options)
            vertices, codes = gen.create_contour(0.5)
            self.contour.set_paths([Path(np.concatenate(vertices), np.concatenate(codes))])
            ax.draw_artist(self.contour)
        for spine in self.spines:
            ax.draw_artist(spine)
        return canvas


def _draw_boundary(model, params, dataset, grid, dpi=plots.DPI):
    layout = _BOUNDARY.get_or_make((plots.dataset_digest(dataset), grid, dpi),
                                   lambda: _BoundaryLayout(dataset, grid, dpi))
    dtype = np.dtype(next(iter(params.values())).dtype)
    proba = plots.boundary_proba(model, params, layout.points(dtype), grid)
    return layout.draw(proba, plots.boundary_title(dataset, bool(np.isfinite(proba).all())))


def decision_boundary_png(model, params, dataset, *, grid=200) -> bytes:
    """PNG bytes of ``plots.decision_boundary_figure(model, params, dataset, grid=grid)`` saved
    with ``plots.save_figure``; the figure of each dataset is drawn once per process."""
    return _encode(_draw_boundary(model, params, dataset, grid))


def decision_boundary_pixels(model, params, dataset, *, grid=200, dpi=plots.DPI) -> np.ndarray:
    """The same picture as ``decision_boundary_png`` as RGB pixels, (H, W, 3) uint8 (a copy:
    what MLflow's ``log_image`` takes; ``encode_png`` turns it into the same PNG, without the
    alpha channel the opaque figure does not need). A smaller ``dpi`` draws the same figure
    with fewer pixels (``plots.FIGSIZE`` inches x dpi), text included."""
    canvas = _draw_boundary(model, params, dataset, grid, dpi)
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


class _CurvesLayout:
    """One epoch range's curves figure: background, the lines, the legends layer."""

    def __init__(self, history):
        self.fig = plots.curves_figure(history)
        self.ax_loss, self.ax_acc = self.fig.axes
        self.axes = (self.ax_loss, self.ax_acc)
        self.lines = [ln for ax in self.axes for ln in ax.get_lines()]  # train, test per axes
        # The loss axes' frame is redrawn over its per-run grid lines, which end on it. The
        # accuracy axes' frame stays in the background: its curves (0..1 in a -0.02..1.02 range,
        # 5 % x margins) stay 3 px or more away from it.
        self.spines = list(self.ax_loss.spines.values())
        legends = [ax.get_legend() for ax in self.axes]
        if not self.ax_loss.get_ylabel():
            # An empty y label is not drawn, but Axis.draw would still measure every tick label
            # to place it (~1/3 of the axis' draw time): give it a fixed position instead.
            self.ax_loss.yaxis.set_label_coords(0.0, 0.5)
        # The loss axes' y range (ticks, labels, grid) changes per run; the epoch axes and the
        # accuracy axes' fixed 0..1 range do not.
        animated = [self.ax_loss.yaxis, *self.lines, *self.spines, *legends]
        self.background = _finish_layout(self.fig, animated)
        self.layer = _Layer(self.ax_loss, legends)

    def render(self, history) -> bytes:
        epoch = np.asarray(history["epoch"])
        for ln, (metric, split) in zip(self.lines, [(m, s) for m in ("loss", "acc")
                                                    for s in ("train", "test")], strict=True):
            ln.set_data(epoch, np.asarray(history[f"{split}/{metric}"]))
        # What a fresh figure's autoscaling would do. Only the loss axes: the epoch range (the
        # cache key) fixes both x ranges and the accuracy axes has a fixed y range.
        self.ax_loss.relim()
        self.ax_loss.autoscale_view()
        canvas = self.fig.canvas
        canvas.restore_region(self.background)
        self.ax_loss.draw_artist(self.ax_loss.yaxis)
        for ln in self.lines:
            ln.axes.draw_artist(ln)
        for spine in self.spines:
            self.ax_loss.draw_artist(spine)
        self.layer.composite(canvas)
        return _encode(canvas)


def curves_png(history) -> bytes:
    """PNG bytes of ``plots.curves_figure(history)`` saved with ``plots.save_figure``; one
    figure per epoch range (first, last epoch) per process."""
    epoch = np.asarray(history["epoch"])
    if epoch.size == 0:  # a run diverged at epoch 0: nothing to reuse, draw the reference way
        buf = io.BytesIO()
        plots.save_figure(plots.curves_figure(history), buf)
        return buf.getvalue()
    key = (float(epoch.min()), float(epoch.max()))
    return _CURVES.get_or_make(key, lambda: _CurvesLayout(history)).render(history)
