"""Seeded 2-D binary datasets with a train/test split.

Every generator draws from the ``rng`` it is given (the "data" stream), makes ``n_samples``
points with labels y in {0., 1.} (half of each class, the odd one to class 1), and
``load_dataset`` shuffles them and splits off the last ``round(test_fraction * n_samples)`` as
the test set, as the seed notebook did. ``extent = (x_min, x_max, y_min, y_max)`` is a fixed
plotting box per dataset (it does not depend on the draw, so decision boundaries of different
runs line up; points beyond it with large ``noise`` are simply off the picture).

| name     | what                                                                  | noise default |
|----------|-----------------------------------------------------------------------|---------------|
| blobs    | Gaussians (std = noise) at (-2,-2) -> 0 and (2,2) -> 1 (the notebook)  | 1.0           |
| moons    | two interleaving half circles, Gaussian jitter std = noise           | 0.1           |
| circles  | ring of radius 1 -> 0 around a ring of radius 0.5 -> 1, jitter         | 0.08          |
| xor      | Gaussians (std = noise) at (1,1),(-1,-1) -> 0 and (1,-1),(-1,1) -> 1  | 0.35          |
| spirals  | two interleaved arms of 1.5 turns each, jitter std = noise            | 0.05          |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Dataset:
    """X_*: (N, 2), y_*: (N,) floats 0/1; arrays are read-only."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    extent: tuple[float, float, float, float]


def _split_counts(n):
    return n // 2, n - n // 2


def blobs(rng, n_samples, noise):
    n0, n1 = _split_counts(n_samples)
    X0 = rng.standard_normal((n0, 2)) * noise + np.array([-2.0, -2.0])
    X1 = rng.standard_normal((n1, 2)) * noise + np.array([2.0, 2.0])
    return np.vstack([X0, X1]), np.r_[np.zeros(n0), np.ones(n1)]


def moons(rng, n_samples, noise):
    n0, n1 = _split_counts(n_samples)
    t0, t1 = rng.uniform(0.0, np.pi, n0), rng.uniform(0.0, np.pi, n1)
    X0 = np.c_[np.cos(t0), np.sin(t0)]
    X1 = np.c_[1.0 - np.cos(t1), 0.5 - np.sin(t1)]
    X = np.vstack([X0, X1]) + rng.standard_normal((n_samples, 2)) * noise
    return X, np.r_[np.zeros(n0), np.ones(n1)]


def circles(rng, n_samples, noise):
    n0, n1 = _split_counts(n_samples)
    angle = rng.uniform(0.0, 2 * np.pi, n_samples)
    radius = np.r_[np.ones(n0), np.full(n1, 0.5)]
    X = radius[:, None] * np.c_[np.cos(angle), np.sin(angle)] + rng.standard_normal((n_samples, 2)) * noise
    return X, np.r_[np.zeros(n0), np.ones(n1)]


def xor(rng, n_samples, noise):
    corners = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    which = np.arange(n_samples) % 4  # balanced: corners 0,1 -> class 0, corners 2,3 -> class 1
    X = corners[which] + rng.standard_normal((n_samples, 2)) * noise
    return X, (which >= 2).astype(np.float64)


def spirals(rng, n_samples, noise):
    n0, n1 = _split_counts(n_samples)
    arm = np.r_[np.zeros(n0), np.ones(n1)]
    t = np.sqrt(rng.uniform(0.0, 1.0, n_samples))  # sqrt: uniform density along the arm's area
    radius = 0.1 + 0.9 * t
    angle = 3.0 * np.pi * t + np.pi * arm  # 1.5 turns; the second arm is the first rotated by pi
    X = radius[:, None] * np.c_[np.cos(angle), np.sin(angle)] + rng.standard_normal((n_samples, 2)) * noise
    return X, arm


#: name -> (generator(rng, n_samples, noise) -> (X: (N, 2), y: (N,)), default params, fixed extent)
DATASETS = {
    "blobs": (blobs, {"n_samples": 400, "noise": 1.0, "test_fraction": 0.2}, (-6.0, 6.0, -6.0, 6.0)),
    "moons": (moons, {"n_samples": 400, "noise": 0.1, "test_fraction": 0.2}, (-1.75, 2.75, -1.25, 1.75)),
    "circles": (circles, {"n_samples": 400, "noise": 0.08, "test_fraction": 0.2}, (-1.5, 1.5, -1.5, 1.5)),
    "xor": (xor, {"n_samples": 400, "noise": 0.35, "test_fraction": 0.2}, (-2.5, 2.5, -2.5, 2.5)),
    "spirals": (spirals, {"n_samples": 400, "noise": 0.05, "test_fraction": 0.2}, (-1.5, 1.5, -1.5, 1.5)),
}


def _readonly(a):
    a.flags.writeable = False
    return a


def load_dataset(name: str, *, rng: np.random.Generator, dtype=np.float64, **params) -> Dataset:
    """Generate, shuffle and split dataset ``name`` (params: n_samples, noise, test_fraction)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    gen, defaults, extent = DATASETS[name]
    unknown = sorted(set(params) - set(defaults))
    if unknown:
        raise ValueError(f"dataset {name!r}: unknown parameter {unknown[0]!r}; valid: {', '.join(defaults)}")
    p = {**defaults, **params}
    n, noise, frac = p["n_samples"], p["noise"], p["test_fraction"]
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 4:
        raise ValueError(f"dataset {name!r}: n_samples={n!r} is invalid; must be an integer >= 4")
    if (isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise)
            or noise < 0):
        raise ValueError(f"dataset {name!r}: noise={noise!r} is invalid; must be a finite number >= 0")
    n_test = round(frac * n) if isinstance(frac, (int, float)) and not isinstance(frac, bool) else -1
    if not (0 < frac < 1) or not (1 <= n_test <= n - 1):
        raise ValueError(f"dataset {name!r}: test_fraction={frac!r} is invalid; must be in (0, 1) and leave "
                         f"both splits non-empty for n_samples={n}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    X, y = gen(rng, int(n), float(noise))
    order = rng.permutation(int(n))
    X, y = X[order].astype(dtype), y[order].astype(dtype)
    n_train = int(n) - n_test
    return Dataset(
        name=name,
        X_train=_readonly(np.ascontiguousarray(X[:n_train])), y_train=_readonly(y[:n_train].copy()),
        X_test=_readonly(np.ascontiguousarray(X[n_train:])), y_test=_readonly(y[n_train:].copy()),
        extent=extent,
    )
