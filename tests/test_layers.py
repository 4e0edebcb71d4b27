"""Every layer's backward pass against central differences of its own forward pass (float64)."""

import numpy as np
import pytest

from backprop_lab.core import layers
from backprop_lab.core.layers import ACTIVATIONS
from backprop_lab.core.rng import make_rng


def numeric_grad(f, x, h=1e-6):
    """Central differences of the scalar f() with respect to every element of x (modified in place)."""
    g = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + h
        fp = f()
        x[i] = old - h
        fm = f()
        x[i] = old
        g[i] = (fp - fm) / (2 * h)
    return g


def away_from_zero(rng, shape):
    """Inputs with |x| >= 0.1 so that a +-1e-6 step never crosses the ReLU kink."""
    x = rng.uniform(0.1, 2.0, shape)
    return x * rng.choice([-1.0, 1.0], shape)


def fwd(name, x, out=None):
    f = ACTIVATIONS[name][0]
    return f(x, 0.05, out=out) if name == "leaky_relu" else f(x, out=out)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_backward_matches_central_differences(name):
    rng = make_rng(1, "test")
    x, G = away_from_zero(rng, (6, 5)), rng.standard_normal((6, 5))
    out, cache = fwd(name, x.copy())
    dx = ACTIVATIONS[name][1](G, cache)
    num = numeric_grad(lambda: float(np.sum(fwd(name, x.copy())[0] * G)), x)
    np.testing.assert_allclose(dx, num, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_in_place_equals_fresh(name):
    rng = make_rng(2, "test")
    x, G = rng.standard_normal((4, 3)), rng.standard_normal((4, 3))
    fresh, cache = fwd(name, x)
    assert not np.shares_memory(fresh, x)
    buf = x.copy()
    inplace, cache2 = fwd(name, buf, out=buf)
    assert inplace is buf
    np.testing.assert_array_equal(fresh, inplace)
    d_fresh = ACTIVATIONS[name][1](G, cache)
    g = G.copy()
    d_inplace = ACTIVATIONS[name][1](g, cache2, out=g)
    assert d_inplace is g
    np.testing.assert_array_equal(d_fresh, d_inplace)


def test_activation_values():
    x = np.array([[-2.0, 0.0, 3.0]])
    np.testing.assert_array_equal(layers.relu_forward(x)[0], [[0.0, 0.0, 3.0]])
    np.testing.assert_allclose(layers.leaky_relu_forward(x, 0.1)[0], [[-0.2, 0.0, 3.0]])
    np.testing.assert_allclose(layers.tanh_forward(x)[0], np.tanh(x))
    np.testing.assert_allclose(layers.sigmoid_forward(x)[0], 1 / (1 + np.exp(-x)), rtol=1e-15)
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # no overflow warnings at extreme inputs
        s = layers.sigmoid_forward(np.array([[-1e3, 1e3]]))[0]
    np.testing.assert_array_equal(s, [[0.0, 1.0]])


def test_linear_backward_matches_central_differences():
    rng = make_rng(3, "test")
    x, W, b = rng.standard_normal((5, 3)), rng.standard_normal((3, 4)), rng.standard_normal(4)
    G = rng.standard_normal((5, 4))
    out, cache = layers.linear_forward(x, W, b)
    assert out.shape == (5, 4)
    dx, dW, db = layers.linear_backward(G, cache)
    def loss():
        return float(np.sum(layers.linear_forward(x, W, b)[0] * G))

    np.testing.assert_allclose(dx, numeric_grad(loss, x), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(dW, numeric_grad(loss, W), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(db, numeric_grad(loss, b), rtol=1e-7, atol=1e-9)
    # Closed forms, and need_dx=False skips dx.
    np.testing.assert_allclose(dW, x.T @ G)
    np.testing.assert_allclose(db, G.sum(axis=0))
    assert layers.linear_backward(G, cache, need_dx=False)[0] is None
