"""render.*_png draw the same pictures as plots.*_figure + save_figure, through cached figures.

Pixels are compared after decoding both PNGs with matplotlib.image.imread (floats in 0..1).
Tolerance: render composites the static artists that lie above a changing one (data points and
tick marks above the probability image, legends above the curves) with float arithmetic
instead of Agg's 8-bit blending, so under those artists a channel may differ by a few rounding
steps; everywhere else the same Agg calls draw the same pixels. Observed: at most 4/255, so
TOL = 6/255. A leaked contour or curve, a stale image or a wrong title changes pixels by far
more (a black line over a pastel background: > 100/255), and most pixels must be identical.
"""

import io

import numpy as np
import pytest
from matplotlib.image import imread
from PIL import Image

from backprop_lab.core.data import load_dataset
from backprop_lab.core.mlp import MLP
from backprop_lab.core.optim import make_optimizer
from backprop_lab.core.rng import make_rng
from backprop_lab.core.train import train
from backprop_lab.figures import plots, render

TOL = 6 / 255


def _png(fig) -> bytes:
    buf = io.BytesIO()
    plots.save_figure(fig, buf)
    return buf.getvalue()


def _pixels(png: bytes) -> np.ndarray:
    return imread(io.BytesIO(png))


def assert_same_picture(fast: bytes, reference: bytes):
    a, b = _pixels(fast), _pixels(reference)
    assert a.shape == b.shape
    diff = np.abs(a - b)
    assert diff.max() <= TOL, f"max abs difference {diff.max() * 255:.1f}/255"
    assert (diff.max(axis=2) > 0).mean() < 0.1  # differences only under the composited layers
    assert Image.open(io.BytesIO(fast)).info["dpi"] == pytest.approx((plots.DPI, plots.DPI), abs=0.01)


def boundary_pair(model, params, dataset, **kw):
    return (render.decision_boundary_png(model, params, dataset, **kw),
            _png(plots.decision_boundary_figure(model, params, dataset, **kw)))


@pytest.fixture(scope="module")
def moons():
    return load_dataset("moons", rng=make_rng(0, "data"))


@pytest.fixture(scope="module")
def trained(moons):
    """(model, initial params, trained TrainResult) of a 2-16-1 ReLU net on moons."""
    model = MLP((2, 16, 1), activation="relu")
    params = model.init_params("he", make_rng(0, "init"))
    result = train(model, params, moons, make_optimizer("gd", 0.5), epochs=300, rng=make_rng(0, "shuffle"))
    return model, params, result


@pytest.fixture(autouse=True)
def fresh_cache():
    render.clear_cache()
    yield
    render.clear_cache()


def test_boundary_matches_reference_across_cache_reuse(moons, trained):
    model, init, result = trained
    circles = load_dataset("circles", rng=make_rng(0, "data"))
    model_c = MLP((2, 8, 8, 1), activation="tanh")
    params_c = model_c.init_params("xavier", make_rng(1, "init"))
    diverged = {k: np.full_like(v, np.nan) for k, v in result.params.items()}
    runs = [(model, init, moons), (model, result.params, moons),  # a cache miss, then a hit
            (model_c, params_c, circles),  # another dataset, another model
            (model, result.params, moons),  # back to the first layout
            (model, diverged, moons),  # NaN: blank image, "[non-finite output]" title
            (model, result.params, moons),  # the usual title again after the diverged one
            (model, {k: v.astype(np.float32) for k, v in result.params.items()}, moons)]
    for m, params, ds in runs:
        fast, ref = boundary_pair(m, params, ds)
        assert_same_picture(fast, ref)
    assert len(render._BOUNDARY) == 2  # one layout per dataset


def test_boundary_without_a_half_line_and_with_another_grid(moons, trained):
    model, init, _ = trained
    # P(y=1) > 0.5 everywhere: no contour, after a run that had one
    always_one = {k: (np.full_like(v, 5.0) if k == "b2" else v) for k, v in init.items()}
    assert_same_picture(*boundary_pair(model, init, moons))
    assert_same_picture(*boundary_pair(model, always_one, moons))
    assert_same_picture(*boundary_pair(model, init, moons, grid=60))


def test_cached_boundary_does_not_keep_the_previous_contour(moons, trained):
    """A run with a 0.5 line, then one without on the same cached figure: the line is gone."""
    model, init, _ = trained
    with_line = render.decision_boundary_png(model, init, moons)
    no_line = {k: (np.full_like(v, -5.0) if k == "b2" else v) for k, v in init.items()}
    fast, ref = boundary_pair(model, no_line, moons)
    assert_same_picture(fast, ref)
    # the two fast pictures do differ a lot (the test could see a leaked black line)
    assert np.abs(_pixels(with_line) - _pixels(fast)).max() > 0.3


def _history(n_epochs, scale=1.0, rate=100.0):
    e = np.arange(n_epochs)
    return {"epoch": e, "train/loss": scale * np.exp(-e / rate),
            "test/loss": scale * np.exp(-e / (1.2 * rate)),
            "train/acc": 1 - 0.5 * np.exp(-e / rate), "test/acc": 0.95 - 0.45 * np.exp(-e / rate)}


def test_curves_match_reference_across_cache_reuse(trained):
    _, _, result = trained
    histories = [result.history, _history(300, scale=3.0),  # same epochs, another y range: hit
                 _history(1000), _history(57, scale=0.01),  # other lengths (a diverged run)
                 _history(300, rate=10.0), _history(1), _history(0)]
    for h in histories:
        assert_same_picture(render.curves_png(h), _png(plots.curves_figure(h)))


def test_cached_curves_do_not_keep_the_previous_lines():
    high = _history(300, scale=50.0)
    low = _history(300, scale=0.02, rate=5.0)
    first = render.curves_png(high)
    fast = render.curves_png(low)  # same epoch range: the cached figure is reused
    assert len(render._CURVES) == 1
    assert_same_picture(fast, _png(plots.curves_figure(low)))
    assert np.abs(_pixels(first) - _pixels(fast)).max() > 0.3


def test_caches_are_bounded(moons, trained):
    model, init, _ = trained
    for n in range(render.MAX_LAYOUTS + 3):
        render.curves_png(_history(n + 2))
    assert len(render._CURVES) == render.MAX_LAYOUTS


def test_boundary_pixels_are_the_png_picture_and_scale_with_dpi(moons, trained):
    model, _, result = trained
    png = render.decision_boundary_png(model, result.params, moons)
    pixels = render.decision_boundary_pixels(model, result.params, moons)
    rgba = np.asarray(Image.open(io.BytesIO(png)))
    assert pixels.dtype == np.uint8 and pixels.shape == rgba.shape[:2] + (3,)
    assert (rgba[..., 3] == 255).all() and np.array_equal(pixels, rgba[..., :3])  # opaque: RGB suffices
    rgb_png = render.encode_png(pixels)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(rgb_png))), pixels)  # lossless RGB PNG
    assert len(rgb_png) < len(png)
    small = render.decision_boundary_pixels(model, result.params, moons, grid=100, dpi=64)
    w, h = plots.FIGSIZE
    assert small.shape == (round(h * 64), round(w * 64), 3)  # (230, 256, 3)
    again = render.decision_boundary_pixels(model, result.params, moons)
    assert np.array_equal(again, pixels)  # the small layout is cached apart from the full one
