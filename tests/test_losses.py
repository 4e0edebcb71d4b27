"""Stable BCE from logits: value, gradient p - y, and exactness at extreme logits."""

import numpy as np
import pytest

from backprop_lab.core.losses import bce_loss, bce_sum_and_grad, bce_with_logits, sigmoid
from backprop_lab.core.rng import make_rng


def naive_bce(z, y):
    p = 1 / (1 + np.exp(-z))
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def test_matches_textbook_formula_at_moderate_logits():
    rng = make_rng(0, "test")
    z, y = rng.standard_normal(50) * 3, (rng.random(50) > 0.5).astype(float)
    loss, dz = bce_with_logits(z, y)
    assert loss == pytest.approx(naive_bce(z, y), rel=1e-13)
    assert bce_loss(z, y) == loss
    # The gradient is (p - y) / N, computed here independently.
    np.testing.assert_allclose(dz, (1 / (1 + np.exp(-z)) - y) / 50, rtol=1e-13, atol=1e-17)


def test_gradient_matches_central_differences():
    rng = make_rng(1, "test")
    z, y = rng.standard_normal(7) * 4, rng.random(7)  # soft labels too
    _, dz = bce_with_logits(z, y)
    h = 1e-6
    for i in range(7):
        zp, zm = z.copy(), z.copy()
        zp[i] += h
        zm[i] -= h
        num = (bce_loss(zp, y) - bce_loss(zm, y)) / (2 * h)
        assert dz[i] == pytest.approx(num, rel=1e-6, abs=1e-10)


@pytest.mark.parametrize("z, y, loss, grad", [
    (1e3, 0.0, 1e3, 1.0),    # confidently wrong: loss is exactly |z|
    (-1e3, 1.0, 1e3, -1.0),
    (1e3, 1.0, 0.0, 0.0),    # confidently right: exactly 0
    (-1e3, 0.0, 0.0, 0.0),
])
def test_finite_and_exact_at_extreme_logits(z, y, loss, grad):
    # exp(-1000) underflows to 0 harmlessly; nothing may overflow or divide by zero.
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        value, dz = bce_with_logits(np.array([z]), np.array([y]))
    assert value == loss
    assert dz[0] == grad


def test_mean_over_mixed_extremes():
    z = np.array([1e3, -1e3, 1e3, -1e3])
    y = np.array([0.0, 1.0, 1.0, 0.0])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        loss, dz = bce_with_logits(z, y)
    assert loss == 500.0
    np.testing.assert_array_equal(dz, [0.25, -0.25, 0.0, 0.0])


def test_sigmoid_stable_and_symmetric():
    z = np.array([-1e3, -40.0, -1.0, 0.0, 1.0, 40.0, 1e3])
    with np.errstate(over="raise", divide="raise", invalid="raise"):
        p = sigmoid(z)
    assert p[0] == 0.0 and p[-1] == 1.0 and p[3] == 0.5
    assert p[1] == pytest.approx(np.exp(-40.0), rel=1e-12)  # tiny values keep their precision
    np.testing.assert_allclose(p + sigmoid(-z), 1.0, rtol=1e-15)


def test_engine_kernel_equals_reference():
    rng = make_rng(2, "test")
    z, y = rng.standard_normal(40) * 5, (rng.random(40) > 0.5).astype(float)
    loss, dz = bce_with_logits(z, y)
    total, dz2 = bce_sum_and_grad(z, y, 1 / 40, np.empty(40), np.empty(40))
    assert total / 40 == pytest.approx(loss, rel=1e-14)
    np.testing.assert_allclose(dz2, dz, rtol=1e-14, atol=1e-18)


def test_buffered_kernels_equal_the_fresh_array_formulas_bit_for_bit():
    # The engine's buffers (scratch, -|z| as copysign) change no bit of the loss or of dz.
    rng = make_rng(3, "test")
    z = np.concatenate([rng.standard_normal(60) * 5, [0.0, -0.0, 1e3, -1e3, 40.0, -40.0, 1e-300]])
    y = (rng.random(z.size) > 0.5).astype(float)
    n = z.size
    terms = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
    assert bce_loss(z, y, (np.empty(n), np.empty(n))) == bce_loss(z, y) == float(np.add.reduce(terms)) / n
    e = np.exp(-np.abs(z))
    out = np.maximum(z, 0)
    out -= z * y
    total = float(np.add.reduce(out)) + float(np.add.reduce(np.log1p(e)))
    p = 1.0 / (e + 1.0)
    np.multiply(p, e, out=p, where=z < 0)
    dz = (p - y) * (1 / n)
    for scratch in (None, np.empty(n)):
        total2, dz2 = bce_sum_and_grad(z, y, 1 / n, np.empty(n), np.empty(n), scratch)
        assert total2 == total and np.array_equal(dz2, dz)


def test_float32_stays_float32():
    z, y = np.array([2.0, -1.0], np.float32), np.array([1.0, 0.0], np.float32)
    _, dz = bce_with_logits(z, y)
    assert dz.dtype == np.float32
