"""A sweep's jobs: expanded as Hydra's BasicSweeper does, each composed and validated up front.

`compose_jobs` gives every job the config the launcher will compose for it, without composing
each one from scratch: a Hydra composition (defaults list, config files, schema merges) costs
~0.1 s, and the jobs of a sweep differ mostly in plain values (`optim.lr=0.1`). So the jobs are
grouped by their *defaults-list* overrides (config-group choices such as `init=he`, `hydra.*`,
anything with a package `@`, anything this module is not sure about); each group is composed once
with `load_sweep_config`, and each job then applies its remaining plain overrides to a copy with
Hydra's own `_apply_overrides_to_config`, exactly as `load_sweep_config` applies
`defaults_list.config_overrides` after composing. The split mirrors Hydra's own rule
(hydra/_internal/defaults_list.py `Overrides.__init__`: an override is a config override if its
value is a dict or its key is not a config group). Whenever the short cut fails or is unsure, the
job is composed in full, so errors (misspelt keys, bad group options) are Hydra's own messages.

Each job validated here is recorded (`was_validated`): the project's sweeper
(hydra_plugins.backprop_lab_sweeper) then skips Hydra's second up-front composition of it.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from backprop_lab.config import schema as bpl_config
from backprop_lab.sweep.report import Job, task_overrides

# Override keys that change how a sweep runs, not what it computes: not part of its identity.
NOT_IDENTITY = ("force=", "tracking.", "hydra.")

_BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"
# Jobs composed and validated in this process: (config name, hydra overrides, job overrides).
_VALIDATED: set[tuple[Any, tuple[str, ...], tuple[str, ...]]] = set()


class SweepError(Exception):
    """A problem the user can fix; printed as one line before the sweep exits."""


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def expand_jobs(config: DictConfig) -> list[list[str]]:
    """The job overrides exactly as Hydra's BasicSweeper builds them: hydra.sweeper.params, then
    the command line's task overrides (a later key wins), crossed in key order."""
    sweeper = config.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if not _is_basic_sweeper(target):
        raise SweepError(f"hydra.sweeper={target}: only Hydra's basic sweeper (or a subclass) is supported")
    params = [f"{k}={v}" for k, v in (sweeper.get("params") or {}).items()]
    arguments = params + list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    try:
        batches = BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)
    except Exception as exc:  # noqa: BLE001 - Hydra's parser errors span several lines
        raise SweepError(f"overrides: {one_line(exc)}") from None
    return [list(job) for batch in batches for job in batch]


def _is_basic_sweeper(target: str) -> bool:
    try:
        mro = get_class(target).__mro__
    except Exception:  # noqa: BLE001 - not an importable class: not a BasicSweeper
        return False
    # By name: Hydra's plugin scan re-executes the plugin modules, so the class object this module
    # imported may not be the one a freshly scanned subclass derives from.
    return any(f"{c.__module__}.{c.__qualname__}" == _BASIC_SWEEPER for c in mro)


def compose_jobs(config: DictConfig, job_overrides: list[list[str]]) -> list[Job]:
    """Compose every job's config as the launchers will (same loader, same resolver cache) and
    validate it; the first bad job raises SweepError naming the job and the key."""
    composer = JobComposer(config)
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    jobs = []
    try:
        for index, overrides in enumerate(job_overrides):
            try:
                job_cfg = composer.compose(list(overrides))
                with open_dict(job_cfg):  # what the launchers set before run_job
                    job_cfg.hydra.job.num = index
                    job_cfg.hydra.job.id = f"{job_cfg.hydra.job.name}_{index}"
                hydra_config.set_config(job_cfg)  # ${hydra:...} resolves as inside the job
                task_cfg = copy.deepcopy(job_cfg)  # what the task function gets: no hydra node
                with read_write(task_cfg), open_dict(task_cfg):
                    del task_cfg["hydra"]
                run_config = bpl_config.validate(task_cfg)
            except Exception as exc:  # noqa: BLE001 - ConfigError, or Hydra's composition errors
                where = " ".join(o for o in task_overrides(overrides)
                                 if not o.lstrip("+~").startswith(NOT_IDENTITY)) or "defaults"
                raise SweepError(f"job {index} ({where}): {one_line(exc)}") from None
            jobs.append(Job(list(overrides), run_config, bpl_config.config_key(run_config)))
            _VALIDATED.add(_registry_key(config, overrides))
    finally:
        hydra_config.cfg = previous
    return jobs


def was_validated(config: DictConfig, overrides: list[str]) -> bool:
    """True if compose_jobs composed and validated this job of this sweep in this process."""
    return _registry_key(config, overrides) in _VALIDATED


def sweep_key(preset: str, jobs: list[Job]) -> str:
    """sha256 of the sweep's definition: preset, each job's overrides and config key (sorted)."""
    definition = sorted(
        (sorted(o for o in job.overrides if not o.lstrip("+~").startswith(NOT_IDENTITY)),
         job.config_key)
        for job in jobs
    )
    blob = json.dumps({"preset": preset, "jobs": definition}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _registry_key(config: DictConfig, overrides: list[str]) -> tuple[Any, tuple[str, ...], tuple[str, ...]]:
    # Everything load_sweep_config composes a job from (besides the config files themselves).
    return (config.hydra.job.config_name, tuple(config.hydra.overrides.hydra), tuple(overrides))


# --------------------------------------------------------------------------- fast composition


class JobComposer:
    """`compose(overrides)` == `loader.load_sweep_config(config, overrides)`, composing Hydra's
    defaults list once per distinct set of defaults-list overrides (see the module docstring)."""

    def __init__(self, config: DictConfig) -> None:
        self.config = config
        self.loader = GlobalHydra.instance().config_loader()
        self.parser = OverridesParser.create()  # as load_configuration parses
        self.bases: dict[tuple[str, ...], DictConfig] = {}
        self.repo = None  # the config repository Hydra classifies overrides with
        if isinstance(self.loader, ConfigLoaderImpl):
            hydra_overrides = list(config.hydra.overrides.hydra)
            try:
                _, self.repo = self.loader._parse_overrides_and_create_caching_repo(
                    config.hydra.job.config_name, hydra_overrides)
            except Exception:  # noqa: BLE001 - full composition gives Hydra's own error
                self.repo = None

    def compose(self, overrides: list[str]) -> DictConfig:
        try:
            fast = self._fast(overrides)
        except Exception:  # noqa: BLE001 - compose in full: the error (if any) is Hydra's own
            fast = None
        return fast if fast is not None else self.loader.load_sweep_config(self.config, overrides)

    def _fast(self, overrides: list[str]) -> DictConfig | None:
        """The job's config through a cached base, or None when the short cut is not certain."""
        if self.repo is None:
            return None
        parsed = self.parser.parse_overrides(overrides)
        kinds = [self._kind(override) for override in parsed]
        if "unsure" in kinds or "plain" not in kinds:
            return None  # not certain, or nothing to share: compose in full
        base_lines = tuple(line for line, kind in zip(overrides, kinds) if kind == "base")
        plain = [override for override, kind in zip(parsed, kinds) if kind == "plain"]
        if base_lines not in self.bases:
            self.bases[base_lines] = self.loader.load_sweep_config(self.config, list(base_lines))
        base = self.bases[base_lines]
        task = [o for o in parsed if not o.is_hydra_override()]
        base_task = [o.input_line for o, kind in zip(parsed, kinds) if kind == "base"
                     and not o.is_hydra_override()]
        if list(base.hydra.overrides.task) != base_task:
            return None  # something else wrote hydra.overrides.task: not the case this knows
        cfg = copy.deepcopy(base)
        OmegaConf.copy_cache(from_config=self.config, to_config=cfg)
        ConfigLoaderImpl._apply_overrides_to_config(plain, cfg)
        # What load_configuration records from the full override list.
        cfg.hydra.overrides.task = [o.input_line for o in task]
        dirname = cfg.hydra.job.config.override_dirname
        cfg.hydra.job.override_dirname = get_overrides_dirname(
            overrides=task,
            kv_sep=dirname.kv_sep, item_sep=dirname.item_sep, exclude_keys=dirname.exclude_keys)
        return cfg

    def _kind(self, override: Override) -> str:
        """"plain": certainly one of Hydra's config overrides, on a task key (applied to a copy);
        "base": certainly a defaults-list override, or a hydra.* one (part of the base);
        "unsure": anything else (the job is then composed in full)."""
        key = override.key_or_group
        if override.is_sweep_override() or key == "hydra.searchpath":
            return "unsure"  # Hydra rejects the first in a job; the second changes the repository
        if override.is_hydra_override():
            return "base"
        if key.split(".")[0] == "hydra" or isinstance(override.value(), dict):
            return "unsure"  # a dict may overlap another override's keys: keep Hydra's order
        is_group = self.repo.group_exists(key)
        if override.package is not None:
            return "base" if is_group else "unsure"
        return "base" if is_group else "plain"
