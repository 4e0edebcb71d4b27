"""A multilayer perceptron with one logit output, over a flat ``{"W1", "b1", ..., "WL", "bL"}`` dict.

``layer_sizes = (D, H1, ..., H_{L-1}, 1)``: L linear layers, the hidden ones followed by the
chosen activation, the last one giving the logit of a binary classifier (the sigmoid lives in
the loss, see ``losses.bce_with_logits``).

Memory: ``forward``/``backward`` allocate fresh arrays unless a ``Workspace`` is passed, in
which case every (N, H) array is written into the workspace's buffers and the returned cache
and grads alias them (valid until the next call with the same workspace). The gradient check
and tests call without a workspace; the training engine passes one.
"""

from __future__ import annotations

import numpy as np

from .initializers import init_params as _init_params
from .layers import ACTIVATIONS, linear_backward, linear_forward
from .losses import bce_loss, bce_with_logits, sigmoid


class Workspace:
    """Reusable buffers for a batch of exactly ``n`` samples of one dtype.

    a[l]: (n, H_l) hidden activations, l = 1..L-1; da[l]: (n, H_l) their gradients;
    z: (n, 1) logits; grads: the gradient arrays, same names and shapes as the params.
    """

    def __init__(self, model: "MLP", n: int, dtype=np.float64):
        self.n, self.dtype = int(n), np.dtype(dtype)
        sizes = model.layer_sizes
        self.a = {l: np.empty((n, sizes[l]), self.dtype) for l in range(1, model.n_layers)}
        self.da = {l: np.empty((n, sizes[l]), self.dtype) for l in range(1, model.n_layers)}
        self.z = np.empty((n, 1), self.dtype)
        self.grads = {}
        for l in range(1, model.n_layers + 1):
            self.grads[f"W{l}"] = np.empty((sizes[l - 1], sizes[l]), self.dtype)
            self.grads[f"b{l}"] = np.empty(sizes[l], self.dtype)


class MLP:
    """MLP(layer_sizes=(2, 10, 1), activation="relu", leaky_slope=0.01)."""

    def __init__(self, layer_sizes=(2, 10, 1), activation: str = "relu", leaky_slope: float = 0.01):
        sizes = tuple(layer_sizes)
        if len(sizes) < 2 or any(isinstance(s, bool) or int(s) != s or s < 1 for s in sizes):
            raise ValueError(f"layer_sizes must be >= 2 positive integers (input, hidden..., 1), got {sizes}")
        if sizes[-1] != 1:
            raise ValueError(f"layer_sizes must end with 1 (one logit for binary output), got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if not (0.0 <= leaky_slope < 1.0):
            raise ValueError(f"leaky_slope must be in [0, 1), got {leaky_slope!r}")
        self.layer_sizes = tuple(int(s) for s in sizes)
        self.n_layers = len(sizes) - 1
        self.activation = activation
        self.leaky_slope = float(leaky_slope)
        act_fwd, self._act_bwd = ACTIVATIONS[activation]
        if activation == "leaky_relu":
            slope = self.leaky_slope
            self._act_fwd = lambda x, out=None: act_fwd(x, slope, out=out)
        else:
            self._act_fwd = act_fwd
        self.param_names = [f"{k}{l}" for l in range(1, self.n_layers + 1) for k in ("W", "b")]

    def __repr__(self):
        return f"MLP(layer_sizes={self.layer_sizes}, activation={self.activation!r})"

    def init_params(self, scheme: str, rng: np.random.Generator, dtype=np.float64, std: float = 0.01):
        """Fresh parameters drawn with ``scheme`` (see ``initializers``); biases are zero."""
        return _init_params(self.layer_sizes, scheme, rng, dtype=dtype, std=std)

    def workspace(self, n: int, dtype=np.float64) -> Workspace:
        return Workspace(self, n, dtype)

    def forward(self, params, X, ws: Workspace | None = None):
        """X: (N, D) -> (logits: (N,), cache)."""
        L = self.n_layers
        caches = []
        A = X
        for l in range(1, L):
            # The activation overwrites Z in place: backward only needs A.
            Z, lin = linear_forward(A, params[f"W{l}"], params[f"b{l}"], out=None if ws is None else ws.a[l])  # (N, H_l)
            A, act = self._act_fwd(Z, out=Z)
            caches.append((lin, act))
        z, lin = linear_forward(A, params[f"W{L}"], params[f"b{L}"], out=None if ws is None else ws.z)  # (N, 1)
        caches.append((lin, None))
        return z[:, 0], (caches, ws)

    def backward(self, dlogits, cache):
        """dlogits: (N,) -> grads with the params' names and shapes."""
        caches, ws = cache
        L = self.n_layers
        grads = {} if ws is None else ws.grads
        dout = dlogits[:, None]  # (N, 1)
        for l in range(L, 0, -1):
            lin, act = caches[l - 1]
            dA_out = None if (ws is None or l == 1) else ws.da[l - 1]
            dx, dW, db = linear_backward(
                dout, lin, dx_out=dA_out, need_dx=l > 1,
                dW_out=grads.get(f"W{l}"), db_out=grads.get(f"b{l}"),
            )  # dx: (N, H_{l-1})
            grads[f"W{l}"], grads[f"b{l}"] = dW, db
            if l > 1:
                dout = self._act_bwd(dx, caches[l - 2][1], out=dx)
        if ws is None:
            grads = {k: grads[k] for k in self.param_names}
        return grads

    def loss_and_grads(self, params, X, y, ws: Workspace | None = None):
        """X: (N, D), y: (N,) -> (mean BCE, grads)."""
        logits, cache = self.forward(params, X, ws)
        loss, dlogits = bce_with_logits(logits, y)
        return loss, self.backward(dlogits, cache)

    def loss(self, params, X, y) -> float:
        """Mean BCE of the model on X: (N, D), y: (N,)."""
        return bce_loss(self.forward(params, X)[0], y)

    def predict_proba(self, params, X) -> np.ndarray:
        """P(y = 1 | x) for X: (N, D) -> (N,)."""
        return sigmoid(self.forward(params, X)[0])

    def preactivations(self, params, X) -> list[np.ndarray]:
        """The hidden pre-activations Z_l: (N, H_l), l = 1..L-1 (for kinks and the init study)."""
        out = []
        A = X
        for l in range(1, self.n_layers):
            Z, _ = linear_forward(A, params[f"W{l}"], params[f"b{l}"])  # (N, H_l)
            out.append(Z)
            A, _ = self._act_fwd(Z)
        return out
