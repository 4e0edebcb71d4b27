"""CS231n-style layers: ``*_forward(x, ...) -> (out, cache)`` and ``*_backward(dout, cache) -> grads``.

Shapes: N samples, D inputs, H units. A backward pass reads only its cache. Every function
takes an optional ``out=`` buffer so that the training engine can reuse memory between
steps; with ``out=None`` a fresh array is returned (what tests and the gradient check use).
Activation backward passes may write in place (``out=dout``).

The activations cache their *output* A, not their input Z: every derivative used here can be
read off A (relu: A > 0; leaky relu with slope > 0: A > 0; tanh: 1 - A^2; sigmoid: A(1 - A)),
so the engine keeps one (N, H) array per hidden layer instead of two.
"""

from __future__ import annotations

import numpy as np


def linear_forward(x, W, b, out=None):
    """x: (N, D), W: (D, H), b: (H,) -> out = x @ W + b: (N, H); cache = (x, W)."""
    out = np.matmul(x, W, out=out)  # (N, H)
    out += b
    return out, (x, W)


def linear_backward(dout, cache, dx_out=None, need_dx=True, dW_out=None, db_out=None):
    """dout: (N, H) -> (dx: (N, D) or None, dW: (D, H), db: (H,))."""
    x, W = cache
    dW = np.matmul(x.T, dout, out=dW_out)  # (D, H)
    db = np.sum(dout, axis=0, out=db_out)  # (H,)
    dx = np.matmul(dout, W.T, out=dx_out) if need_dx else None  # (N, D)
    return dx, dW, db


def relu_forward(x, out=None):
    """x: (N, H) -> max(x, 0): (N, H); cache = out (A > 0 exactly where x > 0)."""
    out = np.maximum(x, 0, out=out)
    return out, out


def relu_backward(dout, cache, out=None):
    """dout: (N, H) -> dout * [A > 0]: (N, H). The derivative at 0 is taken as 0."""
    return np.multiply(dout, cache > 0, out=out)


def leaky_relu_forward(x, slope=0.01, out=None):
    """x: (N, H) -> x if x > 0 else slope * x: (N, H); cache = (out, slope). Needs 0 <= slope < 1."""
    neg = x < 0
    if out is None:
        out = x.copy()
    elif out is not x:
        np.copyto(out, x)
    np.multiply(out, slope, out=out, where=neg)
    return out, (out, slope)


def leaky_relu_backward(dout, cache, out=None):
    """dout: (N, H) -> dout * (1 if A > 0 else slope): (N, H)."""
    a, slope = cache
    if out is None:
        out = dout.copy()
    elif out is not dout:
        np.copyto(out, dout)
    np.multiply(out, slope, out=out, where=a <= 0)
    return out


def tanh_forward(x, out=None):
    """x: (N, H) -> tanh(x): (N, H); cache = out."""
    out = np.tanh(x, out=out)
    return out, out


def tanh_backward(dout, cache, out=None):
    """dout: (N, H) -> dout * (1 - A^2): (N, H)."""
    d = np.multiply(cache, cache)
    np.subtract(1.0, d, out=d)
    return np.multiply(dout, d, out=out)


def sigmoid_forward(x, out=None):
    """x: (N, H) -> 1 / (1 + exp(-x)): (N, H), overflow-free; cache = out."""
    # 0.5 * (1 + tanh(x / 2)) is the logistic function without any exp overflow.
    out = np.multiply(x, 0.5, out=out)
    np.tanh(out, out=out)
    out += 1.0
    out *= 0.5
    return out, out


def sigmoid_backward(dout, cache, out=None):
    """dout: (N, H) -> dout * A * (1 - A): (N, H)."""
    d = np.subtract(1.0, cache)
    d *= cache
    return np.multiply(dout, d, out=out)


#: name -> (forward, backward); leaky_relu's forward takes the extra ``slope``.
ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "leaky_relu": (leaky_relu_forward, leaky_relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
}
