"""Whole-model gradients: finite differences, closed forms, and the fused engine path vs the plain one."""

import numpy as np
import pytest

from backprop_lab.core import mlp as mlp_module
from backprop_lab.core.mlp import MLP
from backprop_lab.core.rng import make_rng

ACTS = ["relu", "leaky_relu", "tanh", "sigmoid"]
DEPTHS = {1: (3, 1), 2: (3, 5, 1), 3: (3, 4, 6, 1)}


def setup(sizes, act, n=9, seed=0, dtype=np.float64):
    model = MLP(sizes, act, leaky_slope=0.05)
    rng = make_rng(seed, "test")
    params = model.init_params("xavier", rng, dtype=dtype)
    for p in params.values():  # non-zero biases so that their gradients are exercised
        p += (0.1 * rng.standard_normal(p.shape)).astype(dtype)
    X = rng.standard_normal((n, sizes[0])).astype(dtype)
    y = (rng.random(n) > 0.5).astype(dtype)
    return model, params, X, y


def fd_grads(model, params, X, y, h=1e-6):
    out = {}
    for k, p in params.items():
        g = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            lp = model.loss(params, X, y)
            p[i] = old - h
            lm = model.loss(params, X, y)
            p[i] = old
            g[i] = (lp - lm) / (2 * h)
        out[k] = g
    return out


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("act", ACTS)
def test_grads_match_finite_differences(act, depth):
    model, params, X, y = setup(DEPTHS[depth], act)
    loss, grads = model.loss_and_grads(params, X, y)
    assert list(grads) == list(params) == model.param_names
    assert loss == model.loss(params, X, y)
    num = fd_grads(model, params, X, y)
    for k in params:
        assert grads[k].shape == params[k].shape
        np.testing.assert_allclose(grads[k], num[k], rtol=1e-5, atol=1e-9, err_msg=k)


def test_fd_test_catches_a_wrong_gradient():
    # The comparison above must be able to fail: a 1% error in db1 is far outside its tolerance.
    model, params, X, y = setup(DEPTHS[2], "tanh")
    _, grads = model.loss_and_grads(params, X, y)
    num = fd_grads(model, params, X, y)
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(grads["b1"] * 1.01, num["b1"], rtol=1e-5, atol=1e-9)


def test_closed_form_one_hidden_layer():
    model, params, X, y = setup((3, 6, 1), "relu", n=20)
    _, grads = model.loss_and_grads(params, X, y)
    # Independent re-derivation with plain numpy.
    Z1 = X @ params["W1"] + params["b1"]
    A1 = np.maximum(Z1, 0)
    z = (A1 @ params["W2"]).ravel() + params["b2"][0]
    p = 1 / (1 + np.exp(-z))
    dz = (p - y) / 20
    np.testing.assert_allclose(grads["W2"], A1.T @ dz[:, None], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["b2"], [dz.sum()], rtol=1e-12, atol=1e-15)
    dZ1 = dz[:, None] * params["W2"].T * (Z1 > 0)
    np.testing.assert_allclose(grads["W1"], X.T @ dZ1, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(grads["b1"], dZ1.sum(axis=0), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(model.predict_proba(params, X), p, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("block_bytes", [96, 1 << 18])  # many row blocks / one block
def test_fused_path_equals_plain_path(act, dtype, block_bytes, monkeypatch):
    model, params, X, y = setup((3, 4, 6, 1), act, n=37, dtype=dtype)
    loss, grads = model.loss_and_grads(params, X, y)
    monkeypatch.setattr(mlp_module, "BLOCK_BYTES", block_bytes)
    ws = model.workspace(37, dtype)
    assert (ws.rows < 37) == (block_bytes == 96)
    loss2, grads2 = model.loss_and_grads(params, X, y, ws, track_units=True)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    assert loss2 == pytest.approx(loss, rel=tol)
    assert list(grads2) == list(params)
    for k in params:
        assert grads2[k].dtype == dtype
        np.testing.assert_allclose(grads2[k], grads[k], rtol=tol, atol=tol * 1e-2, err_msg=k)
    np.testing.assert_allclose(ws.logits, model.forward(params, X)[0], rtol=tol, atol=tol)
    for layer, A in enumerate(_hidden_activations(model, params, X), start=1):
        level = A.sum(axis=0) if act == "relu" else A.max(axis=0)
        np.testing.assert_allclose(ws.unit_level[layer], level, rtol=tol, atol=tol)
    # The same call again is bit-identical (buffers are reused, not accumulated into).
    loss3, grads3 = model.loss_and_grads(params, X, y, ws)
    assert loss3 == loss2
    for k in params:
        np.testing.assert_array_equal(grads3[k], grads2[k])


@pytest.mark.parametrize("act", ACTS)
def test_forward_into_buffers_is_the_plain_forward_bit_for_bit(act):
    model, params, X, _ = setup((3, 4, 6, 1), act, n=37, dtype=np.float64)
    out = model.forward_buffers(37)
    assert [b.shape for b in out] == [(37, 4), (37, 6), (37, 1)]
    logits, _ = model.forward(params, X, out=out)
    assert np.shares_memory(logits, out[-1]) and np.array_equal(logits, model.forward(params, X)[0])


def test_workspace_gradients_are_views_of_one_flat_buffer():
    model, params, X, y = setup((3, 4, 6, 1), "relu", n=37, dtype=np.float64)
    ws = model.workspace(37, np.float64, rows=5)  # several blocks: tmp is added in one call
    _, grads = model.loss_and_grads(params, X, y, ws)
    assert list(grads) == model.param_names == list(model.param_shapes)
    np.testing.assert_array_equal(ws.grad_flat, np.concatenate([grads[k].ravel() for k in grads]))
    assert all(g.base is ws.grad_flat and g.shape == params[k].shape for k, g in grads.items())


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
@pytest.mark.parametrize("rows", [5, 37])
def test_unit_level_finds_exactly_the_dead_units(act, rows):
    # relu: a column sum; leaky_relu: a column max; both > 0 exactly where the max activation is.
    model, params, X, y = setup((3, 6, 4, 1), act, n=37, dtype=np.float64)
    params["b1"][[0, 3]] = -1e3  # dead: no row activates them
    params["b2"][1] = -1e3
    params["b1"][4] = -(X @ params["W1"][:, 4]).max() + 1e-9  # barely alive: one row, by 1e-9
    ws = model.workspace(37, np.float64, rows=rows)
    model.loss_and_grads(params, X, y, ws, track_units=True)
    for layer, A in enumerate(_hidden_activations(model, params, X), start=1):
        assert np.array_equal(ws.unit_level[layer] <= 0, A.max(axis=0) <= 0), layer
    assert (ws.unit_level[1] <= 0).tolist() == [True, False, False, True, False, False]


@pytest.mark.parametrize("rows", [1, 5, 19, 37, 100])
def test_workspace_rows_set_the_blocks_and_keep_the_gradients(rows):
    model, params, X, y = setup((3, 4, 6, 1), "tanh", n=37, dtype=np.float64)
    loss, grads = model.loss_and_grads(params, X, y)
    ws = model.workspace(37, np.float64, rows=rows)
    assert ws.rows == min(rows, 37)
    loss2, grads2 = model.loss_and_grads(params, X, y, ws)
    assert loss2 == pytest.approx(loss, rel=1e-12)
    for k in params:
        np.testing.assert_allclose(grads2[k], grads[k], rtol=1e-12, atol=1e-14, err_msg=k)


def _hidden_activations(model, params, X):
    return [model._act_fwd(Z)[0] for Z in model.preactivations(params, X)]


def test_old_cache_stays_valid_and_params_untouched():
    # The gradient check calls forward/loss many times between backward passes.
    model, params, X, y = setup((3, 5, 1), "relu")
    before = {k: v.copy() for k, v in params.items()}
    logits, cache = model.forward(params, X)
    model.forward(params, X[::-1].copy())
    model.loss_and_grads(params, X[:4], y[:4], model.workspace(4))
    grads = model.backward(logits - y, cache)
    logits2, cache2 = model.forward(params, X)
    for k, g in model.backward(logits2 - y, cache2).items():
        np.testing.assert_array_equal(g, grads[k])
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])


def test_shapes_and_preactivations():
    model, params, X, y = setup((3, 5, 4, 1), "tanh", n=11)
    logits, _ = model.forward(params, X)
    assert logits.shape == (11,)
    p = model.predict_proba(params, X)
    assert p.shape == (11,) and ((p > 0) & (p < 1)).all()
    Zs = model.preactivations(params, X)
    assert [Z.shape for Z in Zs] == [(11, 5), (11, 4)]
    np.testing.assert_allclose(Zs[0], X @ params["W1"] + params["b1"])


@pytest.mark.parametrize("kwargs, match", [
    ({"layer_sizes": (2, 10, 2)}, "must end with 1"),
    ({"layer_sizes": (2, 0, 1)}, "positive integers"),
    ({"layer_sizes": (2,)}, "positive integers"),
    ({"activation": "gelu"}, "unknown activation 'gelu'; valid: relu, leaky_relu, tanh, sigmoid"),
    ({"activation": "leaky_relu", "leaky_slope": 1.5}, r"leaky_slope must be in \[0, 1\)"),
])
def test_bad_construction_raises_one_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as exc:
        MLP(**kwargs)
    assert "\n" not in str(exc.value)


def test_workspace_size_mismatch_is_an_error():
    model, params, X, y = setup((3, 5, 1), "relu", n=9)
    with pytest.raises(ValueError, match="workspace is for batches of 8 rows, got 9"):
        model.loss_and_grads(params, X, y, model.workspace(8))
