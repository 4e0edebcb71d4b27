"""What one run records, measured: store bytes per run against the epoch count (issue 14: about
1 MB per run at most, any epochs) and the cost of the decision-boundary images (issue 11).

    .venv/bin/python scripts/bench_store.py [--epochs 200 20000 100000] [--json PATH]
    .venv/bin/python scripts/bench_store.py --epochs --images-cost 8   # images cost only

For each epoch count, in a fresh temporary SQLite store: a 1-epoch run first (it creates the
experiment, the dataset row and the schema's first pages), then the measured run of E epochs
through `tracking.run.run` (the real path: params, dataset input, downsampled history, boundary
images, final metrics). Reports how much the SQLite file grew (WAL checkpointed first), the
rows the run has in MLflow's metrics table, and the run's artifact bytes (history.npz: the exact
history; images: the boundary snapshots). `store_bytes_per_run` is what other benchmarks call.

--images-cost N: 2N + 2 default runs (1000 epochs, one process, one store, force=true) that
alternate with and without the boundary images (without: no snapshots, log_images_async a
no-op); the first of each is a warm-up. Prints the medians of each run's wall time, its
overhead (wall - time/total_s) and the process CPU time; then one warm snapshot's drawing and
one `MlflowClient.log_image` call, wall and CPU.
"""

from __future__ import annotations

import argparse
import io
import json
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from backprop_lab.env import set_quiet_env

set_quiet_env()  # before the mlflow imports below (importing backprop_lab did it too)
REPO = Path(__file__).resolve().parent.parent


def _db_bytes(db: Path) -> int:
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return db.stat().st_size


def _folder_bytes(folder: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in folder.rglob(pattern) if p.is_file())


def store_bytes_per_run(epochs: int, folder: Path) -> dict:
    """One run of `epochs` epochs (default config otherwise) into a fresh store under `folder`."""
    from hydra import compose, initialize_config_dir

    from backprop_lab.tracking import run as tracking_run

    db, art = folder / "mlflow.db", folder / "mlartifacts"
    base = [f"tracking.uri=sqlite:///{db}", f"tracking.artifact_root={art}", "experiment_name=bench-store"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        warm = tracking_run.run(compose("config", overrides=[*base, "train.epochs=1"]), out=io.StringIO())
        before = _db_bytes(db)
        t = time.perf_counter()
        summary = tracking_run.run(compose("config", overrides=[*base, f"train.epochs={epochs}"]),
                                   out=io.StringIO())
        seconds = time.perf_counter() - t
    assert warm.status == summary.status == "finished", (warm, summary)
    after = _db_bytes(db)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT COUNT(*) FROM metrics WHERE run_uuid = ?", (summary.run_id,)).fetchone()[0]
    run_dir = next(p for p in art.rglob(summary.run_id) if p.is_dir())
    return {"epochs": epochs, "store_bytes": after - before, "metric_rows": rows,
            "artifact_bytes": _folder_bytes(run_dir),
            "history_npz_bytes": _folder_bytes(run_dir, "history.*"),
            "image_bytes": _folder_bytes(run_dir / "artifacts" / "images"), "run_seconds": seconds}


def images_cost(n: int, folder: Path) -> dict:
    """Per-run medians with and without the boundary images, and per-call costs (docstring)."""
    import concurrent.futures
    import statistics

    from hydra import compose, initialize_config_dir

    from backprop_lab.core import train
    from backprop_lab.core.data import load_dataset
    from backprop_lab.core.mlp import MLP
    from backprop_lab.core.rng import make_rng
    from backprop_lab.figures import render
    from backprop_lab.tracking import client as tracking
    from backprop_lab.tracking import record
    from backprop_lab.tracking import run as tracking_run

    real = tracking.log_images_async, train.snapshot_schedule
    done = concurrent.futures.Future()
    done.set_result(0)
    base = [f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
            f"tracking.artifact_root={folder / 'mlartifacts'}", "force=true"]
    runs: dict[bool, list] = {True: [], False: []}
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        for i in range(2 * n + 2):
            on = bool(i % 2)
            tracking.log_images_async, train.snapshot_schedule = (
                real if on else (lambda *a: done, lambda epochs: []))
            cfg = compose("config", overrides=base)
            t, c = time.perf_counter(), time.process_time()
            summary = tracking_run.run(cfg, out=io.StringIO())
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            if i >= 2:
                runs[on].append((wall, wall - summary.metrics["time/total_s"], cpu))
    tracking.log_images_async, train.snapshot_schedule = real
    out = {}
    for on, rows in runs.items():
        wall, over, cpu = (statistics.median(col) for col in zip(*rows, strict=True))
        out["on" if on else "off"] = {"wall_s": wall, "overhead_s": over, "cpu_s": cpu}

    def timed(fn, repeats=15):
        fn()
        walls, cpus = [], []
        for _ in range(repeats):
            t, c = time.perf_counter(), time.process_time()
            fn()
            walls.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        return {"wall_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}

    ds = load_dataset("blobs", rng=make_rng(0, "data"))
    model = MLP((2, 10, 1))
    params = model.init_params("he", make_rng(0, "init"))

    def draw():
        return render.decision_boundary_pixels(model, params, ds, grid=record.SNAPSHOT_GRID,
                                               dpi=record.SNAPSHOT_DPI)

    client = tracking.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
    run_id = client.create_run(tracking.ensure_experiment(client, "images", str(folder / "art"))).info.run_id
    pixels, step = draw(), iter(range(10**6))
    out["draw_snapshot"] = timed(draw)
    out["log_image"] = timed(lambda: client.log_image(run_id, pixels, key="b", step=next(step)))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, nargs="*", default=[200, 20000, 100000])
    parser.add_argument("--images-cost", type=int, default=0, metavar="N",
                        help="also measure the boundary images' cost over N runs each way")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = []
    print(f"{'epochs':>8} {'store KB':>9} {'metric rows':>11} {'artifacts KB':>12} "
          f"{'history KB':>10} {'images KB':>9} {'run s':>7}")
    for epochs in args.epochs:
        with tempfile.TemporaryDirectory(prefix="bpl-bench-store-") as tmp:
            r = store_bytes_per_run(epochs, Path(tmp))
        results.append(r)
        print(f"{r['epochs']:>8} {r['store_bytes'] / 1e3:>9.0f} {r['metric_rows']:>11} "
              f"{r['artifact_bytes'] / 1e3:>12.0f} {r['history_npz_bytes'] / 1e3:>10.0f} "
              f"{r['image_bytes'] / 1e3:>9.0f} {r['run_seconds']:>7.1f}", flush=True)
    if args.images_cost:
        with tempfile.TemporaryDirectory(prefix="bpl-bench-images-") as tmp:
            cost = images_cost(args.images_cost, Path(tmp))
        results.append({"images_cost": cost})
        for key in ("off", "on"):
            r = cost[key]
            print(f"images {key:<3}: per run wall {r['wall_s'] * 1e3:.0f} ms, overhead "
                  f"{r['overhead_s'] * 1e3:.0f} ms, process CPU {r['cpu_s'] * 1e3:.0f} ms "
                  f"(medians of {args.images_cost})")
        for key in ("draw_snapshot", "log_image"):
            print(f"{key}: wall {cost[key]['wall_s'] * 1e3:.1f} ms, CPU {cost[key]['cpu_s'] * 1e3:.1f} ms")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
