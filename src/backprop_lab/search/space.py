"""A search space and a study's settings: `search:` of a composed config, checked in one line.

conf/search/<space>.yaml holds them under `search:` (next to the fixed parts of the run config,
e.g. `data: moons`); `SearchConfig.from_config(cfg)` checks them before anything is written, and
`suggest(trial, params)` turns an Optuna trial into the Hydra overrides of one configuration:

    params:                                  # keys: short names (config/names.py) or dotted keys
      lr: {low: 0.01, high: 1.0, log: true}  # float (log-uniform with log: true) -> optim.lr=...
      width: {low: 2, high: 64, log: true}   # int: both bounds are integers -> model.width=...
      init: [he, xavier, normal]             # categorical; a config group's name -> init=he
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from backprop_lab.config.names import GROUP_KEYS, SHORT_NAMES
from backprop_lab.config.schema import _NO_VALUE, ConfigError, one_line

_DOTTED = {short: dotted for dotted, short in SHORT_NAMES.items()}
_GROUP = {dotted: group for group, dotted in GROUP_KEYS.items()}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Range(_Strict):
    """A numeric range: int when both bounds are integers, else float; `log` samples log-scale."""

    low: float | int
    high: float | int
    log: bool = False

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int)


def _spec(key: str, value: Any) -> Range | tuple:
    """One entry of `search.params`: a list (categorical) or {low, high, log} (a range)."""
    where = f"search.params.{key}"
    if isinstance(value, list):
        if not value:
            raise ConfigError(where, value, "empty list of choices")
        return tuple(value)
    if not isinstance(value, dict):
        raise ConfigError(where, value, "must be a list of choices or {low, high, log}")
    try:
        spec = Range.model_validate(value)
    except ValidationError as exc:
        line = one_line(exc)
        raise ConfigError(f"{where}.{line.key}", line.value, line.reason) from None
    if not spec.low < spec.high:
        raise ConfigError(where, _NO_VALUE, f"empty range: low={spec.low} must be < high={spec.high}")
    if spec.log and spec.low <= 0:
        raise ConfigError(where, _NO_VALUE, f"a log range needs low > 0, got low={spec.low}")
    return spec


class PrunerConfig(_Strict):
    # Median pruning: a trial stops when its running test loss is worse than the median of the
    # trials before it at the same step, once startup_trials trials have ended and after
    # warmup_epochs epochs of its first seed.
    startup_trials: Annotated[int, Field(ge=0)] = 5
    warmup_epochs: Annotated[int, Field(ge=0)] = 100
    enabled: bool = True


class SearchConfig(_Strict):
    space: Annotated[str, Field(min_length=1)]
    trials: Annotated[int, Field(ge=1)] = 40
    jobs: Annotated[int, Field(ge=1)] = 1
    seed: Annotated[int, Field(ge=0)] = 0  # the TPE sampler's seed
    seeds: Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1)] = [0, 1, 2]
    report_every: Annotated[int, Field(ge=1)] = 50  # epochs between two reports to the pruner
    pruner: PrunerConfig = PrunerConfig()
    # Optuna's storage: null -> <folder of the SQLite tracking store>/optuna.db; a tracking
    # server needs an RDB URL here (e.g. postgresql://... , sqlite:////shared/optuna.db).
    storage: str | None = None
    params: dict[str, Any]

    @classmethod
    def from_config(cls, cfg: Any) -> SearchConfig:
        """`cfg.search` (DictConfig or dict) -> SearchConfig, or a one-line ConfigError."""
        node = cfg.get("search") if hasattr(cfg, "get") else None
        if node is None:
            raise ConfigError("search", _NO_VALUE, "missing; select a space with +search=<space>")
        if hasattr(node, "_metadata"):
            from omegaconf import OmegaConf

            node = OmegaConf.to_container(node, resolve=True)
        try:
            config = cls.model_validate(node)
        except ValidationError as exc:
            line = one_line(exc)
            raise ConfigError(f"search.{line.key}", line.value, line.reason) from None
        if not config.params:
            raise ConfigError("search.params", _NO_VALUE, "empty; name at least one key to search")
        specs = {str(k): _spec(str(k), v) for k, v in config.params.items()}
        return config.model_copy(update={"params": specs})

    def identity(self, base: dict[str, Any]) -> str:
        """sha256 of what decides the study's trials: the space, seeds, sampler seed, pruning
        and the fixed run config `base` (not trials or jobs: more trials continue a study)."""
        params = {k: v.model_dump() if isinstance(v, Range) else list(v) for k, v in self.params.items()}
        blob = json.dumps({"space": self.space, "params": params,
                           "seed": self.seed, "seeds": self.seeds, "report_every": self.report_every,
                           "pruner": self.pruner.model_dump(), "base": base}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()


def suggest(trial: Any, params: dict[str, Range | tuple]) -> dict[str, Any]:
    """{override key: value} of one configuration, drawn by the Optuna trial."""
    out: dict[str, Any] = {}
    for key, spec in params.items():
        if isinstance(spec, Range):
            if spec.is_int:
                out[key] = trial.suggest_int(key, spec.low, spec.high, log=spec.log)
            else:
                out[key] = trial.suggest_float(key, float(spec.low), float(spec.high), log=spec.log)
        else:
            out[key] = trial.suggest_categorical(key, list(spec))
    return out


def override_key(name: str) -> str:
    """The Hydra override key of a space's key: `lr` -> `optim.lr`, `init` -> `init` (the group),
    `opt` -> `optim` (the group, so its own defaults come with it), `optim.momentum` stays."""
    dotted = _DOTTED.get(name, name)
    return _GROUP.get(dotted, dotted)


def overrides(values: dict[str, Any]) -> list[str]:
    """Hydra overrides of one configuration: floats as 4 significant digits (the value trained)."""
    return [f"{override_key(k)}={show(v)}" for k, v in values.items()]


def show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)
