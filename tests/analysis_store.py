"""A real tiny sweep store shared by tests/test_analysis.py and tests/test_notebooks.py.

Both modules call `tiny_store(tmp_path_factory)` from a session fixture; the store is built once
per test session, shared by every xdist worker (a file lock; a marker file says it is complete),
by the real command line:
`scripts/train.py --multirun +sweep=<preset> ...` into a temporary SQLite store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

from backprop_lab import QUIET_ENV
from conftest import session_dir

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


@dataclass(frozen=True)
class Store:
    uri: str
    root: Path


def _sweep(root: Path, preset: str, grid: dict, epochs: int, *extra: str) -> None:
    overrides = [f"{k}={','.join(str(v) for v in values)}" for k, values in grid.items()]
    command = [str(PYTHON if PYTHON.exists() else sys.executable), "scripts/train.py", "--multirun",
               f"+sweep={preset}", f"train.epochs={epochs}", *overrides, *extra,
               f"tracking.uri=sqlite:///{root / 'mlflow.db'}", f"tracking.artifact_root={root / 'art'}",
               f"hydra.sweep.dir={root / 'multirun' / preset}"]
    env = {**os.environ, **QUIET_ENV}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"sweep {preset} failed ({done.returncode}):\n{done.stderr[-3000:]}")


def tiny_store(tmp_path_factory) -> Store:
    root = session_dir(tmp_path_factory) / "bpl_analysis_store"
    marker = root / "complete"
    with FileLock(f"{root}.lock"):  # the first worker builds it, the others wait and read it
        if not marker.exists():
            root.mkdir(exist_ok=True)
            _sweep(root, "default", REUSED_JOB, DEFAULT_EPOCHS)
            _sweep(root, "default", DEFAULT_GRID, DEFAULT_EPOCHS)
            _sweep(root, "deep_init", DEEP_GRID, DEEP_EPOCHS)
            marker.touch()
    return Store(uri=f"sqlite:///{root / 'mlflow.db'}", root=root)


def grid_size(grid: dict) -> int:
    size = 1
    for values in grid.values():
        size *= len(values)
    return size
