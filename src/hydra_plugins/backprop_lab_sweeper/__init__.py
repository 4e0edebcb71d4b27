"""Hydra's basic sweeper without its second up-front composition of jobs we already validated.

BasicSweeper.sweep composes every job once before launching it (`validate_batch_is_legal`), to
catch composition errors early. backprop_lab's SweepCallback has already composed and validated
every job in this process (backprop_lab.sweep.jobs.compose_jobs), so that pass only costs time
(~0.1 s a job). This sweeper skips the jobs compose_jobs recorded and leaves every other job to
Hydra's own check, e.g. when the callback is disabled (`~hydra.callbacks.sweep`).

Hydra instantiates plugins only from the `hydra_plugins` namespace package: this directory has
no `hydra_plugins/__init__.py` on purpose (the launchers in site-packages share the namespace).
Selected by conf/hydra/sweeper/backprop_lab.yaml. Hydra imports this module in every process at
start-up (plugin discovery): it stays tiny and imports nothing of backprop_lab.
"""

from __future__ import annotations

import sys
from typing import Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class BackpropLabSweeper(BasicSweeper):
    """BasicSweeper (same parameters: max_batch_size, params) minus the redundant validation."""

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        # Only a process that ran compose_jobs can have validated anything: no import otherwise.
        jobs = sys.modules.get("backprop_lab.sweep.jobs")
        assert self.config is not None
        unchecked = [overrides for overrides in batch
                     if jobs is None or not jobs.was_validated(self.config, list(overrides))]
        if unchecked:
            super().validate_batch_is_legal(unchecked)
