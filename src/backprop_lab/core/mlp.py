"""A multilayer perceptron with one logit output, over a flat ``{"W1", "b1", ..., "WL", "bL"}`` dict.

``layer_sizes = (D, H1, ..., H_{L-1}, 1)``: L linear layers, the hidden ones followed by the
chosen activation, the last one giving the logit of a binary classifier (the sigmoid lives in
the loss, see ``losses.bce_with_logits``).

Two ways to get gradients, tested against each other:

- ``forward`` / ``backward`` / ``loss_and_grads(params, X, y)``: the plain CS231n composition
  of ``layers``, fresh arrays on every call: the readable reference (tests hold the fused path
  equal to it and check it against finite differences).
- ``loss_and_grads(params, X, y, ws)`` with a ``Workspace``: the engine's fused path. Rows of
  a batch are independent until the gradients are summed, so it runs forward, loss and
  backward over blocks of rows small enough to stay in the CPU cache and accumulates the
  gradients; no (N, H) array is ever materialised and nothing is allocated per step beyond
  tiny temporaries. A batch that fits one block (the seed notebook's 320 x 10) is one pass of
  the plain algorithm. Results agree with the plain path to rounding (the sums are grouped
  differently) and are bit-identical from run to run. This is the path training runs, so it
  is the one every run's logged gradient check verifies (``check_gradients(..., path="fused")``).
"""

from __future__ import annotations

import numpy as np

from .initializers import init_params as _init_params
from .layers import ACTIVATIONS, linear_backward, linear_forward
from .losses import bce_loss, bce_sum_and_grad, bce_with_logits, sigmoid

#: Bytes of one (rows, H) block buffer of the fused path; ~L2-sized blocks were fastest here.
BLOCK_BYTES = 1 << 18


def flat_buffer(shapes, dtype=np.float64, values=None):
    """One contiguous 1-D buffer holding arrays of ``shapes`` (name -> shape) one after the other.

    Returns ``(flat, views)``: ``views[name]`` is a C-contiguous view of ``flat`` with its shape,
    in the order of ``shapes``; with ``values`` (name -> array) the views start as copies of them.
    An elementwise rule (an optimizer step, a copy, a difference) then runs once over ``flat``
    instead of once per array, with the same result for every entry.
    """
    sizes = {k: int(np.prod(shape, dtype=np.int64)) for k, shape in shapes.items()}
    flat = np.empty(sum(sizes.values()), dtype)
    views, start = {}, 0
    for k, shape in shapes.items():
        views[k] = flat[start:start + sizes[k]].reshape(shape)
        start += sizes[k]
        if values is not None:
            np.copyto(views[k], values[k])
    return flat, views


class Workspace:
    """Buffers of the fused path for batches of exactly ``n`` rows of one dtype.

    ``rows``: rows per block; by default as many as fit in ``BLOCK_BYTES`` (what training uses).
    The gradient check passes fewer, so that even its small batch runs several blocks and the
    accumulation of block gradients is checked too.

    After ``loss_and_grads(..., ws)``: ``ws.logits: (n,)``, ``ws.grads`` (same names and shapes as
    the params, views of the one buffer ``ws.grad_flat`` in ``model.param_names`` order;
    overwritten by the next call) and, with ``track_units=True``, ``ws.unit_level[l]: (H_l,)``,
    > 0 exactly for the hidden units that some row of the batch activates (> 0): for relu the
    sum of the unit's activations (all >= 0, so the sum is > 0 iff one of them is; one BLAS
    call), for the other activations their max (NaN stays NaN either way).
    """

    def __init__(self, model: MLP, n: int, dtype=np.float64, rows: int | None = None):
        self.n, self.dtype = int(n), np.dtype(dtype)
        sizes = model.layer_sizes
        widest = max(sizes[1:-1], default=1)
        if rows is None:
            rows = BLOCK_BYTES // (self.dtype.itemsize * widest)
        self.rows = max(1, min(self.n, int(rows)))
        r, hidden = self.rows, range(1, model.n_layers)
        self.a = {l: np.empty((r, sizes[l]), self.dtype) for l in hidden}  # activations of a block
        self.da = {l: np.empty((r, sizes[l]), self.dtype) for l in hidden}  # their gradients
        self.unit_level = {l: np.empty(sizes[l], self.dtype) for l in hidden}
        self.logits = np.empty(self.n, self.dtype)
        self.dz, self.e, self.ones = np.empty(r, self.dtype), np.empty(r, self.dtype), np.ones(r, self.dtype)
        self.scratch = np.empty(r, self.dtype)
        # Later blocks write into tmp and add it to grads in one call over the flat buffers.
        self.grad_flat, self.grads = flat_buffer(model.param_shapes, self.dtype)
        self.tmp_flat, self.tmp = flat_buffer(model.param_shapes, self.dtype)


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
        self.param_shapes = {}  # name -> shape, in param_names order
        for l in range(1, self.n_layers + 1):
            self.param_shapes[f"W{l}"] = (self.layer_sizes[l - 1], self.layer_sizes[l])
            self.param_shapes[f"b{l}"] = (self.layer_sizes[l],)
        self._W_names = [None] + [f"W{l}" for l in range(1, self.n_layers + 1)]
        self._b_names = [None] + [f"b{l}" for l in range(1, self.n_layers + 1)]

    def __repr__(self):
        return f"MLP(layer_sizes={self.layer_sizes}, activation={self.activation!r})"

    def init_params(self, scheme: str, rng: np.random.Generator, dtype=np.float64, std: float = 0.01):
        """Fresh parameters drawn with ``scheme`` (see ``initializers``); biases are zero."""
        return _init_params(self.layer_sizes, scheme, rng, dtype=dtype, std=std)

    def workspace(self, n: int, dtype=np.float64, rows: int | None = None) -> Workspace:
        """Buffers for ``loss_and_grads(..., ws)`` on batches of ``n`` rows (``rows`` per block)."""
        return Workspace(self, n, dtype, rows)

    # ---- plain path -------------------------------------------------------------------------
    def forward(self, params, X, out=None):
        """X: (N, D) -> (logits: (N,), cache).

        out: ``forward_buffers(N, dtype)`` to write every layer's output into instead of fresh
        arrays (the same operations; training evaluates its test set so every epoch)."""
        L = self.n_layers
        caches = []
        A = X
        for l in range(1, L):
            Z, lin = linear_forward(A, params[f"W{l}"], params[f"b{l}"],
                                    out=None if out is None else out[l - 1])  # (N, H_l)
            A, act = self._act_fwd(Z, out=Z)  # Z itself is not needed by backward: overwrite it
            caches.append((lin, act))
        z, lin = linear_forward(A, params[f"W{L}"], params[f"b{L}"],
                                out=None if out is None else out[L - 1])  # (N, 1)
        caches.append((lin, None))
        return z[:, 0], caches

    def forward_buffers(self, n: int, dtype=np.float64) -> list[np.ndarray]:
        """Buffers for ``forward(params, X, out=...)`` on X of ``n`` rows: (n, H_l) per layer."""
        return [np.empty((n, h), dtype) for h in self.layer_sizes[1:]]

    def backward(self, dlogits, cache):
        """dlogits: (N,) -> grads with the params' names and shapes."""
        grads = {}
        dout = dlogits[:, None]  # (N, 1)
        for l in range(self.n_layers, 0, -1):
            lin, _ = cache[l - 1]
            dx, grads[f"W{l}"], grads[f"b{l}"] = linear_backward(dout, lin, need_dx=l > 1)  # dx: (N, H_{l-1})
            if l > 1:
                dout = self._act_bwd(dx, cache[l - 2][1], out=dx)
        return {k: grads[k] for k in self.param_names}

    def loss_and_grads(self, params, X, y, ws: Workspace | None = None, track_units: bool = False):
        """X: (N, D), y: (N,) -> (mean BCE, grads). With ``ws``: the fused path (module docstring)."""
        if ws is not None:
            return self._fused(params, X, y, ws, track_units)
        logits, cache = self.forward(params, X)
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

    # ---- fused path -------------------------------------------------------------------------
    def _fused(self, params, X, y, ws, track_units):
        n, L, R = X.shape[0], self.n_layers, ws.rows
        if n != ws.n:
            raise ValueError(f"workspace is for batches of {ws.n} rows, got {n}")
        act_fwd, act_bwd, grads, tmp = self._act_fwd, self._act_bwd, ws.grads, ws.tmp
        W_names, b_names = self._W_names, self._b_names
        W = [None] + [params[W_names[l]] for l in range(1, L + 1)]
        b = [None] + [params[b_names[l]] for l in range(1, L + 1)]
        w_out = W[L][:, 0]  # (H_{L-1},) view of the output weights
        inv_n, total = 1.0 / n, 0.0
        for s in range(0, n, R):
            m = min(R, n - s)
            # The first block writes the gradients, later blocks add into them.
            gout = grads if s == 0 else tmp
            acts, act_caches = [X[s:s + m]], [None]  # A_0 .. A_{L-1} of this block, each (m, H_l)
            for l in range(1, L):
                Z = ws.a[l][:m]
                np.dot(acts[-1], W[l], out=Z)  # (m, H_l)
                Z += b[l]
                A, cache = act_fwd(Z, out=Z)
                acts.append(A)
                act_caches.append(cache)
                if track_units:  # see Workspace: only whether each entry is > 0 is meant
                    level = ws.unit_level[l]
                    if self.activation == "relu":  # a column sum is one gemv; max(axis=0) ~10x that
                        if s:
                            level += np.dot(ws.ones[:m], A)
                        else:
                            np.dot(ws.ones[:m], A, out=level)  # (H_l,)
                    elif s:
                        np.maximum(level, np.maximum.reduce(A, axis=0), out=level)
                    else:
                        np.maximum.reduce(A, axis=0, out=level)
            z = ws.logits[s:s + m]
            np.dot(acts[-1], w_out, out=z)  # (m,)
            z += b[L]
            part, dz = bce_sum_and_grad(z, y[s:s + m], inv_n, ws.e[:m], ws.dz[:m], ws.scratch[:m])
            total += part
            dout, ones = dz[:, None], ws.ones[:m]  # (m, 1)
            for l in range(L, 0, -1):
                np.dot(acts[l - 1].T, dout, out=gout[W_names[l]])  # (H_{l-1}, H_l)
                np.dot(ones, dout, out=gout[b_names[l]])  # (H_l,): a BLAS sum, far faster than sum(axis=0)
                if l > 1:
                    dA = ws.da[l - 1][:m]
                    np.dot(dout, W[l].T, out=dA)  # (m, H_{l-1})
                    dout = act_bwd(dA, act_caches[l - 1], out=dA)
            if s:
                ws.grad_flat += ws.tmp_flat  # every parameter's block gradient, one call
        return total * inv_n, grads
