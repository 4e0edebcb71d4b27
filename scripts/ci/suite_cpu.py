"""Where the test suite's CPU goes: a pytest plugin that writes each test's CPU seconds.

    make test TEST_ARGS="-p suite_cpu"                 # on every core, as make test runs
    BPL_SUITE_CPU=/tmp/cpu.jsonl make test TEST_ARGS="-p suite_cpu"

Each test's setup + call + teardown is charged with the CPU its process spent (user + system) and
the CPU of the child processes it reaped meanwhile (`getrusage(RUSAGE_CHILDREN)`: interpreters,
sweeps, servers, notebook kernels, with their own reaped children). A session fixture is charged to
the test that first asks for it. What no test reaps is not seen: Chromium's renderer and GPU
processes (reaped by Playwright's driver at the session's end) and daemons that outlive their test.
Every pytest process (each xdist worker) appends one JSON line per test to the file (test id,
its own and its children's CPU seconds, wall seconds, and the pid of the worker that ran it: the
order each worker ran its tests in); the process that started the session prints the totals per
file and the slowest tests at its end.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import pytest

PATH = Path(os.environ.get("BPL_SUITE_CPU", "/tmp/bpl_suite_cpu.jsonl"))


def _cpu() -> tuple[float, float]:
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def pytest_configure(config):
    if not hasattr(config, "workerinput"):  # the session's first process: a fresh file
        PATH.unlink(missing_ok=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    own0, kids0 = _cpu()
    wall0 = time.perf_counter()
    yield
    own1, kids1 = _cpu()
    line = {"test": item.nodeid, "own": round(own1 - own0, 3), "children": round(kids1 - kids0, 3),
            "wall": round(time.perf_counter() - wall0, 3), "pid": os.getpid()}
    with PATH.open("a") as out:  # one short write per line: workers append side by side
        out.write(json.dumps(line) + "\n")


def pytest_terminal_summary(terminalreporter, config):
    if hasattr(config, "workerinput") or not PATH.is_file():
        return
    rows = [json.loads(line) for line in PATH.read_text().splitlines() if line.strip()]
    cpu, kids, count = defaultdict(float), defaultdict(float), defaultdict(int)  # per file
    for row in rows:
        name = row["test"].split("::")[0]
        row["cpu"] = row["own"] + row["children"]
        cpu[name] += row["cpu"]
        kids[name] += row["children"]
        count[name] += 1
    write = terminalreporter.write_line
    write(f"suite CPU seen by getrusage: {sum(cpu.values()):.1f} s over {len(rows)} tests ({PATH})")
    write(f"{'file':<40} {'CPU s':>8} {'children':>9} {'tests':>6}")
    for name in sorted(cpu, key=cpu.get, reverse=True):
        write(f"{name:<40} {cpu[name]:8.1f} {kids[name]:9.1f} {count[name]:6d}")
    write("slowest tests by CPU:")
    for row in sorted(rows, key=lambda r: -r["cpu"])[:25]:
        write(f"{row['cpu']:8.1f} s  {row['test']}")
