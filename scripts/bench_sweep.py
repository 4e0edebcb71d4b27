"""A sweep at the speed of its compute (issue 14): floor, cold wall time, the peer, store, scale.

    .venv/bin/python scripts/bench_sweep.py                       # everything (~5 min idle)
    .venv/bin/python scripts/bench_sweep.py --only floor,cold,peer --repeat 3
    .venv/bin/python scripts/bench_sweep.py --args seed=0,1,2     # extra overrides for the sweep

Parts (--only, comma-separated):
  floor   the sweep's runs through the core API alone (dataset, init, both gradient checks,
          training; no Hydra, no MLflow), one after the other in this process.
  imports a new interpreter that imports what a sweep imports (hydra, mlflow, numpy,
          matplotlib, backprop_lab) and exits: the start-up share of the cold budget.
  cold    `scripts/train.py --multirun +sweep=<preset>` in a new interpreter on a fresh SQLite
          store, with the configured launcher (JOBS=<n> as `hydra.launcher.n_jobs`).
  peer    what a user would pick instead: scikit-learn GridSearchCV over MLPClassifier with
          `mlflow.sklearn.autolog()` (every configuration logged) on a fresh SQLite store, the
          same number of configurations (lr x width x one more axis: random_state) and epochs.
  store   store bytes per run at 200, 20,000 and 100,000 epochs (one run each, fresh store).
  scale   a sweep of --scale-runs tiny runs: per-run overhead against run index (figure
          docs/img/scale_overhead.png), then analysis.load_runs of them. --scale-store DIR keeps
          the SQLite store (a DIR holding one is read again); --scale-server URL logs through a
          tracking server instead (make server STORE_URI=postgresql://...); --scale-read only
          reads; --json FILE keeps the curve, --scale-figure A.json B.json draws one panel each.
Each timed part runs --repeat times; the MINIMUM is reported (the machine is shared: the min is
the least disturbed run). Targets: cold <= 0.7 x peer; cold <= 1.3 x floor + imports.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from backprop_lab import QUIET_ENV  # (its import turned telemetry off here too)

REPO = Path(__file__).resolve().parent.parent
PARTS = ("floor", "imports", "cold", "peer", "store", "scale")
SCALE_FIGURE = REPO / "docs" / "img" / "scale_overhead.png"


# --------------------------------------------------------------------------- the sweep's jobs


def sweep_configs(preset: str, extra: list[str]) -> list[tuple[list[str], object]]:
    """(overrides, RunConfig) of every job of the preset, as Hydra's basic sweeper crosses them."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    from backprop_lab.config.schema import validate

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        base = compose("config", [f"+sweep={preset}"], return_hydra_config=True)
        params = {k: str(v) for k, v in (base.hydra.sweeper.params or {}).items()}
        for item in extra:
            key, _, value = item.partition("=")
            params[key] = value
        parser = OverridesParser.create()
        axes = []
        for key, value in params.items():
            override = parser.parse_override(f"{key}={value}")
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [value]
            axes.append([f"{key}={v}" for v in values])
        jobs = [list(combo) for combo in itertools.product(*axes)]
        out = []
        for overrides in jobs:
            cfg = compose("config", [f"+sweep={preset}", *overrides])
            out.append((overrides, validate(OmegaConf.to_container(cfg, resolve=True))))
    GlobalHydra.instance().clear()
    return out


# --------------------------------------------------------------------------- parts


def floor(configs) -> tuple[float, float]:
    """Seconds of the runs' compute through the core API alone, one process, one after the other."""
    from threadpoolctl import threadpool_limits

    from backprop_lab.core.compute import compute_run

    clock = Clock()
    with clock, threadpool_limits(limits=1, user_api="blas"):  # as the runs do (blas_threads: 1)
        for _, rc in configs:
            compute_run(rc)
    return clock.wall, clock.cpu


IMPORTS = ("import hydra, mlflow, numpy, matplotlib, matplotlib.pyplot, sqlalchemy, pydantic; "
           "import backprop_lab.tracking.run, backprop_lab.tracking.record, backprop_lab.figures.render")


def imports() -> tuple[float, float]:
    """Wall and CPU seconds of a new interpreter importing what a sweep's driver imports."""
    with Clock() as clock:
        subprocess.run([sys.executable, "-c", IMPORTS], check=True, env=_env())
    return clock.wall, clock.cpu


class Clock:
    """Wall seconds and CPU seconds (this process + the children it waited for) of a block.

    On a busy machine the wall time says how long one waited, the CPU time what the work cost."""

    def __enter__(self) -> Clock:
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self._wall
        self.cpu = _cpu_seconds() - self._cpu


def _cpu_seconds() -> float:
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _env() -> dict:
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, **QUIET_ENV}
    env["PYTHONPATH"] = str(REPO / "src")
    return env


def cold(tmp: Path, preset: str, extra: list[str], jobs: int | None) -> tuple[float, float, int, int]:
    """The sweep in a new interpreter on a fresh store: (wall s, CPU s, runs, jobs whose compute
    was done ahead while the driver started: sweep/ahead.py)."""
    store = tmp / f"cold-{time.monotonic_ns()}"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", f"+sweep={preset}",
           f"tracking.uri={uri}", f"tracking.artifact_root={store / 'art'}",
           f"hydra.sweep.dir={store / 'sweep'}", *extra]
    if jobs is not None:
        cmd.append(f"hydra.launcher.n_jobs={jobs}")
    with Clock() as clock:
        proc = subprocess.run(cmd, cwd=tmp, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: the sweep failed (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
    n_runs = _count_children(uri)
    ahead = sum("sweep.computed=" in f.read_text() for f in (store / "sweep").glob("*/.hydra/overrides.yaml"))
    shutil.rmtree(store, ignore_errors=True)
    return clock.wall, clock.cpu, n_runs, ahead


def _count_children(uri: str) -> int:
    import sqlite3

    with sqlite3.connect(uri.removeprefix("sqlite:///")) as db:
        return db.execute("select count(*) from tags where key = 'mlflow.parentRunId'").fetchone()[0]


PEER = r"""
import sys, time, warnings
t0 = time.perf_counter()
import mlflow, numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, PredefinedSplit
from sklearn.neural_network import MLPClassifier
from sklearn.datasets import make_moons
uri, epochs, lrs, widths, states = sys.argv[1], int(sys.argv[2]), *[eval(a) for a in sys.argv[3:6]]
mlflow.set_tracking_uri(uri)
mlflow.set_experiment("peer")
mlflow.sklearn.autolog(max_tuning_runs=None, silent=True)
X, y = make_moons(400, noise=0.1, random_state=0)
fold = np.r_[np.full(320, -1), np.zeros(80)]  # one train/test split, as the sweep's runs
mlp = MLPClassifier(activation="relu", solver="sgd", batch_size=320, momentum=0.0, alpha=0.0,
                    learning_rate="constant", shuffle=False, max_iter=epochs, tol=0.0,
                    n_iter_no_change=epochs + 1)
grid = {"learning_rate_init": lrs, "hidden_layer_sizes": [(w,) for w in widths], "random_state": states}
search = GridSearchCV(mlp, grid, cv=PredefinedSplit(fold), refit=False, n_jobs=1)
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    search.fit(X, y)
n = len(search.cv_results_["params"])
print(n, time.perf_counter() - t0)
"""


def peer(tmp: Path, n_configs: int, epochs: int, lrs: list, widths: list) -> tuple[float, float, int]:
    """The scikit-learn + autolog sweep in a new interpreter on a fresh store: (wall s, CPU s, configs)."""
    n_states = max(1, n_configs // (len(lrs) * len(widths)))
    store = tmp / f"peer-{time.monotonic_ns()}"
    store.mkdir()
    cmd = [sys.executable, "-c", PEER, f"sqlite:///{store / 'mlflow.db'}", str(epochs),
           repr(lrs), repr(widths), repr(list(range(n_states)))]
    with Clock() as clock:
        proc = subprocess.run(cmd, cwd=store, env=_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"bench: the peer failed: {proc.stderr.strip()[-800:]}")
    shutil.rmtree(store, ignore_errors=True)
    return clock.wall, clock.cpu, int(proc.stdout.split()[0])


# --------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="default", help="sweep preset (conf/sweep/<name>.yaml)")
    ap.add_argument("--args", nargs="*", default=[], help="extra sweep overrides, e.g. seed=0,1,2")
    ap.add_argument("--only", default=",".join(PARTS), help=f"parts to run, from {','.join(PARTS)}")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each timed part (the min is kept)")
    ap.add_argument("--jobs", type=int, default=None, help="hydra.launcher.n_jobs of the cold sweep")
    ap.add_argument("--scale-runs", type=int, default=1000)
    ap.add_argument("--scale-store", type=Path, default=None,
                    help="scale: keep the SQLite store in this folder (a folder holding it is read again)")
    ap.add_argument("--scale-server", default=None,
                    help="scale: log through this tracking server (make server) instead of SQLite")
    ap.add_argument("--scale-label", default=None, help="scale: the panel's title (default: the store)")
    ap.add_argument("--scale-read", action="store_true",
                    help="scale: only read the sweep already in --scale-store / --scale-server")
    ap.add_argument("--scale-figure", type=Path, nargs="*", default=None,
                    help="scale: draw docs/img/scale_overhead.png from these --json files (one panel each)")
    ap.add_argument("--store-epochs", default="200,20000,100000", help="epoch counts of the store part")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = ap.parse_args()
    if args.scale_figure:  # only the figure, from earlier --json results
        scale_figure([json.loads(p.read_text()) for p in args.scale_figure], SCALE_FIGURE)
        print(f"bench_sweep: {SCALE_FIGURE.relative_to(REPO)} from {len(args.scale_figure)} results")
        return
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        sys.exit(f"bench: --only {','.join(unknown)}: valid parts are {','.join(PARTS)}")
    if not (REPO / "conf" / "sweep" / f"{args.preset}.yaml").is_file():
        sys.exit(f"bench: no sweep preset {args.preset!r} in conf/sweep/")

    tmp = Path(tempfile.mkdtemp(prefix="bpl-bench-sweep-"))
    res: dict = {"cpus": os.cpu_count(), "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
                 "repeat": args.repeat}
    print(f"bench_sweep: +sweep={args.preset} {' '.join(args.args)}; {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.1f}; min of {args.repeat}", flush=True)
    try:
        configs = sweep_configs(args.preset, args.args) if {"floor", "peer"} & set(parts) else []
        if "floor" in parts:
            _best(res, "floor", [floor(configs) for _ in range(args.repeat)])
            print(f"  floor   {len(configs)} runs through the core API: {_show(res, 'floor')}", flush=True)
        if "imports" in parts:
            _best(res, "imports", [imports() for _ in range(args.repeat)])
            print(f"  imports new interpreter + hydra/mlflow/numpy/matplotlib: {_show(res, 'imports')}",
                  flush=True)
        if "cold" in parts:
            runs = [cold(tmp, args.preset, args.args, args.jobs) for _ in range(args.repeat)]
            _best(res, "cold", runs)
            res["cold_runs"] = runs[0][2]
            res["cold_ahead"] = [r[3] for r in runs]
            jobs = args.jobs if args.jobs is not None else "default"
            print(f"  cold    the sweep, n_jobs={jobs}, {res['cold_runs']} runs: {_show(res, 'cold')}; "
                  f"computed ahead: {', '.join(map(str, res['cold_ahead']))} jobs", flush=True)
        if "peer" in parts:
            lrs = sorted({rc.optim.lr for _, rc in configs})
            widths = sorted({rc.model.width for _, rc in configs})
            epochs = configs[0][1].train.epochs
            runs = [peer(tmp, len(configs), epochs, lrs, widths) for _ in range(args.repeat)]
            _best(res, "peer", runs)
            res["peer_configs"] = runs[0][2]
            print(f"  peer    GridSearchCV(MLPClassifier) + mlflow.sklearn.autolog, "
                  f"{res['peer_configs']} configs x {epochs} epochs: {_show(res, 'peer')}", flush=True)
        if "store" in parts:
            epochs_list = [int(e) for e in args.store_epochs.split(",")]
            res["store_bytes_per_run"] = store_bytes(tmp, epochs_list)
        if "scale" in parts:
            label = args.scale_label or ("PostgreSQL via make server" if args.scale_server else "SQLite")
            load = None if args.scale_read else round(os.getloadavg()[0], 1)  # at the sweep's start
            res.update(scale(tmp, args.scale_runs, store=args.scale_store, server=args.scale_server,
                             label=label, jobs=args.jobs, read_only=args.scale_read),
                       jobs=args.jobs or os.cpu_count(), load=load)
            if not args.scale_figure:
                scale_figure([res], SCALE_FIGURE)
                print(f"          figure: {SCALE_FIGURE.relative_to(REPO)}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    _verdict(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))


def _best(res: dict, part: str, runs: list) -> None:
    """The least disturbed of the repeats: min wall and min CPU seconds (each over all repeats)."""
    res[f"{part}_s"] = min(r[0] for r in runs)
    res[f"{part}_cpu_s"] = min(r[1] for r in runs)
    res[f"{part}_all_s"] = [round(r[0], 2) for r in runs]


def _show(res: dict, part: str) -> str:
    every = ", ".join(f"{w:.1f}" for w in res[f"{part}_all_s"])
    return f"{res[f'{part}_s']:.2f} s wall (all: {every}), {res[f'{part}_cpu_s']:.2f} s CPU"


def _verdict(res: dict) -> None:
    for kind, suffix in (("wall", "_s"), ("CPU", "_cpu_s")):
        cold, peer_, fl, imp = (res.get(f"{p}{suffix}") for p in ("cold", "peer", "floor", "imports"))
        if cold is not None and peer_ is not None:
            ratio = cold / peer_
            verdict = "MET" if ratio <= 0.7 else "MISS"
            print(f"  {kind:4s} cold / peer = {ratio:.2f} (target <= 0.7): {verdict}")
        if cold is not None and fl is not None and imp is not None:
            budget = 1.3 * fl + imp
            print(f"  {kind:4s} cold / (1.3 x floor + imports) = {cold / budget:.2f} (budget {budget:.2f} s, "
                  f"target <= 1): {'MET' if cold <= budget else 'MISS'}")


def store_bytes(tmp: Path, epochs_list=(200, 20_000, 100_000)) -> dict:
    """Bytes one run adds to a fresh store (SQLite file + WAL, artifacts) at each epoch count."""
    out = {}
    for epochs in epochs_list:
        store = tmp / f"store-{epochs}"
        cmd = [sys.executable, str(REPO / "scripts" / "train.py"), f"train.epochs={epochs}",
               f"tracking.uri=sqlite:///{store / 'mlflow.db'}", f"tracking.artifact_root={store / 'art'}",
               "experiment_name=bench/store"]
        proc = subprocess.run(cmd, cwd=tmp, env=_env(), capture_output=True, text=True)
        if proc.returncode != 0:
            sys.exit(f"bench: the {epochs}-epoch run failed: {proc.stderr.strip()[-800:]}")
        empty = tmp / "store-empty"
        if not empty.exists():  # the schema alone, to subtract
            code = "import sys; from backprop_lab.tracking import client as t; t.prepare_store(*sys.argv[1:])"
            cmd = [sys.executable, "-c", code, f"sqlite:///{empty / 'mlflow.db'}", str(empty / "art")]
            subprocess.run(cmd, env=_env(), check=True)
        db = _bytes(store, "mlflow.db*") - _bytes(empty, "mlflow.db*")
        art = _bytes(store / "art", "**/*")
        out[epochs] = {"sqlite": db, "artifacts": art}
        print(f"  store   {epochs:>7} epochs: SQLite +{db / 1e6:.2f} MB, artifacts {art / 1e6:.2f} MB",
              flush=True)
        shutil.rmtree(store, ignore_errors=True)
    return out


def _bytes(folder: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def scale(tmp: Path, n_runs: int, epochs: int = 5, store: Path | None = None,
          server: str | None = None, label: str = "SQLite", jobs: int | None = None,
          read_only: bool = False) -> dict:
    """A sweep of n_runs tiny runs (seed=0..n-1, gradient checks off), then its per-run overhead
    against run index, and analysis.load_runs of the sweep, timed.

    store: the SQLite store's folder (kept; a folder already holding the sweep is read, not
    re-run); server: a tracking server's URL (`make server`) to log through instead;
    read_only: read the sweep already logged there (e.g. one stopped early) without running it.
    Two overheads per run: inside the run (`time/wall_s` minus its compute: create to the last
    batch), and the sweep's wall time per run around its end (run ends over a window, x jobs,
    minus compute: also the launcher's composing and the final writes)."""
    store = store or tmp / "scale"
    uri = server or f"sqlite:///{store / 'mlflow.db'}"
    where = ["tracking=server", f"tracking.uri={server}"] if server else [
        f"tracking.uri={uri}", f"tracking.artifact_root={store / 'art'}"]
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", "+sweep=default",
           "init=he", "optim.lr=0.1", "model.width=4", f"seed=range(0,{n_runs})", f"train.epochs={epochs}",
           "gradcheck.enabled=false", *where, f"hydra.sweep.dir={store / 'sweep'}",
           "experiment_name=bench/scale"]
    if jobs is not None:
        cmd.append(f"hydra.launcher.n_jobs={jobs}")
    done = read_only or (not server and (store / "mlflow.db").is_file())
    wall = None
    if not done:
        load0, t = os.getloadavg()[0], time.perf_counter()
        proc = subprocess.run(cmd, cwd=tmp, env=_env(), capture_output=True, text=True)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            sys.exit(f"bench: the {n_runs}-run sweep failed: {proc.stderr.strip()[-800:]}")
        print(f"  scale   {label}: {n_runs} runs x {epochs} epochs in {wall:.1f} s (load {load0:.1f} "
              f"at start, {os.getloadavg()[0]:.1f} at end)", flush=True)
    else:
        print(f"  scale   {label}: reading the sweep already in {uri}", flush=True)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench/scale")
    runs, token = [], None
    while True:
        page = client.search_runs([exp.experiment_id], "tags.`bpl.role` = 'child'", max_results=1000,
                                  page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            break
    runs = [r for r in runs if "time/wall_s" in r.data.metrics]  # ended; a stopped sweep's last are not
    series = scale_series(runs, jobs or os.cpu_count())
    first, last = _tenths(series["in_run"])
    print(f"  scale   {label}: {len(runs)} runs; per-run overhead inside the run: median of the first "
          f"10 % {first:.3f} s, of the last 10 % {last:.3f} s", flush=True)
    share_first, share_last = _tenths(series["share"])
    print(f"          share of the sweep's wall per run - compute: first 10 % {share_first:.3f} s, "
          f"last 10 % {share_last:.3f} s", flush=True)
    from backprop_lab import analysis

    loads = []
    for _ in range(3):
        t = time.perf_counter()
        frame = analysis.load_runs(uri, "bench/scale")
        loads.append(time.perf_counter() - t)
    path = frame.attrs["read_path"]
    print(f"  load    analysis.load_runs of {len(frame)} runs ({path}): {min(loads):.2f} s "
          f"(all: {', '.join(f'{x:.2f}' for x in loads)}; load {os.getloadavg()[0]:.1f}; target <= 3 s)",
          flush=True)
    return {"label": label, "scale_runs": len(runs), "scale_wall_s": wall, "series": series,
            "scale_overhead_first10pct_s": first, "scale_overhead_last10pct_s": last,
            "scale_share_first10pct_s": share_first, "scale_share_last10pct_s": share_last,
            "load_runs_s": min(loads), "load_runs_rows": len(frame), "load_runs_path": path}


def scale_series(runs: list, jobs: int) -> dict:
    """in_run: [(seed, wall_s - compute)], by seed; share: [(i, the sweep's wall time per run
    around the i-th run to end (its end gaps over a window of 2w runs) x jobs - compute)]."""
    def compute_s(r):
        m = r.data.metrics
        return m.get("time/train_s", 0.0) + m.get("time/gradcheck_s", 0.0)

    in_run = sorted((int(r.data.params["seed"]), r.data.metrics["time/wall_s"] - compute_s(r)) for r in runs)
    ended = sorted((r for r in runs if r.info.end_time), key=lambda r: r.info.end_time)
    ends = [r.info.end_time / 1000 for r in ended]
    w = max(1, len(ends) // 40)
    share = []
    for i, r in enumerate(ended):
        lo, hi = max(0, i - w), min(len(ends) - 1, i + w)
        if hi > lo:
            share.append((i, (ends[hi] - ends[lo]) / (hi - lo) * jobs - compute_s(r)))
    return {"in_run": in_run, "share": share}


def _tenths(points: list) -> tuple[float, float]:
    """Medians of the first and of the last 10 % of the values."""
    values = [v for _, v in points]
    tenth = max(1, len(values) // 10)
    return _median(values[:tenth]), _median(values[-tenth:])


def _median(values: list) -> float:
    ordered = sorted(values)
    n = len(ordered)
    return (ordered[(n - 1) // 2] + ordered[n // 2]) / 2


def _rolling_median(values: list, window: int) -> list:
    return [_median(values[max(0, i - window):i + window + 1]) for i in range(len(values))]


def scale_figure(results: list[dict], path: Path) -> None:
    """One panel per store: per-run overhead against run index (dots: one run; lines: the rolling
    median of the in-run overhead, and the sweep's wall time per run over a window of run ends),
    the first and last 10 % medians written on the panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(results), 1, figsize=(8, 3.3 * len(results)), dpi=110, squeeze=False)
    for ax, res in zip(axes[:, 0], results, strict=True):
        in_run, share = res["series"]["in_run"], res["series"]["share"]
        window = max(1, len(in_run) // 40)
        x, y = [i for i, _ in in_run], [v for _, v in in_run]
        ax.plot(x, y, ".", ms=2, alpha=0.3, color="tab:blue", label="one run: inside the run")
        ax.plot(x, _rolling_median(y, window), color="tab:blue", lw=1.8,
                label=f"inside the run, rolling median ({2 * window + 1} runs)")
        sx, sy = [i for i, _ in share], [v for _, v in share]
        ax.plot(sx, sy, color="tab:red", lw=1.8,
                label=f"sweep's wall per run x jobs - compute ({2 * window + 1} runs' ends)")
        lines = []
        for name, pts in (("inside", in_run), ("share", share)):
            first, last = _tenths(pts)
            lines.append(f"{name}: first 10 % {first:.2f} s, last 10 % {last:.2f} s")
        ax.text(0.01, 0.97, "\n".join(lines), transform=ax.transAxes, va="top", fontsize=8,
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
        top = max(_rolling_median(y, window) + sy or [1.0])
        ax.set_ylim(0, top * 1.8)
        ax.set_xlim(0, max(x + sx) + 1)
        ax.set_ylabel("overhead per run (s)")
        load = f", load {res['load']} at its start" if res.get("load") is not None else ""
        ax.set_title(f"{res['label']}: {res['scale_runs']} runs of 5 epochs, "
                     f"{res.get('jobs', '?')} jobs{load}", fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    axes[-1, 0].set_xlabel("run index (seed; end order for the share)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
