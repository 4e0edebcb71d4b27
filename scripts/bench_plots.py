"""Time the two per-run figures: reference (figure + save_figure) vs render.*_png (cached figures).

A realistic run: moons (load_dataset defaults), MLP [2, 16, 1] ReLU, He init, full-batch GD
lr 0.1 for 1000 epochs (history of 1000 rows), decision boundary on the default 200 x 200 grid.
Each path is warmed up, then called ``--repeats`` times (reference and fast interleaved, so
both see the same machine load); medians (and minima) of wall time are printed. The boundary
includes the model's prediction on the grid (the same call in both paths), also timed alone.

    .venv/bin/python scripts/bench_plots.py [--repeats 30] [--blas-threads 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from backprop_lab.core.data import load_dataset
from backprop_lab.core.mlp import MLP
from backprop_lab.core.optim import make_optimizer
from backprop_lab.core.rng import make_rng
from backprop_lab.core.train import train
from backprop_lab.figures import plots, render


def _saved(fig) -> bytes:
    buf = io.BytesIO()
    plots.save_figure(fig, buf)
    return buf.getvalue()


def _ms(f) -> float:
    t0 = time.perf_counter()
    f()
    return (time.perf_counter() - t0) * 1e3


def bench(repeats: int, warmup: int = 3) -> dict:
    ds = load_dataset("moons", rng=make_rng(0, "data"))
    model = MLP((2, 16, 1), activation="relu")
    init = model.init_params("he", make_rng(0, "init"))
    result = train(model, init, ds, make_optimizer("gd", 0.1), epochs=1000, rng=make_rng(0, "shuffle"))
    params, history = result.params, result.history
    xx, yy = plots.boundary_grid(ds.extent, 200)
    grid_points = np.column_stack([xx.ravel(), yy.ravel()])
    contenders = {
        "boundary/reference": lambda: _saved(plots.decision_boundary_figure(model, params, ds)),
        "boundary/fast": lambda: render.decision_boundary_png(model, params, ds),
        "boundary/predict_only": lambda: model.predict_proba(params, grid_points),
        "curves/reference": lambda: _saved(plots.curves_figure(history)),
        "curves/fast": lambda: render.curves_png(history),
    }
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for i in range(warmup + repeats):
        for name, f in contenders.items():
            ms = _ms(f)
            if i >= warmup:
                times[name].append(ms)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"repeats": repeats, "epochs": len(history["epoch"]), "dpi": plots.DPI,
            "load_avg_1min": os.getloadavg()[0],
            "median_ms": med, "min_ms": {k: min(v) for k, v in times.items()},
            "speedup": {fig: med[f"{fig}/reference"] / med[f"{fig}/fast"] for fig in ("boundary", "curves")},
            "fast_total_ms": med["boundary/fast"] + med["curves/fast"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=30, help="timed calls per path (default 30)")
    ap.add_argument("--blas-threads", type=int, default=None,
                    help="limit BLAS threads with threadpoolctl "
                         "(the grid prediction is one 40000-row matmul)")
    ap.add_argument("--json", type=Path, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if args.blas_threads is not None:
        from threadpoolctl import threadpool_limits
        threadpool_limits(args.blas_threads)  # stays in effect for the whole process
    r = bench(args.repeats)
    r["blas_threads"] = args.blas_threads
    print(f"{r['repeats']} warm calls each, history {r['epochs']} epochs, DPI {r['dpi']}, "
          f"load avg {r['load_avg_1min']:.1f}, BLAS threads {args.blas_threads or 'default'}")
    print(f"{'':10} {'reference ms':>13} {'fast ms':>9} {'speed-up':>9}   (medians; min in brackets)")
    for fig in ("boundary", "curves"):
        ref, fast = f"{fig}/reference", f"{fig}/fast"
        print(f"{fig:10} {r['median_ms'][ref]:8.1f} [{r['min_ms'][ref]:5.1f}] "
              f"{r['median_ms'][fast]:6.1f} [{r['min_ms'][fast]:4.1f}] {r['speedup'][fig]:7.1f}x")
    print(f"both fast PNGs: {r['fast_total_ms']:.1f} ms; of which the grid prediction "
          f"(model.predict_proba, 40000 points, same in both paths): "
          f"{r['median_ms']['boundary/predict_only']:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
