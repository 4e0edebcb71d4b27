"""The gradient check against the real MLP: it passes correct gradients everywhere and fails planted bugs."""

import json

import numpy as np
import pytest

from backprop_lab.core.data import load_dataset
from backprop_lab.core.gradcheck import DEFAULT_THRESHOLD, check_gradients, rel_error
from backprop_lab.core.mlp import MLP
from backprop_lab.core.rng import make_rng

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid")
INITS = ("he", "xavier", "xavier_uniform", "lecun", "normal", "he_lecun_output")


@pytest.fixture(scope="module")
def moons():
    ds = load_dataset("moons", rng=make_rng(0, "data"))
    return ds.X_train[:40], ds.y_train[:40]


def _model(act, depth=1, width=6, seed=0, init="he", dtype=np.float64):
    model = MLP((2,) + (width,) * depth + (1,), activation=act)
    return model, model.init_params(init, make_rng(seed, "init"), dtype=dtype)


def _n_elements(params):
    return sum(p.size for p in params.values())


@pytest.mark.parametrize("init", INITS)
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_full_check_passes_for_correct_backprop(moons, act, depth, init):
    X, y = moons
    model, params = _model(act, depth, init=init)
    report = check_gradients(model, params, X, y)
    assert report.passed, report.to_dict()
    assert report.max_rel_error < DEFAULT_THRESHOLD
    assert set(report.per_param) == set(params)
    for name, pc in report.per_param.items():
        # every element is accounted for: checked, at a kink, or a 0-vs-0 dead element
        assert pc.n_checked + pc.n_kink_skipped + pc.n_zero == pc.n_elements == params[name].size
    assert sum(pc.n_checked for pc in report.per_param.values()) > _n_elements(params) // 2
    if act in ("tanh", "sigmoid"):  # smooth: no kinks to skip
        assert report.n_kink_skipped == 0


def test_float32_params_are_checked_in_float64_and_left_untouched(moons):
    X, y = moons
    model, params = _model("tanh", 2, dtype=np.float32)
    before = {k: v.copy() for k, v in params.items()}
    report = check_gradients(model, params, X.astype(np.float32), y.astype(np.float32))
    # float32 differences could not get below ~1e-3 relative error: this proves float64 work
    assert report.passed and report.max_rel_error < 1e-6
    for k in params:
        assert params[k].dtype == np.float32
        np.testing.assert_array_equal(params[k], before[k])


class ScaledDb1(MLP):
    """Planted bug: the b1 gradient comes back doubled."""

    def backward(self, dlogits, cache):
        grads = super().backward(dlogits, cache)
        grads["b1"] = grads["b1"] * 2
        return grads


class OffsetDb2(MLP):
    """Planted bug in a bias only: a small constant leaks into the output-bias gradient."""

    def backward(self, dlogits, cache):
        grads = super().backward(dlogits, cache)
        grads["b2"] = grads["b2"] + 1e-4
        return grads


class OneElementW2(MLP):
    """Planted bug in a single element: W2[3, 0] is 1 % off."""

    def backward(self, dlogits, cache):
        grads = super().backward(dlogits, cache)
        grads["W2"] = grads["W2"].copy()
        grads["W2"][3, 0] *= 1.01
        return grads


def _buggy(cls, act="tanh", depth=1):
    model = cls((2,) + (6,) * depth + (1,), activation=act)
    return model, model.init_params("he", make_rng(0, "init"))


@pytest.mark.parametrize("act", ["tanh", "relu"])
def test_full_check_fails_scaled_db1_and_flags_only_b1(moons, act):
    model, params = _buggy(ScaledDb1, act, depth=2)
    report = check_gradients(model, params, *moons)
    assert not report.passed
    assert report.failed_params() == ["b1"]
    assert report.per_param["b1"].max_rel_error > 0.1  # 2g vs g: 1/3
    assert all(pc.passed for k, pc in report.per_param.items() if k != "b1")


def test_full_check_catches_a_bug_in_a_bias_only(moons):
    model, params = _buggy(OffsetDb2)
    report = check_gradients(model, params, *moons)
    assert report.failed_params() == ["b2"]
    assert report.per_param["b2"].max_rel_error > 1e-3


def test_full_check_catches_a_bug_in_one_element_and_points_at_it(moons):
    model, params = _buggy(OneElementW2)
    report = check_gradients(model, params, *moons)
    w2 = report.per_param["W2"]
    assert report.failed_params() == ["W2"]
    assert w2.worst_index == (3, 0)
    assert w2.max_rel_error > 1e-3
    # the other five elements of W2 are fine: the median stays at noise level
    assert w2.median_rel_error < 1e-7


def test_directional_check_passes_correct_and_catches_scaled_db1(moons):
    model, params = _model("tanh", 2)
    good = check_gradients(model, params, *moons, mode="directional", rng=make_rng(0, "gradcheck"))
    assert good.passed and good.overall is not None and good.overall.n_checked == 32
    assert all(pc.n_checked == 32 for pc in good.per_param.values())

    model, params = _buggy(ScaledDb1, "tanh", depth=2)
    bad = check_gradients(model, params, *moons, mode="directional", rng=make_rng(0, "gradcheck"))
    assert not bad.passed
    assert bad.failed_params() == ["b1"]
    assert not bad.overall.passed  # the joint direction sees it too


def test_directional_check_is_deterministic_for_a_seed(moons):
    model, params = _model("tanh", 1)
    a = check_gradients(model, params, *moons, mode="directional", rng=make_rng(3, "gradcheck"))
    b = check_gradients(model, params, *moons, mode="directional", rng=make_rng(3, "gradcheck"))
    assert a.per_param["W1"].max_rel_error == b.per_param["W1"].max_rel_error


def _relu_with_kink(X):
    """A ReLU net whose unit 0 pre-activation on sample 0 sits at +h/4: a -h step on b1[0] crosses 0."""
    model, params = _model("relu", 1, width=4)
    params["b1"][0] = -(X[0] @ params["W1"][:, 0]) + 2.5e-7
    return model, params


def test_kinks_are_detected_counted_and_kept_apart(moons):
    X, y = moons[0][:8], moons[1][:8]
    model, params = _relu_with_kink(X)
    report = check_gradients(model, params, X, y, h=1e-6)
    b1 = report.per_param["b1"]
    assert b1.n_kink_skipped >= 1 and report.n_kink_skipped >= b1.n_kink_skipped
    # the skipped element really is not differentiable at this step: its error is large ...
    assert b1.kink_max_rel_error > 1e-3
    # ... and it does not leak into the statistics of the checked elements
    assert report.passed and b1.max_rel_error < DEFAULT_THRESHOLD
    # with a smaller step the kink is no longer crossed
    assert check_gradients(model, params, X, y, h=1e-8).per_param["b1"].n_kink_skipped == 0


def test_dead_units_are_counted_as_zero_not_as_checked(moons):
    X, y = moons
    model, params = _model("relu", 1, width=4)
    params["b1"][2] = -100.0  # unit 2 is off for every sample: its gradients are exactly 0
    report = check_gradients(model, params, X, y)
    assert report.passed
    assert report.per_param["W1"].n_zero == 2  # column 2 of W1: (2,)
    assert report.per_param["b1"].n_zero == 1
    assert report.per_param["W2"].n_zero == 1  # row 2 of W2
    assert report.per_param["W1"].n_checked == 6


def test_report_to_dict_is_strict_json(moons):
    model, params = _model("relu", 2)
    for mode in ("full", "directional"):
        report = check_gradients(model, params, *moons, mode=mode, n_directions=4)
        d = json.loads(json.dumps(report.to_dict(), allow_nan=False))
        assert d["mode"] == mode and d["passed"] is True
        assert set(d["per_param"]) == set(params)
        assert {"max_rel_error", "median_rel_error", "n_checked", "n_kink_skipped", "n_zero"} <= set(
            d["per_param"]["W1"])


def test_rel_error_floor_absorbs_rounding_noise_but_not_bugs():
    assert rel_error(1e-12, 1.5e-12) < 1e-8  # both at noise level
    assert rel_error(1.0, 2.0) == pytest.approx(1 / 3)
    assert rel_error(0.0, 0.0) == 0.0
    assert rel_error(np.nan, 1.0) == np.inf


def test_bad_arguments_give_one_line_errors(moons):
    model, params = _model("relu", 1)
    with pytest.raises(ValueError, match="mode='fast'.*full, directional"):
        check_gradients(model, params, *moons, mode="fast")
    with pytest.raises(ValueError, match="h=0"):
        check_gradients(model, params, *moons, h=0)
    with pytest.raises(ValueError, match="n_directions=0 .*positive integer"):
        check_gradients(model, params, *moons, mode="directional", n_directions=0)
    with pytest.raises(ValueError, match="threshold=-1"):
        check_gradients(model, params, *moons, threshold=-1)
    with pytest.raises(ValueError, match="path='blocked'.*plain, fused"):
        check_gradients(model, params, *moons, path="blocked")
    bad = dict(params, W1=np.full_like(params["W1"], np.nan))
    with pytest.raises(ValueError, match="loss"):
        check_gradients(model, bad, *moons)


@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_fused_path_check_passes_in_several_blocks(moons, act, depth, monkeypatch):
    X, y = moons
    model, params = _model(act, depth, dtype=np.float32)  # what trains may be float32
    blocks, make = [], model.workspace

    def counting(n, dtype, rows=None):
        ws = make(n, dtype, rows)
        blocks.append(-(-n // ws.rows))
        return ws

    monkeypatch.setattr(model, "workspace", counting)
    for mode in ("full", "directional"):
        report = check_gradients(model, params, X, y, mode=mode, path="fused", rng=make_rng(0, "gradcheck"))
        assert report.passed and report.path == "fused", report.to_dict()
        assert report.to_dict()["path"] == "fused"
    assert blocks and min(blocks) >= 2  # the accumulation of block gradients is checked too
    assert check_gradients(model, params, X, y).path == "plain"


def test_fused_path_check_catches_a_bug_the_plain_path_does_not_have(moons, monkeypatch):
    from backprop_lab.core import mlp

    X, y = moons
    model, params = _model("tanh", 2)  # smooth: every element is checked
    real = mlp.bce_sum_and_grad

    def scaled_dz(*args):  # a planted bug in the fused path only: dz x 1.01
        part, dz = real(*args)
        dz *= 1.01
        return part, dz

    monkeypatch.setattr(mlp, "bce_sum_and_grad", scaled_dz)
    assert check_gradients(model, params, X, y, path="plain").passed
    fused = check_gradients(model, params, X, y, path="fused")
    assert not fused.passed and set(fused.failed_params()) == set(params)
    assert 1e-3 < fused.max_rel_error < 1e-2  # ~0.01 / 2: a 1 % error in every gradient


@pytest.mark.parametrize("act", ["relu", "leaky_relu", "tanh"])
def test_kink_probe_reads_the_loss_pass_as_the_separate_pass_would(act):
    # loss_and_crossed: one forward pass for the loss and the kink pattern (A > 0 where Z > 0),
    # the same loss bits and the same answer as model.loss + a preactivations pass.
    from backprop_lab.core.gradcheck import _KinkProbe

    rng = make_rng(5, "test")
    model = MLP((2, 7, 5, 1), act)
    params = model.init_params("he", rng)
    X, y = rng.standard_normal((40, 2)), (rng.random(40) > 0.5).astype(float)
    probe = _KinkProbe(model, params, X)
    answers = []
    for scale in (0.0, 1e-9, 1e-3, 0.3, 3.0):
        moved = {k: v + scale * rng.standard_normal(v.shape) for k, v in params.items()}
        loss, crossed = probe.loss_and_crossed(moved, y)
        assert loss == model.loss(moved, X, y) and crossed == probe.crossed(moved)
        answers.append(crossed)
    assert answers[0] is False and (answers[-1] is True) == (act != "tanh")  # tanh has no kinks
