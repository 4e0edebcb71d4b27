"""Smoke test of scripts/bench_engine.py: a real subprocess in --quick mode; no timing asserts."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from backprop_lab import QUIET_ENV

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_engine_quick_runs_and_writes_parsable_results(tmp_path):
    out = tmp_path / "bench.json"
    env = {**os.environ, **QUIET_ENV}
    cmd = [sys.executable, str(REPO / "scripts" / "bench_engine.py"), "--quick", "--repeats", "1",
           "--json", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "engine/notebook =" in proc.stdout and "engine/sklearn  =" in proc.stdout
    data = json.loads(out.read_text())
    assert data["quick"] is True and data["blas"]["pools"]
    assert [r["size"] for r in data["results"]] == ["small", "large"]
    for row in data["results"]:
        assert set(row["timings"]) == {"engine", "notebook", "sklearn"}
        for t in row["timings"].values():
            assert t["min_us"] > 0 and t["min_us"] <= t["median_us"]
        assert row["ratio_engine_notebook"] == pytest.approx(
            row["timings"]["engine"]["min_us"] / row["timings"]["notebook"]["min_us"])
        assert isinstance(row["met_notebook_target"], bool)
