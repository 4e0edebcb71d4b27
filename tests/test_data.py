"""Datasets: shapes, labels, fixed extents, determinism; and independence of the rng streams."""

import dataclasses

import numpy as np
import pytest

from backprop_lab.core.data import DATASETS, load_dataset
from backprop_lab.core.mlp import MLP
from backprop_lab.core.rng import STREAMS, make_rng


@pytest.mark.parametrize("name", list(DATASETS))
def test_shapes_labels_split(name):
    d = load_dataset(name, rng=make_rng(0, "data"))
    assert d.name == name
    assert d.X_train.shape == (320, 2) and d.X_test.shape == (80, 2)
    assert d.y_train.shape == (320,) and d.y_test.shape == (80,)
    y = np.r_[d.y_train, d.y_test]
    assert set(np.unique(y)) == {0.0, 1.0} and y.sum() == 200  # balanced
    assert d.X_train.dtype == d.y_train.dtype == np.float64
    assert 0.3 < d.y_test.mean() < 0.7  # shuffled before the split
    x_min, x_max, y_min, y_max = d.extent
    X = np.r_[d.X_train, d.X_test]
    inside = (X[:, 0] > x_min) & (X[:, 0] < x_max) & (X[:, 1] > y_min) & (X[:, 1] < y_max)
    assert inside.mean() > 0.99  # the fixed box shows the data at default noise


@pytest.mark.parametrize("name", list(DATASETS))
def test_deterministic_and_seed_dependent(name):
    a = load_dataset(name, rng=make_rng(3, "data"), n_samples=101, noise=0.2, test_fraction=0.3)
    b = load_dataset(name, rng=make_rng(3, "data"), n_samples=101, noise=0.2, test_fraction=0.3)
    c = load_dataset(name, rng=make_rng(4, "data"), n_samples=101, noise=0.2, test_fraction=0.3)
    for f in ("X_train", "y_train", "X_test", "y_test"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.X_train, c.X_train)
    assert a.X_test.shape == (30, 2) and a.X_train.shape == (71, 2)
    assert a.extent == c.extent == DATASETS[name][2]  # not data-dependent


def test_blobs_is_the_notebooks_data():
    d = load_dataset("blobs", rng=make_rng(0, "data"), n_samples=20000)
    X, y = np.r_[d.X_train, d.X_test], np.r_[d.y_train, d.y_test]
    np.testing.assert_allclose(X[y == 0].mean(axis=0), [-2, -2], atol=0.05)
    np.testing.assert_allclose(X[y == 1].mean(axis=0), [2, 2], atol=0.05)
    np.testing.assert_allclose(X[y == 1].std(axis=0), [1, 1], atol=0.03)
    assert DATASETS["blobs"][1] == {"n_samples": 400, "noise": 1.0, "test_fraction": 0.2}


def test_float32_and_read_only_and_frozen():
    d = load_dataset("moons", rng=make_rng(0, "data"), dtype=np.float32)
    d64 = load_dataset("moons", rng=make_rng(0, "data"))
    assert d.X_train.dtype == d.y_test.dtype == np.float32
    np.testing.assert_array_equal(d.X_train, d64.X_train.astype(np.float32))
    with pytest.raises(ValueError):
        d.X_train[0, 0] = 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        d.name = "other"


@pytest.mark.parametrize("name, params, match", [
    ("mnist", {}, "unknown dataset 'mnist'; valid: blobs, moons, circles, xor, spirals"),
    ("moons", {"n_sample": 10}, "unknown parameter 'n_sample'; valid: n_samples, noise, test_fraction"),
    ("moons", {"n_samples": 2}, "n_samples=2 is invalid; must be an integer >= 4"),
    ("moons", {"noise": -0.1}, "noise=-0.1 is invalid; must be a finite number >= 0"),
    ("moons", {"test_fraction": 1.0}, r"test_fraction=1.0 is invalid; must be in \(0, 1\)"),
    ("moons", {"n_samples": 10, "test_fraction": 0.01}, "leave both splits non-empty"),
])
def test_bad_input_raises_one_clear_line(name, params, match):
    with pytest.raises(ValueError, match=match) as exc:
        load_dataset(name, rng=make_rng(0, "data"), **params)
    assert "\n" not in str(exc.value)


def test_streams_are_independent_and_reproducible():
    draws = {s: make_rng(5, s).random(4) for s in STREAMS}
    assert len({tuple(v) for v in draws.values()}) == len(STREAMS)
    np.testing.assert_array_equal(make_rng(5, "data").random(4), draws["data"])
    assert not np.array_equal(make_rng(6, "data").random(4), draws["data"])
    with pytest.raises(ValueError, match="seed must be a non-negative integer"):
        make_rng(-1, "data")
    with pytest.raises(ValueError, match="stream must be a non-empty name"):
        make_rng(0, "")


def test_changing_the_width_leaves_the_data_bit_identical():
    def data_after_init(width):
        init_rng, data_rng = make_rng(0, "init"), make_rng(0, "data")
        params = MLP((2, width, 1)).init_params("he", init_rng)  # draws ~width*3 numbers first
        return params, load_dataset("xor", rng=data_rng)

    p10, d10 = data_after_init(10)
    p500, d500 = data_after_init(500)
    np.testing.assert_array_equal(d10.X_train, d500.X_train)
    np.testing.assert_array_equal(d10.y_test, d500.y_test)
    assert p10["W1"].shape != p500["W1"].shape
