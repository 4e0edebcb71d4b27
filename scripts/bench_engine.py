"""Time one training epoch: this engine vs a straight port of the seed notebook's loop vs scikit-learn.

All three do the same work per epoch: full-batch gradient descent (lr 0.1, no momentum, no
weight decay) on a 2 -> H -> 1 ReLU MLP with a sigmoid/BCE output, float64, n samples of the
``blobs`` data. Measured side by side in one process, interleaved repeat by repeat so that a
busy machine slows all three alike; each repeat times ``epochs`` consecutive epochs after a
warm-up, and we report min and median microseconds per epoch.

    python scripts/bench_engine.py                # n=320,H=10 and n=20000,H=512
    python scripts/bench_engine.py --quick        # a seconds-long smoke run
    python scripts/bench_engine.py --json out.json

Targets (issue 2): engine <= 1.2x notebook at the small size, <= 0.5x notebook at the large
one, and faster than scikit-learn at both. The comparison uses the min: it is the least
disturbed by other processes on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from backprop_lab.core.data import load_dataset
from backprop_lab.core.mlp import MLP
from backprop_lab.core.optim import make_optimizer
from backprop_lab.core.rng import make_rng
from backprop_lab.core.train import Trainer, flat_params

LR = 0.1
FULL_SIZES = [(320, 10), (20000, 512)]
QUICK_SIZES = [(320, 10), (2000, 64)]
TARGETS = {"small": 1.2, "large": 0.5}  # engine / notebook upper bounds


# --- the seed notebook's functions, copied as they are (only the formatting is black-ish) ---

def nb_sigmoid(z):
    z = np.clip(z, -500, 500)
    return 1 / (1 + np.exp(-z))


def nb_relu(z):
    return np.maximum(0, z)


def nb_relu_deriv(z):
    return (z > 0).astype(float)


def nb_forward(X, params):
    Z1 = X.dot(params["W1"]) + params["b1"]
    A1 = nb_relu(Z1)
    Z2 = A1.dot(params["W2"]) + params["b2"]
    A2 = nb_sigmoid(Z2)
    cache = {"Z1": Z1, "A1": A1, "Z2": Z2, "A2": A2}
    return cache, A2


def nb_compute_loss(y, y_prob):
    m = y.shape[0]
    epsilon = 1e-15
    loss = -1 / m * np.sum(y * np.log(y_prob + epsilon) + (1 - y) * np.log(1 - y_prob + epsilon))
    return loss


def nb_backward(X, y, y_prob, cache, params):
    m = X.shape[0]
    W2 = params["W2"]
    A1 = cache["A1"]
    Z1 = cache["Z1"]
    dZ2 = y_prob - y
    dW2 = (1 / m) * A1.T.dot(dZ2)
    db2 = (1 / m) * np.sum(dZ2, axis=0, keepdims=True)
    dA1 = dZ2.dot(W2.T)
    dZ1 = dA1 * nb_relu_deriv(Z1)
    dW1 = (1 / m) * X.T.dot(dZ1)
    db1 = (1 / m) * np.sum(dZ1, axis=0, keepdims=True)
    return {"dW1": dW1, "db1": db1, "dW2": dW2, "db2": db2}


def nb_update(params, grads, lr=0.1):
    params["W1"] -= lr * grads["dW1"]
    params["b1"] -= lr * grads["db1"]
    params["W2"] -= lr * grads["dW2"]
    params["b2"] -= lr * grads["db2"]
    return params


# --- the three contestants: each make_*() returns a function that runs `epochs` epochs ---

def make_engine(X, y, params):
    model = MLP((X.shape[1], params["W1"].shape[1], 1), activation="relu")
    flat, views = flat_params(model, params)  # as train() runs it: one update call for all params
    trainer = Trainer(model, views, make_optimizer("gd", lr=LR), X, y, flat=flat)
    step = trainer.step

    def run(epochs):
        for _ in range(epochs):
            step()
    return run


def make_notebook(X, y, params):
    # The notebook keeps y as (N, 1) and biases as (1, H); same initial values as the engine.
    p = {"W1": params["W1"].copy(), "b1": params["b1"][None, :].copy(),
         "W2": params["W2"].copy(), "b2": params["b2"][None, :].copy()}
    y2 = y[:, None]

    def run(epochs):
        for _ in range(epochs):
            cache, y_prob = nb_forward(X, p)
            nb_compute_loss(y2, y_prob)  # the notebook computes it every epoch for its curve
            grads = nb_backward(X, y2, y_prob, cache, p)
            nb_update(p, grads, lr=LR)
    return run


def make_sklearn(X, y, params):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    hidden = params["W1"].shape[1]

    def run(epochs):
        # One fit = `epochs` full-batch epochs; tol=0 with n_iter_no_change > epochs never stops early.
        clf = MLPClassifier(hidden_layer_sizes=(hidden,), activation="relu", solver="sgd",
                            batch_size=X.shape[0], momentum=0.0, alpha=0.0, learning_rate_init=LR,
                            learning_rate="constant", shuffle=False, nesterovs_momentum=False,
                            max_iter=epochs, tol=0.0, n_iter_no_change=epochs + 1, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(X, y)
        assert clf.n_iter_ == epochs, clf.n_iter_
    return run


CONTESTANTS = {"engine": make_engine, "notebook": make_notebook, "sklearn": make_sklearn}


def git_commit() -> str | None:
    """The commit the engine was timed at (figures are only comparable at the same engine code)."""
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10, cwd=Path(__file__).resolve().parents[1]).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def blas_info() -> dict:
    try:
        from threadpoolctl import threadpool_info
        pools = [{k: p.get(k) for k in ("user_api", "internal_api", "version", "architecture", "num_threads",
                                         "threading_layer")} for p in threadpool_info()]
        return {"source": "threadpoolctl", "pools": pools}
    except ImportError:  # fall back to what numpy was built against
        cfg = np.show_config(mode="dicts")
        return {"source": "numpy.show_config", "pools": [cfg.get("Build Dependencies", {}).get("blas", {})]}


def bench_size(n, hidden, epochs, repeats, warmup):
    ds = load_dataset("blobs", rng=make_rng(0, "data"), n_samples=int(round(n / 0.8)))
    X = np.ascontiguousarray(ds.X_train[:n], dtype=np.float64)
    y = np.ascontiguousarray(ds.y_train[:n], dtype=np.float64)
    model = MLP((2, hidden, 1), activation="relu")
    params = model.init_params("he", make_rng(0, "init"))
    runners = {name: make(X, y, params) for name, make in CONTESTANTS.items()}
    for name, run in runners.items():
        if name != "sklearn":  # sklearn warms up inside its own short fit below
            run(warmup)
    runners["sklearn"](max(2, warmup))
    samples = {name: [] for name in runners}
    for _ in range(repeats):
        for name, run in runners.items():  # interleaved: load bursts hit all three
            t0 = time.perf_counter()
            run(epochs)
            samples[name].append((time.perf_counter() - t0) / epochs * 1e6)
    return {name: {"min_us": min(s), "median_us": statistics.median(s), "samples_us": s}
            for name, s in samples.items()}


def bench_plots(reps=12) -> dict:
    """CPU ms to build + save the three per-run figures (the tracking budget is 0.15 s per run)."""
    import tempfile

    from backprop_lab.figures import plots

    ds = load_dataset("moons", rng=make_rng(0, "data"))
    model = MLP((2, 16, 1), activation="relu")
    params = model.init_params("he", make_rng(0, "init"))
    e = np.arange(200)
    hist = {"epoch": e, "train/loss": np.exp(-e / 50), "test/loss": np.exp(-e / 60),
            "train/acc": 1 - np.exp(-e / 30), "test/acc": 1 - np.exp(-e / 40)}
    makers = {"data": lambda: plots.data_figure(ds), "curves": lambda: plots.curves_figure(hist),
              "boundary": lambda: plots.decision_boundary_figure(model, params, ds)}
    per = {name: [] for name in makers}
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(reps + 2):
            for name, make in makers.items():
                t0 = time.process_time()
                plots.save_figure(make(), Path(tmp) / f"{name}.png")
                per[name].append((time.process_time() - t0) * 1e3)
            totals.append(sum(per[name][-1] for name in makers))
        sizes = {name: (Path(tmp) / f"{name}.png").stat().st_size for name in makers}
    drop = slice(2, None)  # the first two pay for font caches
    return {"dpi": plots.DPI, "reps": reps, "total_ms_min": min(totals[drop]),
            "total_ms_median": statistics.median(totals[drop]),
            "per_figure_ms_min": {k: min(v[drop]) for k, v in per.items()}, "png_bytes": sizes}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, few epochs: a smoke run")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    ap.add_argument("--repeats", type=int, default=None,
                    help="timed repeats per contestant (default 5, quick 2)")
    ap.add_argument("--sizes", default="small,large", help="which sizes to run: small, large or small,large")
    ap.add_argument("--plots", action="store_true", help="time the three per-run figures instead")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit BLAS threads (threadpoolctl); default: as is")
    args = ap.parse_args(argv)
    wanted = [s.strip() for s in args.sizes.split(",")]
    if not wanted or any(s not in TARGETS for s in wanted):
        ap.error(f"--sizes={args.sizes!r} is not valid; use small, large or small,large")
    if args.threads is not None:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.threads)  # stays in effect for the whole process

    sizes = dict(zip(("small", "large"), QUICK_SIZES if args.quick else FULL_SIZES, strict=True))
    repeats = args.repeats or (2 if args.quick else 5)
    blas = blas_info()
    commit = git_commit()
    print(f"python {platform.python_version()}  numpy {np.__version__}  cpus {os.cpu_count()}  "
          f"git {commit}  load avg {os.getloadavg()[0]:.1f}")
    for pool in blas["pools"]:
        print(f"blas: {pool}")

    if args.plots:
        r = bench_plots()
        print(f"3 figures built + saved at DPI {r['dpi']}: cpu min {r['total_ms_min']:.0f} ms, "
              f"median {r['total_ms_median']:.0f} ms (budget incl. logging: 150 ms)")
        print(f"  per figure, cpu min ms: {r['per_figure_ms_min']}  png bytes: {r['png_bytes']}")
        if args.json:
            args.json.write_text(json.dumps({"git_commit": commit, "plots": r}, indent=2))
        return 0

    results = []
    for label in wanted:
        n, hidden = sizes[label]
        # ~0.2 .. 1 s of work per repeat and contestant at the full sizes; ms in quick mode
        epochs = (20 if n <= 1000 else 3) if args.quick else (500 if n <= 1000 else 10)
        t = bench_size(n, hidden, epochs, repeats, warmup=max(2, epochs // 5))
        eng, nb, sk = (t[k]["min_us"] for k in ("engine", "notebook", "sklearn"))
        row = {"size": label, "n": n, "hidden": hidden, "epochs_per_repeat": epochs, "repeats": repeats,
               "timings": t, "ratio_engine_notebook": eng / nb, "ratio_engine_sklearn": eng / sk,
               "target_engine_notebook": TARGETS[label]}
        row["met_notebook_target"] = row["ratio_engine_notebook"] <= TARGETS[label]
        row["met_sklearn_target"] = row["ratio_engine_sklearn"] < 1.0
        results.append(row)
        print(f"\n[{label}] n={n} H={hidden}  ({epochs} epochs x {repeats} repeats, us/epoch)", flush=True)
        print(f"  {'':10s}{'min':>12s}{'median':>12s}")
        for name in ("engine", "notebook", "sklearn"):
            print(f"  {name:10s}{t[name]['min_us']:12.1f}{t[name]['median_us']:12.1f}")
        print(f"  engine/notebook = {row['ratio_engine_notebook']:.3f}  (target <= {TARGETS[label]}: "
              f"{'met' if row['met_notebook_target'] else 'MISSED'})")
        print(f"  engine/sklearn  = {row['ratio_engine_sklearn']:.3f}  (target < 1: "
              f"{'met' if row['met_sklearn_target'] else 'MISSED'})", flush=True)

    out = {"quick": args.quick, "threads": args.threads, "git_commit": commit,
           "load_avg_1min": os.getloadavg()[0],
           "python": platform.python_version(), "numpy": np.__version__,
           "cpu_count": os.cpu_count(), "blas": blas, "results": results}
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
