"""Optimizers against hand-computed steps, and their one-line errors."""

import math

import numpy as np
import pytest

from backprop_lab.core.optim import OPTIMIZERS, make_optimizer


def run_steps(opt, grads_seq, p0=1.0):
    params = {"W1": np.array([p0]), "b1": np.array([-p0])}
    state = opt.init_state(params)
    for g in grads_seq:
        opt.step(params, {"W1": np.array([g]), "b1": np.array([-g])}, state)
    assert params["b1"][0] == pytest.approx(-params["W1"][0])  # one state per name, no cross-talk
    return params["W1"][0]


@pytest.mark.parametrize("name", ["gd", "sgd"])
def test_plain_descent(name):
    assert run_steps(make_optimizer(name, 0.1), [2.0]) == pytest.approx(0.8)
    assert run_steps(make_optimizer(name, 0.1), [2.0, 1.0]) == pytest.approx(0.7)


def test_momentum_two_steps():
    opt = make_optimizer("momentum", 0.1, momentum=0.9)
    # v1 = -0.1*2 = -0.2, p = 0.8; v2 = 0.9*(-0.2) - 0.1*1 = -0.28, p = 0.52
    assert run_steps(opt, [2.0]) == pytest.approx(0.8)
    assert run_steps(opt, [2.0, 1.0]) == pytest.approx(0.52)


def test_nesterov_two_steps():
    opt = make_optimizer("nesterov", 0.1, momentum=0.9)
    # step 1: v = -0.2; p += 0.9*v - 0.1*2 = -0.38 -> 0.62
    # step 2: v = 0.9*(-0.2) - 0.1 = -0.28; p += 0.9*(-0.28) - 0.1 = -0.352 -> 0.268
    assert run_steps(opt, [2.0]) == pytest.approx(0.62)
    assert run_steps(opt, [2.0, 1.0]) == pytest.approx(0.268)


def test_adam_two_steps():
    opt = make_optimizer("adam", 0.1, beta1=0.9, beta2=0.999, eps=1e-8)
    # step 1: m = 0.2, s = 0.004; m_hat = 2, s_hat = 4 -> p = 1 - 0.1 * 2 / (2 + 1e-8)
    assert run_steps(opt, [2.0]) == pytest.approx(1 - 0.1 * 2 / (2 + 1e-8), rel=1e-14)
    # step 2 with g = 1: m = 0.18 + 0.1 = 0.28, s = 0.003996 + 0.001 = 0.004996
    m_hat, s_hat = 0.28 / (1 - 0.9**2), 0.004996 / (1 - 0.999**2)
    p1 = 1 - 0.1 * 2 / (2 + 1e-8)
    p2 = p1 - 0.1 * m_hat / (math.sqrt(s_hat) + 1e-8)
    assert run_steps(opt, [2.0, 1.0]) == pytest.approx(p2, rel=1e-12)


def test_defaults_and_batching():
    assert make_optimizer("gd", 0.1).batch_size is None
    sgd = make_optimizer("sgd", 0.1)
    assert sgd.batch_size == 32 and sgd.shuffle
    assert make_optimizer("momentum", 0.1).batch_size is None
    assert make_optimizer("adam", 0.01, batch_size=16, shuffle=False).shuffle is False
    assert make_optimizer("momentum", 0.1).momentum == 0.9
    assert make_optimizer("adam", 0.01).hparams() == {
        "name": "adam", "lr": 0.01, "batch_size": None, "shuffle": False,
        "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert set(OPTIMIZERS) == {"gd", "sgd", "momentum", "nesterov", "adam"}


def test_state_is_per_parameter_and_updates_in_place():
    opt = make_optimizer("adam", 0.01)
    params = {"W1": np.ones((2, 3)), "b1": np.zeros(3)}
    state = opt.init_state(params)
    assert set(state) == {"W1", "b1"} and state["W1"]["m"].shape == (2, 3)
    W1 = params["W1"]
    opt.step(params, {"W1": np.ones((2, 3)), "b1": np.ones(3)}, state)
    assert params["W1"] is W1 and (W1 < 1).all()


@pytest.mark.parametrize("name, lr, hp, match", [
    ("rmsprop", 0.1, {}, "unknown optimizer 'rmsprop'; valid: gd, sgd, momentum, nesterov, adam"),
    ("gd", 0.0, {}, "lr=0.0 is invalid; must be a finite number > 0"),
    ("gd", float("nan"), {}, "lr=nan is invalid"),
    ("gd", True, {}, "lr=True is invalid"),
    ("gd", 0.1, {"batch_size": 8}, "unknown hyperparameter 'batch_size'.*use sgd"),
    ("sgd", 0.1, {"batch_size": 0}, "batch_size=0 is invalid; must be a positive integer or None"),
    ("sgd", 0.1, {"momentum": 0.9}, "unknown hyperparameter 'momentum'; valid: batch_size, shuffle"),
    ("momentum", 0.1, {"momentum": 1.0}, r"momentum=1.0 is invalid; must be a number in \[0, 1\)"),
    ("adam", 0.1, {"beta2": -0.1}, "beta2=-0.1 is invalid"),
    ("adam", 0.1, {"eps": 0}, "eps=0 is invalid; must be a finite number > 0"),
    ("sgd", 0.1, {"shuffle": "yes"}, "shuffle='yes' is invalid; must be true or false"),
])
def test_bad_input_raises_one_clear_line(name, lr, hp, match):
    with pytest.raises(ValueError, match=match) as exc:
        make_optimizer(name, lr, **hp)
    assert "\n" not in str(exc.value)
