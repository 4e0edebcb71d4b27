"""Tracking overhead of the default sweep, cold, and batched vs naive per-value logging.

    .venv/bin/python scripts/bench_tracking.py [--preset default] [--subset 4] [--skip-naive] [--keep]

1. Cold sweep: a NEW interpreter runs `scripts/train.py --multirun +sweep=<preset>` into a fresh
   temporary SQLite store. Reports its wall time, the runs' compute (time/train_s +
   time/gradcheck_s, as logged), and the median per-run tracking overhead
   (time/wall_s - compute: validation, store look-ups, logging, the three figures, artifacts).
2. Subset: the first N configs of the sweep again, in this process, each run twice on fresh
   stores: through experiment.run (batched) and with naive per-value mlflow.log_metric /
   log_param / log_figure calls after the same compute.
Targets (issue 3): median overhead <= 0.15 s/run; sweep wall <= 3 x compute + 5 s; >= 30x less
tracking time than naive logging on the subset.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backprop_lab import QUIET_ENV  # (its import turned telemetry off here too)

REPO = Path(__file__).resolve().parent.parent


def cold_sweep(tmp: Path, preset: str) -> tuple[float, list]:
    """Run the preset in a new interpreter; return (wall seconds, child runs)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp / 'sweep-store' / 'mlflow.db'}"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", f"+sweep={preset}",
           f"tracking.uri={uri}", f"tracking.artifact_root={tmp / 'sweep-store' / 'art'}",
           f"hydra.sweep.dir={tmp / 'sweep'}"]
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **QUIET_ENV}
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"bench: the sweep failed (exit {proc.returncode}): {proc.stderr.strip()[-500:]}")
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])
            if r.data.tags.get("bpl.role") == "child"]
    return wall, runs


def _compute_s(run) -> float:
    m = run.data.metrics
    return m["time/train_s"] + m["time/gradcheck_s"]


def subset_batched(tmp: Path, configs: list) -> list[float]:
    """experiment.run on a fresh store; per-run overhead (wall - compute)."""
    from backprop_lab.tracking import run as experiment

    out = []
    for cfg in configs:
        cfg = {**cfg, "force": True,
               "tracking": {"uri": f"sqlite:///{tmp / 'batched' / 'mlflow.db'}",
                            "artifact_root": str(tmp / "batched" / "art")}}
        with open(os.devnull, "w") as quiet:
            s = experiment.run(cfg, out=quiet)
        out.append(s.metrics["time/wall_s"] - s.metrics["time/train_s"] - s.metrics["time/gradcheck_s"])
    return out


def subset_naive(tmp: Path, configs: list) -> list[float]:
    """Same compute, then one MLflow call per value (params, metrics, figures)."""
    import mlflow

    from backprop_lab.config.schema import flatten, validate
    from backprop_lab.core import compute
    from backprop_lab.figures import plots
    from backprop_lab.tracking import client as tracking

    uri = f"sqlite:///{tmp / 'naive' / 'mlflow.db'}"
    art = str(tmp / "naive" / "art")
    client = tracking.prepare_store(uri, art)
    exp_id = tracking.ensure_experiment(client, "bench/naive", art)
    mlflow.set_tracking_uri(uri)
    out = []
    for cfg in configs:
        rc = validate(cfg)
        ds = compute.dataset_for(rc)
        model = compute.model_for(rc, ds)
        outcome = compute.compute(rc, ds, model)
        t = time.perf_counter()
        with mlflow.start_run(experiment_id=exp_id):
            for k, v in flatten(rc).items():
                mlflow.log_param(k, v)
            steps = outcome.history["epoch"]
            for key, values in outcome.history.items():
                if key != "epoch":
                    for step, v in zip(steps, values, strict=True):
                        mlflow.log_metric(key, float(v), step=int(step))
            for key, v in outcome.scalars.items():
                mlflow.log_metric(key, float(v))
            figs = {"data": plots.data_figure(ds), "curves": plots.curves_figure(outcome.history),
                    "decision_boundary": plots.decision_boundary_figure(model, outcome.params, ds)}
            for name, fig in figs.items():
                mlflow.log_figure(fig, f"plots/{name}.png")
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", help="sweep preset (conf/sweep/<name>.yaml)")
    ap.add_argument("--subset", type=int, default=4, help="runs in the batched-vs-naive comparison")
    ap.add_argument("--skip-naive", action="store_true", help="skip the (slow) naive comparison")
    ap.add_argument("--keep", action="store_true", help="keep the temporary stores and print where")
    args = ap.parse_args()
    if not (REPO / "conf" / "sweep" / f"{args.preset}.yaml").is_file():
        sys.exit(f"bench: no sweep preset {args.preset!r} in conf/sweep/")
    mlflow_dir = Path(importlib.util.find_spec("mlflow").origin).parent
    if os.environ.get("PYTHONDONTWRITEBYTECODE") and not list(mlflow_dir.glob("__pycache__/*.pyc")):
        print("note: PYTHONDONTWRITEBYTECODE is set and mlflow has no compiled byte code: "
              "the cold interpreter recompiles every import (make setup installs with --compile-bytecode)")

    tmp = Path(tempfile.mkdtemp(prefix="bpl-bench-"))
    wall, runs = cold_sweep(tmp, args.preset)
    compute = sum(_compute_s(r) for r in runs)
    overhead = [r.data.metrics["time/wall_s"] - _compute_s(r) for r in runs]
    recorded = [(r.info.end_time - r.info.start_time) / 1000 - _compute_s(r) for r in runs]
    med = statistics.median(overhead)
    print(f"cold sweep +sweep={args.preset}: {len(runs)} runs in {wall:.1f} s wall; "
          f"compute (train + gradcheck) {compute:.1f} s; budget 3 x compute + 5 = {3 * compute + 5:.1f} s")
    print(f"per-run tracking overhead (wall - compute): median {med:.3f} s, "
          f"max {max(overhead):.3f} s; MLflow start->end minus compute: "
          f"median {statistics.median(recorded):.3f} s")
    ok = {"overhead <= 0.15 s/run": med <= 0.15, "sweep <= 3 x compute + 5 s": wall <= 3 * compute + 5}

    if not args.skip_naive:
        import yaml
        from mlflow import MlflowClient

        client = MlflowClient(f"sqlite:///{tmp / 'sweep-store' / 'mlflow.db'}")
        runs.sort(key=lambda r: r.info.start_time)
        configs = []
        for r in runs[: args.subset]:
            path = client.download_artifacts(r.info.run_id, "config/config.yaml",
                                             str(tmp / "cfg" / r.info.run_id))
            configs.append(yaml.safe_load(open(path)))
        batched = subset_batched(tmp, configs)
        naive = subset_naive(tmp, configs)
        ratio = sum(naive) / sum(batched)
        print(f"subset of {len(configs)} runs: tracking time batched {sum(batched):.2f} s "
              f"(median {statistics.median(batched):.3f} s/run), naive per-value {sum(naive):.2f} s "
              f"(median {statistics.median(naive):.3f} s/run): {ratio:.0f}x")
        ok[">= 30x faster than naive"] = ratio >= 30
    for name, passed in ok.items():
        print(f"  {'MET ' if passed else 'MISS'} {name}")
    print(f"stores kept in {tmp}" if args.keep else "", end="\n" if args.keep else "")
    if not args.keep:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
