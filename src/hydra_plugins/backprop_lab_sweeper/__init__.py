"""backprop_lab's Hydra sweeper: the object that owns a sweep (logic in backprop_lab.sweep.owner).

It expands the jobs as Hydra's BasicSweeper does (same `params` and `max_batch_size` fields),
validates them all, opens the parent run, launches the jobs with the configured launcher and
summarises what they return. `dry_run: true` (make sweep DRY=1) lists the jobs, writes nothing;
`compute_ahead: true` computes the first jobs while the driver starts (backprop_lab.sweep.ahead).

Hydra instantiates plugins only from the `hydra_plugins` namespace package: this directory has
no `hydra_plugins/__init__.py` on purpose (the launchers in site-packages share the namespace).
Selected by conf/hydra/sweeper/backprop_lab.yaml. Hydra imports this module in every process at
start-up (plugin discovery): it stays tiny and imports backprop_lab only when a sweep starts.
"""

from __future__ import annotations

import sys
from typing import Any

from hydra.plugins.sweeper import Sweeper


class BackpropLabSweeper(Sweeper):
    def __init__(self, max_batch_size: int | None = None, params: dict | None = None,
                 dry_run: bool = False, compute_ahead: bool = False) -> None:
        self.max_batch_size, self.params, self.dry_run = max_batch_size, params or {}, dry_run
        self.compute_ahead = compute_ahead
        self.hydra_context = self.config = self.launcher = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        from hydra.core.plugins import Plugins

        self.hydra_context, self.config = hydra_context, config
        try:
            self.launcher = Plugins.instance().instantiate_launcher(
                hydra_context=hydra_context, task_function=task_function, config=config)
        except Exception as exc:  # a bad hydra.launcher value (n_jobs=0): one line, not Hydra's trace
            cause = exc.__cause__ or exc
            print(f"sweep: hydra.launcher: {' '.join(str(cause).split())}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None

    def sweep(self, arguments: list[str]) -> Any:
        from backprop_lab.sweep.owner import Sweep

        return Sweep(self.config, self.launcher, self.hydra_context.config_loader,
                     params=dict(self.params), max_batch_size=self.max_batch_size,
                     dry_run=bool(self.dry_run),
                     compute_ahead=bool(self.compute_ahead)).run(list(arguments))
