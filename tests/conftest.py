"""Shared test set-up: telemetry off, marker gating."""

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("BPL_DISTRIBUTED", "0") == "1":
        return
    skip = pytest.mark.skip(reason="distributed test: run with `make test DISTRIBUTED=1`")
    for item in items:
        if "distributed" in item.keywords:
            item.add_marker(skip)
