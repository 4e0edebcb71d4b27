"""Hydra sweep callback: validation up front, parent run, resume, summary (stub, filled in next)."""

from __future__ import annotations

from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig


class SweepCallback(Callback):
    """Driver-side hooks of a multirun (does nothing yet)."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        pass

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        pass
