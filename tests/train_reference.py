"""The plain training loop: `core.train.train` as it was before its per-epoch fast path, the
reference tests/test_train.py holds it to, bit for bit.

Every array is its own (parameters copied one by one, the optimizer stepped once per name),
the test set is evaluated with fresh arrays, finiteness is one reduction per array, and each
recorded epoch is a dict written into per-metric arrays. Same engine step (the fused
`loss_and_grads`), same metrics, same divergence rule (core/train.py's module docstring).
"""

from __future__ import annotations

import math

import numpy as np

from backprop_lab.core.losses import bce_loss
from backprop_lab.core.train import _TINY, Trainer, _acc, _finite, _fraction, _norm, metric_names


def train_reference(model, params, dataset, optimizer, *, epochs, rng, log_every=1):
    """-> (history, status, diverged_epoch, final, params), as `train` returns them."""
    params = {k: v.copy() for k, v in params.items()}
    tr = Trainer(model, params, optimizer, dataset.X_train, dataset.y_train, rng)  # no flat buffer
    X_test = np.ascontiguousarray(dataset.X_test, dtype=tr.dtype)
    y_test = np.ascontiguousarray(dataset.y_test, dtype=tr.dtype)
    ws, L = tr.ws_full, model.n_layers
    W_names = [f"W{layer}" for layer in range(1, L + 1)]
    track_dead = model.activation in ("relu", "leaky_relu")
    names = metric_names(model)
    logged = [e for e in range(epochs) if e % log_every == 0 or e == epochs - 1]
    hist = {k: np.full(len(logged), np.nan) for k in names}
    W_before = {k: np.empty_like(params[k]) for k in W_names}
    row, status, diverged_epoch = 0, "finished", None
    values = list(params.values())
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        for epoch in range(epochs):
            is_log = row < len(logged) and logged[row] == epoch
            if tr.full or is_log:
                loss, grads = model.loss_and_grads(params, tr.X, tr.y, ws, track_units=is_log and track_dead)
                ok = math.isfinite(loss) and _finite(*values, *grads.values())
            else:
                ok = _finite(*values)
            if not ok:
                status, diverged_epoch = "diverged", epoch
                break
            if is_log:
                m = {"train/loss": loss, "train/acc": _acc(ws.logits, tr.y)}
                if track_dead:  # from the activations themselves (one block: ws.a holds them all)
                    assert ws.rows >= ws.n
                    for layer in range(1, L):
                        dead = ws.a[layer][:ws.n].max(axis=0) <= 0
                        m[f"dead_relu/layer{layer}"] = _fraction(dead)
                for k in W_names:
                    m[f"grad_norm/{k}"] = _norm(grads[k])
                    np.copyto(W_before[k], params[k])
                test_logits, _ = model.forward(params, X_test)
                m["test/loss"], m["test/acc"] = bce_loss(test_logits, y_test), _acc(test_logits, y_test)
            if tr.full:
                optimizer.step(params, grads, tr.state)
            elif not math.isfinite(tr.epoch()):
                status, diverged_epoch = "diverged", epoch
                break
            if is_log:
                for k in W_names:
                    w = _norm(W_before[k])
                    du = _norm(np.subtract(params[k], W_before[k], out=W_before[k]))
                    m[f"update_ratio/{k}"] = 0.0 if du == 0 else du / max(w, _TINY)
                if not all(math.isfinite(v) for v in m.values()):
                    status, diverged_epoch = "diverged", epoch
                    break
                for k in names:
                    hist[k][row] = m[k]
                row += 1
        if status != "diverged" and not _finite(*values):
            status, diverged_epoch = "diverged", epochs
        history = {"epoch": np.asarray(logged[:row], dtype=np.int64), **{k: v[:row] for k, v in hist.items()}}
        if status != "diverged":
            final = {
                "final/train_loss": model.loss(params, tr.X, tr.y),
                "final/train_acc": _acc(model.forward(params, tr.X)[0], tr.y),
                "final/test_loss": model.loss(params, X_test, y_test),
                "final/test_acc": _acc(model.forward(params, X_test)[0], y_test),
            }
        else:
            final = {f"final/{k.replace('/', '_')}": float(hist[k][row - 1]) if row else math.nan
                     for k in ("train/loss", "train/acc", "test/loss", "test/acc")}
        final["final/epochs_run"] = float(diverged_epoch if diverged_epoch is not None else epochs)
    return history, status, diverged_epoch, final, params
