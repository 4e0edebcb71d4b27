"""Binary cross-entropy computed from the logit, and a sigmoid that never overflows.

With ``z`` the logit and ``y`` in {0, 1} (soft labels in [0, 1] work too):

    loss  = mean( max(z, 0) - z*y + log1p(exp(-|z|)) )
    dz    = (sigmoid(z) - y) / N

``exp`` only ever sees ``-|z| <= 0``, so nothing overflows and no epsilon or clipping is
needed: at z = +-1e3 the loss of a wrong prediction is exactly |z| and of a right one 0.
"""

from __future__ import annotations

import numpy as np


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Elementwise logistic function, stable for any finite ``z``; same shape as ``z``."""
    e = np.exp(-np.abs(z))  # in (0, 1]
    r = 1.0 / (1.0 + e)
    # sigmoid(z) = 1/(1+e) for z >= 0 and e/(1+e) for z < 0; both forms avoid overflow.
    return np.where(z >= 0, r, e * r)


def bce_with_logits(logits: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean BCE and its gradient with respect to the logits.

    logits: (N,), y: (N,) floats in [0, 1]. Returns (loss, dlogits) with dlogits: (N,)
    equal to (sigmoid(logits) - y) / N.
    """
    n = logits.shape[0]
    e = np.exp(-np.abs(logits))  # (N,)
    loss = (np.maximum(logits, 0) - logits * y + np.log1p(e)).mean()
    r = 1.0 / (1.0 + e)
    p = np.where(logits >= 0, r, e * r)
    p -= y
    p *= 1.0 / n
    return float(loss), p


def bce_loss(logits: np.ndarray, y: np.ndarray, scratch=None) -> float:
    """Mean BCE only (no gradient), for evaluation; logits, y: (N,).

    scratch: two (N,) buffers of the logits' dtype to compute in (the same operations, no
    temporaries; training evaluates its test set so every epoch)."""
    if scratch is None:
        terms = np.maximum(logits, 0) - logits * y + np.log1p(np.exp(-np.abs(logits)))
    else:
        terms, t = scratch
        np.maximum(logits, 0, out=terms)
        terms -= np.multiply(logits, y, out=t)
        np.copysign(logits, -1.0, out=t)  # -|z|: the same bits as np.negative(np.abs(z))
        terms += np.log1p(np.exp(t, out=t), out=t)
    return float(np.add.reduce(terms)) / terms.shape[0]  # the mean, without mean()'s wrapper


def bce_sum_and_grad(z, y, inv_n, e, out, scratch=None):
    """Engine kernel for one chunk of a batch: returns (sum of the BCE terms, dz) without temporaries
    of the chunk's size beyond the given buffers.

    z, y: (m,); inv_n: 1 / (size of the whole batch); e, out, scratch: (m,) buffers of z's dtype
    (scratch None: a temporary). dz = (sigmoid(z) - y) * inv_n is written into ``out`` and returned.
    """
    np.copysign(z, -1.0, out=e)  # -|z|: the same bits as np.negative(np.abs(z))
    np.exp(e, out=e)  # e = exp(-|z|) in (0, 1]
    np.maximum(z, 0, out=out)
    out -= np.multiply(z, y, out=scratch)
    total = float(np.add.reduce(out)) + float(np.add.reduce(np.log1p(e, out=scratch)))
    np.add(e, 1.0, out=out)
    np.divide(1.0, out, out=out)  # sigmoid(|z|)
    np.multiply(out, e, out=out, where=z < 0)  # sigmoid(z) = e / (1 + e) for z < 0
    out -= y
    out *= inv_n
    return total, out
