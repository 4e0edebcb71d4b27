"""Weight initialisation schemes. Biases always start at zero.

For a layer with ``W: (fan_in, fan_out)``:

| scheme              | distribution of every W entry                      | note                         |
|---------------------|----------------------------------------------------|------------------------------|
| ``he``              | Normal(0, std = sqrt(2 / fan_in))                  | He et al. 2015, for ReLU     |
| ``xavier``          | Normal(0, std = sqrt(2 / (fan_in + fan_out)))      | Glorot & Bengio 2010, normal |
| ``xavier_uniform``  | Uniform(-a, a), a = sqrt(6 / (fan_in + fan_out))   | same variance as ``xavier``  |
| ``lecun``           | Normal(0, std = sqrt(1 / fan_in))                  | LeCun 1998, for tanh/SELU    |
| ``normal``          | Normal(0, std) with a fixed ``std`` (default 0.01) | stalls deep nets: on purpose |
| ``zeros``           | 0                                                  | symmetry never breaks        |
| ``he_lecun_output`` | hidden ``he``, output Normal(0, sqrt(1 / fan_in))  | the seed notebook's mix      |

The notebook called its output scaling "Xavier"; sqrt(1/fan_in) is LeCun's, hence the name.
Draws are made in float64 layer by layer (W1, W2, ...) and then cast, so a float32 model starts
from the rounded float64 weights of the same seed.
"""

from __future__ import annotations

import numpy as np


def _normal(std_of):
    def draw(rng, fan_in, fan_out, is_output, std):
        return rng.standard_normal((fan_in, fan_out)) * std_of(fan_in, fan_out, is_output, std)
    return draw


def _xavier_uniform(rng, fan_in, fan_out, is_output, std):
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, size=(fan_in, fan_out))


def _zeros(rng, fan_in, fan_out, is_output, std):
    return np.zeros((fan_in, fan_out))


#: name -> draw(rng, fan_in, fan_out, is_output, std) -> float64 (fan_in, fan_out)
INIT_SCHEMES = {
    "he": _normal(lambda i, o, out, s: np.sqrt(2.0 / i)),
    "xavier": _normal(lambda i, o, out, s: np.sqrt(2.0 / (i + o))),
    "xavier_uniform": _xavier_uniform,
    "lecun": _normal(lambda i, o, out, s: np.sqrt(1.0 / i)),
    "normal": _normal(lambda i, o, out, s: s),
    "zeros": _zeros,
    "he_lecun_output": _normal(lambda i, o, out, s: np.sqrt((1.0 if out else 2.0) / i)),
}

#: The standard deviation each scheme's formula predicts (xavier_uniform: a / sqrt(3)); used by tests.
EXPECTED_STD = {
    "he": lambda i, o, out, s: np.sqrt(2.0 / i),
    "xavier": lambda i, o, out, s: np.sqrt(2.0 / (i + o)),
    "xavier_uniform": lambda i, o, out, s: np.sqrt(6.0 / (i + o)) / np.sqrt(3.0),
    "lecun": lambda i, o, out, s: np.sqrt(1.0 / i),
    "normal": lambda i, o, out, s: s,
    "zeros": lambda i, o, out, s: 0.0,
    "he_lecun_output": lambda i, o, out, s: np.sqrt((1.0 if out else 2.0) / i),
}


def init_params(layer_sizes, scheme, rng, dtype=np.float64, std=0.01):
    """Draw ``{"W1": (n0, n1), "b1": (n1,), ..., "WL", "bL"}`` for ``layer_sizes = (n0, ..., nL)``."""
    if scheme not in INIT_SCHEMES:
        raise ValueError(f"unknown init scheme {scheme!r}; valid: {', '.join(INIT_SCHEMES)}")
    if not (np.isfinite(std) and std >= 0):
        raise ValueError(f"init std must be a finite number >= 0, got {std!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    draw = INIT_SCHEMES[scheme]
    n_layers = len(layer_sizes) - 1
    params = {}
    for l in range(1, n_layers + 1):
        fan_in, fan_out = int(layer_sizes[l - 1]), int(layer_sizes[l])
        W = draw(rng, fan_in, fan_out, l == n_layers, std)
        params[f"W{l}"] = np.ascontiguousarray(W, dtype=dtype)
        params[f"b{l}"] = np.zeros(fan_out, dtype=dtype)
    return params
