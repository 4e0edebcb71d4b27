"""Figures: the expected axes, titles and artists, and real PNG files of the expected size."""

import matplotlib
import numpy as np
import pytest
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.image import AxesImage

from backprop_lab.core.data import load_dataset
from backprop_lab.core.mlp import MLP
from backprop_lab.core.rng import make_rng
from backprop_lab.figures import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def dataset():
    return load_dataset("moons", rng=make_rng(0, "data"))


@pytest.fixture(scope="module")
def model_params():
    model = MLP((2, 8, 1), activation="tanh")
    return model, model.init_params("he", make_rng(0, "init"))


@pytest.fixture
def history():
    e = np.arange(50)
    return {"epoch": e, "train/loss": np.exp(-e / 10), "test/loss": np.exp(-e / 12),
            "train/acc": 1 - 0.5 * np.exp(-e / 5), "test/acc": 1 - 0.5 * np.exp(-e / 6)}


def _png_size(path):
    """(width, height) read from the PNG header."""
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _saved(fig, tmp_path, name):
    path = tmp_path / f"{name}.png"
    plots.save_figure(fig, path)
    assert path.stat().st_size > 1000
    w, h = _png_size(path)
    fw, fh = fig.get_size_inches()
    assert (w, h) == (round(fw * plots.DPI), round(fh * plots.DPI))
    return path


def test_data_figure(dataset, tmp_path):
    fig = plots.data_figure(dataset)
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert "moons" in ax.get_title()
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [len(s.get_offsets()) for s in scatters] == [len(dataset.y_train), len(dataset.y_test)]
    assert (*ax.get_xlim(), *ax.get_ylim()) == pytest.approx(dataset.extent)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["train", "test"]
    _saved(fig, tmp_path, "data")


def test_data_png_is_rendered_once_per_dataset(dataset, tmp_path):
    first = plots.data_png(dataset)
    assert first[:8] == PNG_MAGIC
    assert plots.data_png(dataset) is first  # cached: the same bytes object
    other = load_dataset("moons", rng=make_rng(1, "data"))  # another seed: another picture
    assert plots.data_png(other) != first
    path = tmp_path / "data.png"
    path.write_bytes(first)
    w, h = _png_size(path)
    assert (w, h) == (round(plots.FIGSIZE[0] * plots.DPI), round(plots.FIGSIZE[1] * plots.DPI))


def test_curves_figure(history, tmp_path):
    fig = plots.curves_figure(history)
    ax_loss, ax_acc = fig.axes
    assert ax_loss.get_title() == "BCE loss" and ax_acc.get_title() == "accuracy"
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        lines = ax.get_lines()
        assert [ln.get_label() for ln in lines] == ["train", "test"]
        np.testing.assert_array_equal(lines[0].get_xdata(), history["epoch"])
        np.testing.assert_array_equal(lines[1].get_ydata(), history[f"test/{metric}"])
    _saved(fig, tmp_path, "curves")


def test_decision_boundary_figure(dataset, model_params, tmp_path):
    model, params = model_params
    fig = plots.decision_boundary_figure(model, params, dataset, grid=50, title="run 7")
    (ax,) = fig.axes
    assert ax.get_title() == "run 7"
    (image,) = [im for im in ax.get_images() if isinstance(im, AxesImage)]
    proba = image.get_array()
    assert proba.shape == (50, 50)
    # the image is the model's P(y=1) at the grid corner (x_min, y_min) (origin="lower")
    xmin, xmax, ymin, ymax = dataset.extent
    corner = model.predict_proba(params, np.array([[xmin, ymin]]))[0]
    assert proba[0, 0] == pytest.approx(corner)
    assert tuple(image.get_extent()) == pytest.approx(dataset.extent)
    assert (*ax.get_xlim(), *ax.get_ylim()) == pytest.approx(dataset.extent)
    # the 0.5 contour is drawn (the untrained tanh net crosses 0.5 inside the extent)
    assert 0.0 < proba.min() < 0.5 < proba.max() <= 1.0
    assert any(type(c).__name__ in ("QuadContourSet", "ContourSet") for c in ax.collections)
    assert len([c for c in ax.collections if isinstance(c, PathCollection)]) == 2
    _saved(fig, tmp_path, "boundary")


def test_decision_boundary_of_a_diverged_model_is_drawn_not_raised(dataset, model_params):
    model, params = model_params
    bad = {k: np.full_like(v, np.nan) for k, v in params.items()}
    fig = plots.decision_boundary_figure(model, bad, dataset, grid=20)
    assert "non-finite" in fig.axes[0].get_title()


def test_summary_figure_from_arrays(tmp_path):
    from matplotlib.patches import Rectangle

    means = np.array([[[0.45, 0.9], [np.nan, 1.0]], [[0.7, 0.8], [0.95, 0.99]]])  # (P=2, R=2, C=2)
    stds = np.where(np.isnan(means), np.nan, 0.01)
    stds[1, 1, 1] = np.nan  # a single seed: no spread to write
    notes = np.full(means.shape, "", dtype=object)
    notes[0, 1, 0] = "3 diverged"
    highlight = means >= 0.99
    fig = plots.summary_figure(means, stds, ["0.1", "1.0"], ["4", "16"], panel_titles=["he", "xavier"],
                               notes=notes, highlight=highlight, row_name="lr", col_name="width",
                               title="sweep x")
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == ["he", "xavier"]
    norms = {id(ax.get_images()[0].norm) for ax in panels}
    norm = panels[0].get_images()[0].norm
    assert len(norms) == 1 and (norm.vmin, norm.vmax) == (0.5, 1.0)
    he = [t.get_text() for t in panels[0].texts]
    assert he == ["0.450", "± 0.010", "0.900", "± 0.010", "n/a", "3 diverged", "1.000", "± 0.010"]
    xavier = [t.get_text() for t in panels[1].texts]
    assert "0.990" in xavier and xavier.count("± 0.010") == 3  # no "±" under the single seed
    hatched = [p for p in panels[0].patches if isinstance(p, Rectangle) and p.get_hatch()]
    outlined = [p for ax in panels for p in ax.patches
                if isinstance(p, Rectangle) and not p.get_hatch()]
    assert len(hatched) == 1 and len(outlined) == 2
    image = panels[0].get_images()[0]
    assert tuple(image.cmap(image.norm(0.45))) == tuple(image.cmap.get_under())  # below chance
    labels = [t.get_text() for t in fig.axes[-1].get_yticklabels()]
    assert labels[0] == "0.5 chance" and labels[-1] == "1"
    assert [t.get_text() for t in panels[0].get_yticklabels()] == ["0.1", "1.0"]
    assert {t.get_text() for t in panels[1].get_yticklabels()} == {""}  # rows labelled once per line
    _saved(fig, tmp_path, "summary")
    with pytest.raises(ValueError, match=r"expected \(P, 2, 3\)"):
        plots.summary_figure(means, stds, ["a", "b"], ["c", "d", "e"])


def test_figures_never_touch_pyplot(dataset, history):
    import matplotlib.pyplot as plt  # imported only to look at its figure registry

    before = plt.get_fignums()
    plots.data_figure(dataset)
    plots.curves_figure(history)
    assert plt.get_fignums() == before
    assert matplotlib.get_backend()  # whatever it is, no window was needed
