"""Optimizers: one small in-place update rule each, state kept per parameter name.

| name         | update for every parameter p with gradient g                 | defaults              |
|--------------|--------------------------------------------------------------|-----------------------|
| ``gd``       | p -= lr * g   (full batch, like the seed notebook)           |                       |
| ``sgd``      | p -= lr * g   on shuffled mini-batches                       | batch_size=32         |
| ``momentum`` | v = mu * v - lr * g;  p += v   (classical / heavy ball)      | momentum=0.9          |
| ``nesterov`` | v = mu * v - lr * g;  p += mu * v - lr * g  (Sutskever 2013) | momentum=0.9          |
| ``adam``     | m = b1 m + (1-b1) g; s = b2 s + (1-b2) g^2; t += 1;          | beta1=0.9,            |
|              | p -= lr * (m / (1-b1^t)) / (sqrt(s / (1-b2^t)) + eps)        | beta2=0.999, eps=1e-8 |

Every optimizer except ``gd`` accepts ``batch_size`` (None = full batch; ``sgd`` defaults to
32, the others to full batch) and ``shuffle`` (default True: reshuffle every epoch with the
"shuffle" stream). The nesterov form evaluates the gradient at the current parameters; it is
the look-ahead method rewritten in the variable that is actually stored (as in CS231n).
"""

from __future__ import annotations

import math

import numpy as np


class Optimizer:
    """``init_state(params) -> state``; ``step(params, grads, state)`` updates params in place."""

    name = "?"
    # True when the rule updates every entry from that entry alone (same state shapes as the
    # params): the trainer then runs it once over one flat buffer of all the parameters.
    elementwise = True
    # Hyper-parameters beyond lr and their defaults: the one source (config/schema.py reads them).
    defaults: dict = {}
    default_batch_size: int | None = None  # None = full batch

    def __init__(self, lr, batch_size=None, shuffle=True, **hparams):
        self.lr = float(lr)
        self.batch_size = batch_size
        self.shuffle = bool(shuffle) and batch_size is not None
        for key, value in {**self.defaults, **hparams}.items():
            setattr(self, key, float(value))

    def hparams(self) -> dict:
        """Everything that defines the optimizer, for logging."""
        return {"name": self.name, "lr": self.lr, "batch_size": self.batch_size, "shuffle": self.shuffle,
                **{k: getattr(self, k) for k in self.defaults}}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.hparams().items())})"

    def init_state(self, params) -> dict:
        return {name: {} for name in params}

    def step(self, params, grads, state) -> None:
        lr = self.lr
        for name, p in params.items():
            p -= lr * grads[name]


class GD(Optimizer):
    name = "gd"


class SGD(Optimizer):
    name = "sgd"
    default_batch_size = 32


class Momentum(Optimizer):
    name = "momentum"
    defaults = {"momentum": 0.9}

    def init_state(self, params):
        return {name: {"v": np.zeros_like(p)} for name, p in params.items()}

    def step(self, params, grads, state):
        lr, mu = self.lr, self.momentum
        for name, p in params.items():
            v = state[name]["v"]
            v *= mu
            v -= lr * grads[name]
            p += v


class Nesterov(Momentum):
    name = "nesterov"

    def step(self, params, grads, state):
        lr, mu = self.lr, self.momentum
        for name, p in params.items():
            v, lr_g = state[name]["v"], lr * grads[name]
            v *= mu
            v -= lr_g
            p += mu * v
            p -= lr_g


class Adam(Optimizer):
    name = "adam"
    defaults = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}

    def init_state(self, params):
        return {name: {"m": np.zeros_like(p), "s": np.zeros_like(p), "t": 0} for name, p in params.items()}

    def step(self, params, grads, state):
        b1, b2 = self.beta1, self.beta2
        for name, p in params.items():
            st, g = state[name], grads[name]
            st["t"] += 1
            m, s = st["m"], st["s"]
            m *= b1
            m += (1.0 - b1) * g
            s *= b2
            s += (1.0 - b2) * (g * g)
            # Equal to lr * m_hat / (sqrt(s_hat) + eps) with m_hat = m / c1, s_hat = s / c2.
            c1, c2 = 1.0 - b1 ** st["t"], 1.0 - b2 ** st["t"]
            p -= (self.lr / c1) * m / (np.sqrt(s / c2) + self.eps)


OPTIMIZERS = {cls.name: cls for cls in (GD, SGD, Momentum, Nesterov, Adam)}


def _check(name, key, value, ok, valid):
    if not ok:
        raise ValueError(f"optimizer {name!r}: {key}={value!r} is invalid; must be {valid}")


def make_optimizer(name: str, lr: float, **hparams) -> Optimizer:
    """Build an optimizer by name; unknown names or bad hyperparameters raise a one-line ValueError."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}")
    cls = OPTIMIZERS[name]
    allowed = set(cls.defaults) | ({"batch_size", "shuffle"} if name != "gd" else set())
    unknown = sorted(set(hparams) - allowed)
    if unknown:
        valid = ", ".join(sorted(allowed)) or "none (gd is full batch: use sgd for mini-batches)"
        raise ValueError(f"optimizer {name!r}: unknown hyperparameter {unknown[0]!r}; valid: {valid}")
    _check(name, "lr", lr,
           isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr) and lr > 0,
           "a finite number > 0")
    batch_size = hparams.pop("batch_size", cls.default_batch_size)
    _check(name, "batch_size", batch_size, batch_size is None or (
        isinstance(batch_size, (int, np.integer)) and not isinstance(batch_size, bool) and batch_size >= 1),
        "a positive integer or None (full batch)")
    shuffle = hparams.pop("shuffle", True)
    _check(name, "shuffle", shuffle, isinstance(shuffle, bool), "true or false")
    for key, value in hparams.items():
        finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if key == "eps":
            _check(name, key, value, finite and value > 0, "a finite number > 0")
        else:  # momentum, beta1, beta2
            _check(name, key, value, finite and 0 <= value < 1, "a number in [0, 1)")
    return cls(lr, batch_size=None if batch_size is None else int(batch_size), shuffle=shuffle, **hparams)
