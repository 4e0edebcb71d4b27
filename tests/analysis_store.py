"""One real sweep store per test session, shared by tests/test_analysis.py, tests/test_notebooks.py
and tests/test_ui_browser.py.

Each module calls `tiny_store(tmp_path_factory, session, part)` from a fixture; the store is built
once per test session, shared by every xdist worker (a file lock: the first starts the build; a
marker file per part says it is complete: each waits for its own part), by the real command line
`scripts/train.py --multirun +sweep=<preset> ...` into a temporary SQLite store. Two parts, each
built only when a test of the session reads it:
- "analysis": three small sweeps (two of the default preset, one of deep_init) that the analysis
  and notebook tests read;
- "ui": `make sweep` with every configuration and seed of the default preset (108 runs) in its own
  experiment, the one the browser tests show (built last: `make ui` links the newest sweep).
All sweeps of a build run one after another in ONE Python process (`_DRIVER`): each is the
script's own `__main__` block run with that sweep's argv, so the interpreter start and the imports
of Hydra, MLflow and matplotlib (~7 s CPU a sweep) are paid once per session, not once per sweep;
a part's tests start as soon as its last sweep ends. The build starts at the session's first test
(`start_store`, an autouse fixture in tests/conftest.py), beside the tests that read no store.
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from backprop_lab import QUIET_ENV
from conftest import session_dir
from ui_helpers import browser_missing_reason

REPO = Path(__file__).resolve().parents[1]
PYTHON = REPO / ".venv" / "bin" / "python"
# The default preset shrunk to 2 inits x 2 lrs x 2 widths x 2 seeds: 16 runs, 2 seeds per cell.
# DIVERGING_LR makes every run of its row genuinely diverge (a non-finite loss, status "diverged")
# after ~17 of the 30 epochs on moons (ReLU nets on moons survive lr=1e6; 1e10 overflows); the
# runs at lr=1.0 finish. A diverged run stops early (and mostly skips its second gradient check): cheap.
DIVERGING_LR = 1e10
DEFAULT_GRID = {"init": ("he", "normal"), "optim.lr": (1.0, DIVERGING_LR), "model.width": (2, 8),
                "seed": (0, 1)}
DEFAULT_EPOCHS = 30
# One job run first as its own sweep: the main sweep then reuses its FINISHED run (a skipped job),
# so the latest sweep holds 15 runs of its own plus 1 listed only in its sweep/children.csv.
REUSED_JOB = {"init": ("he",), "optim.lr": (1.0,), "model.width": (2,), "seed": (0,)}
# The deep_init preset (30 hidden ReLU layers of 32, gradient check off) shrunk to he vs xavier x 2
# seeds at lr 0.01 for 100 epochs: he's training loss falls below ln(2)/2 (notebook 02's "trains")
# after 42 and 65 epochs on seeds 0 and 1, xavier's stays at ln 2 (it stalls), as in the full preset.
DEEP_GRID = {"init": ("he", "xavier"), "seed": (0, 1), "optim.lr": (0.01,)}
DEEP_EPOCHS = 100
DEEP_DEPTH = 30  # conf/model/deep.yaml
# The browser tests' sweep: `make sweep` as cheap as it gets with every configuration of the
# default preset and its seeds (3 inits x 3 lr x 4 widths x 3 seeds = 108 children, more than the
# UI's 100 runs a page): 10 epochs still log two boundary snapshots (steps 0 and 10, so the image
# grid's slider moves) and a 10-point curve per run; the gradient check (two per run) is the
# largest share of a short run and no UI step shows it. Its own experiment: the analysis tests
# read the default experiment's latest sweep.
UI_EXPERIMENT = "backprop-lab/ui"
UI_EPOCHS = 10
UI_RUNS = 108
UI_OVERRIDES = ("gradcheck.enabled=false", f"experiment_name={UI_EXPERIMENT}")
# Which part the tests of each module read.
READERS = {"test_analysis.py": "analysis", "test_notebooks.py": "analysis", "test_ui_browser.py": "ui"}


@dataclass(frozen=True)
class Store:
    uri: str
    root: Path


# `python scripts/train.py --multirun <argv>` for each [argv, marker] of the JSON list in
# sys.argv[1], in this one process; after a sweep, its marker file (if any) is created: the tests
# reading the parts built so far go on while the next sweeps run. runpy runs the script as
# `__main__` (its precheck, then @hydra.main), exactly as the shell does; Hydra's global state is
# cleared between two sweeps (the next @hydra.main initialises it again). Any failure (a sweep
# exiting non-zero included) writes sys.argv[2] and ends the list.
_DRIVER = """
import json, pathlib, runpy, sys, traceback
from hydra.core.global_hydra import GlobalHydra
sweeps, failed = json.loads(sys.argv[1]), pathlib.Path(sys.argv[2])
try:
    for argv, marker in sweeps:
        sys.argv = ["scripts/train.py", "--multirun", *argv]
        try:
            runpy.run_path("scripts/train.py", run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise RuntimeError(f"sweep {argv} exited {exc.code}") from exc
        GlobalHydra.instance().clear()
        if marker:
            pathlib.Path(marker).touch()
except BaseException:
    failed.write_text(traceback.format_exc())
    raise
"""
_BUILD: list[subprocess.Popen] = []  # the build this process started (kept: it is waited for)


def sweep_args(root: Path, preset: str, grid: dict, epochs: int, *extra: str, folder: str = "") -> list[str]:
    """The `scripts/train.py --multirun` arguments (after --multirun) of one sweep into `root`."""
    overrides = [f"{k}={','.join(str(v) for v in values)}" for k, values in grid.items()]
    return [f"+sweep={preset}", f"train.epochs={epochs}", *overrides, *extra,
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}", f"tracking.artifact_root={root / 'art'}",
            f"hydra.sweep.dir={root / 'multirun' / (folder or preset)}"]


def part_sweeps(root: Path, part: str) -> list[list[str]]:
    if part == "analysis":
        return [sweep_args(root, "default", REUSED_JOB, DEFAULT_EPOCHS),
                sweep_args(root, "default", DEFAULT_GRID, DEFAULT_EPOCHS),
                sweep_args(root, "deep_init", DEEP_GRID, DEEP_EPOCHS)]
    return [sweep_args(root, "default", {}, UI_EPOCHS, *UI_OVERRIDES, folder="ui")]


def start_build(root: Path, parts: list[str]) -> subprocess.Popen:
    """Start the sweeps of `parts` (in order) in one Python process (`_DRIVER`), output in
    root/build.log; root/complete-<part> appears once a part is built, root/failed on a failure."""
    sweeps = []
    for part in parts:
        argvs = part_sweeps(root, part)
        sweeps += [[argv, None] for argv in argvs[:-1]] + [[argvs[-1], str(root / f"complete-{part}")]]
    python = str(PYTHON if PYTHON.exists() else sys.executable)
    env = {**os.environ, **QUIET_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(root / "build.log", "w") as log:
        return subprocess.Popen([python, "-c", _DRIVER, json.dumps(sweeps), str(root / "failed")], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT, text=True)


def wait_for(root: Path, part: str, timeout_s: float = 1800.0) -> None:
    """Until root/complete-<part> exists; a failed or vanished build raises with its log's tail."""
    deadline = time.monotonic() + timeout_s
    while not (root / f"complete-{part}").exists():
        ended = [b for b in _BUILD if b.poll() is not None]  # this process's build, if any
        if (root / "failed").exists() or ended or time.monotonic() > deadline:
            time.sleep(0.5)  # the marker of a build that ended well may come last
            if (root / f"complete-{part}").exists():
                return
            log = (root / "build.log").read_text()[-3000:] if (root / "build.log").exists() else ""
            raise RuntimeError(f"the test store's {part} part was not built:\n{log}")
        time.sleep(0.5)


def parts_read(session) -> set[str]:
    """The parts the session's tests read (the browser tests' only if they can run)."""
    modules = {item.path.name for item in session.items}
    wanted = {READERS[m] for m in modules & READERS.keys()}
    if browser_missing_reason() is not None:
        wanted.discard("ui")
    return wanted


def start_store(tmp_path_factory, session, part: str | None = None) -> Path:
    """Start, once per session, the build of every part the session's tests read (`parts_read`,
    and `part`; the ui part last) in one process; return the store's folder. Called at the
    session's first test (tests/conftest.py), so the sweeps run beside the tests that read no
    store instead of while a reader's worker waits; a session without readers builds nothing."""
    root = session_dir(tmp_path_factory) / "bpl_analysis_store"
    wanted = parts_read(session) | ({part} if part else set())
    if not wanted:
        return root
    with FileLock(f"{root}.lock"):  # the first worker starts the build, the others find it started
        if not root.exists():
            root.mkdir()
            _BUILD.append(start_build(root, [p for p in ("analysis", "ui") if p in wanted]))
            atexit.register(_BUILD[-1].wait)  # this worker may finish first: reap the build
    return root


def tiny_store(tmp_path_factory, session, part: str) -> Store:
    """The session's store once its `part` is built (the build started by `start_store`); each
    caller waits only for its own part."""
    root = start_store(tmp_path_factory, session, part)
    wait_for(root, part)
    return Store(uri=f"sqlite:///{root / 'mlflow.db'}", root=root)


def grid_size(grid: dict) -> int:
    size = 1
    for values in grid.values():
        size *= len(values)
    return size
