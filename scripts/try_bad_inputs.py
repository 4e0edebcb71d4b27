"""Try every bad input of docs/reliability.md as a real command and report how each one ends.

    python scripts/try_bad_inputs.py [--markdown] [--only SUBSTRING]

Each case runs `scripts/train.py` (or serve.py / reproduce.py / `make sweep`) in a fresh temporary
folder with its own SQLite store, exactly as a user would type it. A case passes when the command exits
non-zero within 5 s with ONE line of output (stdout + stderr), writes nothing to the store or the
artifact root (a refused store is byte-identical afterwards) and never shows a password.
Hydra's own `outputs/`/`multirun/` log folders are not counted as writes. Exit code: 0 when all
cases pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backprop_lab import QUIET_ENV
from backprop_lab.env import free_port

REPO = Path(__file__).resolve().parent.parent
LIMIT_S = 5.0
SECRET = "s3cret-pw"
HYDRA_LOGS = ("outputs", "multirun")
MAKE_OWN = re.compile(r"^make(\[\d+\])?: \*\*\* ")  # make's own line after a failing recipe


def _template() -> Path:
    from backprop_lab.tracking.store import _schema_template  # a migrated empty MLflow store

    template = _schema_template()
    if template is None:
        sys.exit("try_bad_inputs: cannot build MLflow's schema template (no writable cache folder)")
    return template


def _copy(db: Path) -> None:
    shutil.copyfile(_template(), db)


def _drop(table: str) -> Callable[[Path], None]:
    def make(db: Path) -> None:
        _copy(db)
        with sqlite3.connect(db) as con:
            con.execute(f"DROP TABLE {table}")
    return make


def _random_bytes(db: Path) -> None:
    db.write_bytes(random.Random(0).randbytes(64 * 1024))


def _damaged_first_page(db: Path) -> None:
    data = bytearray(_template().read_bytes())
    data[100:4096] = random.Random(1).randbytes(3996)
    db.write_bytes(bytes(data))


def _foreign(db: Path) -> None:
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")



@dataclass
class Case:
    name: str
    args: list[str]  # after the script; {db} {art} {port} are filled in
    script: str = "train.py"
    make_store: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    own_store: bool = False  # the args name the store themselves


def cases() -> list[Case]:
    t = "tracking.uri=sqlite:///{db}"
    a = "tracking.artifact_root={art}"
    store = [t, a, "train.epochs=2"]
    ui = ["ui", "--store-uri", "sqlite:///{db}", "--artifact-root", "{art}", "--port", "{port}"]
    out = [
        # Broken stores (issue 13).
        Case("store: sqlite:/// (no file)", ["tracking.uri=sqlite:///", a], own_store=True),
        Case("store: a folder", ["tracking.uri=sqlite:///{dir}", a], own_store=True),
        Case("store: random bytes", store, make_store=_random_bytes),
        Case("store: damaged first page", store, make_store=_damaged_first_page),
        *[Case(f"store: table {t_} dropped", store, make_store=_drop(t_))
          for t_ in ("latest_metrics", "runs", "alembic_version", "metrics", "tags")],
        Case("store: someone else's SQLite file (notes)", store, make_store=_foreign),
        Case("make ui: random bytes", ui, script="serve.py", make_store=_random_bytes),
        Case("make ui: a folder", ["ui", "--store-uri", "sqlite:///{dir}", "--artifact-root", "{art}",
                                   "--port", "{port}"], script="serve.py", own_store=True),
        Case("make ui: table runs dropped", ui, script="serve.py", make_store=_drop("runs")),
        Case("store: unwritable folder", ["tracking.uri=sqlite:////proc/bpl/mlflow.db", a], own_store=True),
        Case("store: dead server", ["tracking.uri=http://127.0.0.1:1"], own_store=True),
        Case("store: dead server with user:password", [],
             env={"MLFLOW_TRACKING_URI": f"http://alice:{SECRET}@127.0.0.1:1"}, own_store=True),
        # Values (issue 13).
        *[Case(f"value: {o}", [*store, o]) for o in (
            "optim.lr=inf", "optim.lr=1e400", "optim.lr=nan", "train.epochs=1000000000000",
            "model.depth=2000", "gradcheck.h=1e-300", "experiment_name=" + "x" * 501,
            "experiment_name=../../x", "experiment_name=", "optim.lr=０.１", "experiment_name=run😀")],
        Case("sweep value: optim.lr=0.1,inf", ["--multirun", "optim.lr=0.1,inf", *store]),
        Case("sweep value: optim.lr=0.1,０.２", ["--multirun", "optim.lr=0.1,０.２", *store]),
        # `make sweep JOBS=... LAUNCHER=...` as typed (make's own "*** Error 2" line not counted),
        # and the setting the Makefile passes on, typed straight to the script.
        *[Case(f"make sweep {v}", ["sweep", v, "DRY=1", "ARGS=" + " ".join([t, a])], script="make")
          for v in ("JOBS=0", "JOBS=abc", "LAUNCHER=nope")],
        Case("sweep: hydra.launcher.n_jobs=0", ["--multirun", "hydra.launcher.n_jobs=0", *store]),
        Case("sweep: hydra.launcher.n_jobs=abc", ["--multirun", "hydra.launcher.n_jobs=abc", *store]),
        # The older list (docs/reliability.md, issue 5).
        *[Case(f"value: {o}", [*store, o]) for o in (
            "optim.lr=-1", "optim.lr=0", "optim.lr=abc", "model.width=0", "model.width=10.5",
            "train.epochs=0", "optim.lrr=0.1", "+optim.lrr=0.1", "init=nope", "data=nope",
            "data.test_fraction=1.0", "seed=-1")],
        Case("sweep value: optim.lr=0.1,-1", ["--multirun", "optim.lr=0.1,-1", *store]),
        Case("sweep: SWEEP=nope", ["--multirun", "+sweep=nope", *store]),
        Case("reproduce: unknown run id", ["0123456789abcdef0123456789abcdef", "--tracking-uri",
                                           "sqlite:///{db}"], script="reproduce.py", make_store=_copy),
        Case("reproduce: missing store", ["abc", "--tracking-uri", "sqlite:///{db}"],
             script="reproduce.py"),
        Case("reproduce: random-bytes store", ["abc", "--tracking-uri", "sqlite:///{db}"],
             script="reproduce.py", make_store=_random_bytes),
    ]
    return out


@dataclass
class Outcome:
    case: Case
    code: int | None
    lines: list[str]
    seconds: float
    cpu_seconds: float  # user + sys of the command: what it costs on an idle machine
    untouched: bool
    leaked: bool
    hydra_logs: bool  # Hydra made its outputs/ or multirun/ log folder

    @property
    def one_line(self) -> bool:
        return self.code not in (0, None) and len(self.lines) == 1 and self.untouched and not self.leaked

    @property
    def ok(self) -> bool:
        return self.one_line and self.seconds <= LIMIT_S


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "d"
            for p in sorted(folder.rglob("*"))
            if p.relative_to(folder).parts[0] not in HYDRA_LOGS}


def try_case(case: Case, timeout: float) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="bpl-bad-") as tmp:
        folder = Path(tmp)
        (folder / "dir").mkdir()
        db, art = folder / "mlflow.db", folder / "art"
        if case.make_store:
            case.make_store(db)
        fill = {"db": str(db), "art": str(art), "dir": str(folder / "dir"), "port": str(free_port())}
        args = [a.format(**fill) if "{" in a else a for a in case.args]
        env = {**os.environ, **QUIET_ENV, **case.env}
        if "MLFLOW_TRACKING_URI" not in case.env:
            env.pop("MLFLOW_TRACKING_URI", None)
        before = _snapshot(folder)
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        try:
            if case.script == "make":
                env = {k: v for k, v in env.items() if not k.startswith(("MAKE", "MFLAGS"))}
                command = ["make", "--no-print-directory", "-C", str(REPO), *args]
            else:
                command = [sys.executable, str(REPO / "scripts" / case.script), *args]
            proc = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True,
                                  timeout=timeout)
            code, text = proc.returncode, proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as exc:
            code = None
            text = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
        seconds = time.monotonic() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - usage.ru_utime) + (after.ru_stime - usage.ru_stime)
        lines = [ln for ln in text.splitlines() if ln.strip() and not MAKE_OWN.match(ln)]
        return Outcome(case, code, lines, seconds, cpu, _snapshot(folder) == before, SECRET in text,
                       any((folder / d).exists() for d in HYDRA_LOGS))


def markdown(outcomes: list[Outcome]) -> str:
    rows = ["| # | bad input | exit | lines | wall s | CPU s | store untouched | Hydra logs | first line |",
            "|---|---|---|---|---|---|---|---|---|"]
    for i, o in enumerate(outcomes, 1):
        first = (o.lines[0] if o.lines else "(none)").replace("|", "\\|")
        first = first if len(first) <= 140 else first[:137] + "..."
        name = o.case.name if len(o.case.name) <= 60 else o.case.name[:57] + "..."
        rows.append(f"| {i} | `{name}` | {o.code if o.code is not None else 'timeout'} | {len(o.lines)} "
                    f"| {o.seconds:.1f} | {o.cpu_seconds:.1f} | {'yes' if o.untouched else 'NO'} "
                    f"| {'yes' if o.hydra_logs else '-'} | {first} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="run only the cases whose name contains this text")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds before a case is killed")
    p.add_argument("--markdown", action="store_true", help="print the table for docs/reliability.md")
    args = p.parse_args(argv)
    chosen = [c for c in cases() if args.only is None or args.only in c.name]
    outcomes = []
    for case in chosen:
        o = try_case(case, args.timeout)
        outcomes.append(o)
        if not args.markdown:
            print(f"{'ok  ' if o.ok else 'FAIL'} {o.seconds:5.1f}s cpu={o.cpu_seconds:4.1f}s exit={o.code} "
                  f"lines={len(o.lines)} "
                  f"untouched={o.untouched} {case.name}: {o.lines[0][:120] if o.lines else ''}", flush=True)
    n_ok = sum(o.ok for o in outcomes)
    n_line = sum(o.one_line for o in outcomes)
    n_cpu = sum(o.one_line and o.cpu_seconds <= LIMIT_S for o in outcomes)
    if args.markdown:
        print(markdown(outcomes))
    print(f"\n{len(outcomes)} bad inputs tried: {n_line} end in one line, non-zero, store untouched; "
          f"{n_ok} of them within {LIMIT_S:.0f} s wall clock, {n_cpu} within {LIMIT_S:.0f} s of CPU; "
          f"password shown: {sum(o.leaked for o in outcomes)}; "
          f"Hydra log folder made: {sum(o.hydra_logs for o in outcomes)}")
    return 0 if n_ok == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
