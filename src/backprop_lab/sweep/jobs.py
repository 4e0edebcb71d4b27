"""A sweep's jobs: expanded as Hydra's BasicSweeper does, each composed and validated up front.

`plan_jobs(config, arguments, loader)` is what the sweeper (backprop_lab.sweep.owner) calls in the
driver before anything is written: the list of `Job`s, or a one-line error (the same
`ConfigError` line a single run gives for the same bad key, option or value).

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
job is composed in full, so errors (misspelt keys, bad group options) are Hydra's own.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from backprop_lab.config import names
from backprop_lab.config import schema as bpl_config
from backprop_lab.config.overrides import explain

# Override keys that change how a sweep runs, not what it computes: not part of its identity.
NOT_IDENTITY = ("force=", "tracking.", "hydra.")


class SweepError(Exception):
    """A problem with the sweep as a whole the user can fix; printed as one line, exit 2."""


@dataclass
class Job:
    """One job of the sweep: its overrides (as Hydra passes them) and its validated config."""

    overrides: list[str]
    run_config: Any  # backprop_lab.config.schema.RunConfig
    config_key: str
    name: str = ""  # names.run_name(overrides): what differs from the preset's base config
    values: dict[str, Any] = field(default_factory=dict)  # label -> typed value of each named key


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def task_overrides(overrides: list[str]) -> list[str]:
    """The job's overrides minus the preset selection itself (`+sweep=<name>`)."""
    return [o for o in overrides if not o.lstrip("+~").startswith("sweep=")]


def plan_jobs(config: DictConfig, arguments: list[str], loader: Any, params: dict | None = None,
              composer: JobComposer | None = None) -> list[Job]:
    """Expand, compose and validate every job; raise ConfigError (one line) or SweepError.
    composer: the JobComposer to compose with (the sweeper hands it to its launcher next)."""
    jobs = compose_jobs(config, expand_jobs(config, arguments, loader, params), loader, composer)
    if not jobs:
        raise SweepError("the sweep has no jobs")
    experiments = sorted({job.run_config.experiment_name for job in jobs})
    if len(experiments) > 1:
        raise SweepError(f"experiment_name: one sweep logs to one experiment, got {', '.join(experiments)}")
    return jobs


def expand_jobs(config: DictConfig, arguments: list[str] | None = None, loader: Any = None,
                params: dict | None = None) -> list[list[str]]:
    """The job overrides exactly as Hydra's BasicSweeper builds them: hydra.sweeper.params, then
    the command line's task overrides (a later key wins), crossed in key order."""
    if params is None:
        params = config.hydra.sweeper.get("params")
        params = OmegaConf.to_container(params, resolve=False) if params else {}
    if arguments is None:
        arguments = list(OmegaConf.to_container(config.hydra.overrides.task, resolve=False))
    lines = [f"{k}={v}" for k, v in (params or {}).items()] + list(arguments)
    parser = OverridesParser.create(config_loader=loader or _loader())
    try:
        batches = BasicSweeper.split_arguments(parser.parse_overrides(lines), None)
    except Exception as exc:  # Hydra's parser errors span several lines
        raise explain(exc, lines, lambda some: None, lambda group: []) from None
    return [list(job) for batch in batches for job in batch]


def _loader() -> Any:
    from hydra.core.global_hydra import GlobalHydra

    return GlobalHydra.instance().config_loader()


def compose_jobs(config: DictConfig, job_overrides: list[list[str]], loader: Any = None,
                 composer: JobComposer | None = None) -> list[Job]:
    """Compose every job's config as the launchers will (same loader, same resolver cache) and
    validate it; the first bad job raises the ConfigError a single run would give. Only the task
    keys are composed where that is certain to give the same values (`JobComposer.task_dict`)."""
    composer = composer or JobComposer(config, loader)
    hydra_config = HydraConfig.instance()
    previous = hydra_config.cfg
    jobs = []
    try:
        for index, overrides in enumerate(job_overrides):
            task = composer.task_dict(list(overrides))
            if task is None:  # not certain the short way: the whole job, as the launcher runs it
                try:
                    job_cfg = composer.compose(list(overrides))
                except Exception as exc:  # Hydra's composition errors: the single run's one line
                    raise explain(exc, list(overrides), composer.compose,
                                  composer.loader.get_group_options) from None
                with open_dict(job_cfg):  # what the launchers set before run_job
                    job_cfg.hydra.job.num = index
                    job_cfg.hydra.job.id = f"{job_cfg.hydra.job.name}_{index}"
                hydra_config.set_config(job_cfg)  # ${hydra:...} resolves as inside the job
                task = _task_dict(job_cfg)
            run_config = bpl_config.validate(task)  # ConfigError: one line
            jobs.append(Job(list(overrides), run_config, bpl_config.config_key(run_config),
                            names.run_name(overrides),
                            names.named_values(overrides, run_config.model_dump(mode="json"))))
    finally:
        hydra_config.cfg = previous
    return jobs


def _task_dict(job_cfg: DictConfig) -> Any:
    """What the task function gets (the config without its hydra node), resolved, as plain
    containers: key by key, without the deep copy of the whole config that deleting `hydra` from
    a copy costs (~50 ms a job). An interpolation that cannot resolve: the config itself, so
    `validate` reports it in its one line."""
    try:
        return {key: OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
                for key in job_cfg if key != "hydra" for node in (job_cfg[key],)}
    except Exception:
        task_cfg = copy.deepcopy(job_cfg)
        with read_write(task_cfg), open_dict(task_cfg):
            del task_cfg["hydra"]
        return task_cfg


def swept_labels(jobs: list[Job]) -> list[str]:
    """Labels of the named keys whose values vary across the jobs, in the names' order."""
    seen: dict[str, set] = {}
    for job in jobs:
        for label, value in job.values.items():
            seen.setdefault(label, set()).add(json.dumps(value, sort_keys=True))
    varying = [label for label, values in seen.items() if len(values) > 1 or len(jobs) == 1]
    return sorted(varying, key=names.order)


def sweep_key(preset: str, jobs: list[Job]) -> str:
    """sha256 of the sweep's definition: preset, each job's overrides and config key (sorted)."""
    definition = sorted(
        (sorted(o for o in job.overrides if not o.lstrip("+~").startswith(NOT_IDENTITY)),
         job.config_key)
        for job in jobs
    )
    blob = json.dumps({"preset": preset, "jobs": definition}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --------------------------------------------------------------------------- fast composition


class JobComposer:
    """`compose(overrides)` == `loader.load_sweep_config(config, overrides)`, composing Hydra's
    defaults list once per distinct set of defaults-list overrides (see the module docstring)."""

    def __init__(self, config: DictConfig, loader: Any = None) -> None:
        self.config = config
        self.loader = loader or _loader()
        self.parser = OverridesParser.create()  # as load_configuration parses
        self.bases: dict[tuple[str, ...], DictConfig] = {}
        self.task_bases: dict[tuple[str, ...], DictConfig | None] = {}  # task keys of each base
        self.lines: dict[str, Override] = {}  # each override line, parsed
        self.repo = None  # the config repository Hydra classifies overrides with
        if isinstance(self.loader, ConfigLoaderImpl):
            hydra_overrides = list(config.hydra.overrides.hydra)
            try:
                _, self.repo = self.loader._parse_overrides_and_create_caching_repo(
                    config.hydra.job.config_name, hydra_overrides)
            except Exception:  # full composition gives Hydra's own error
                self.repo = None

    def compose(self, overrides: list[str]) -> DictConfig:
        try:
            fast = self._fast(overrides)
        except Exception:  # compose in full: the error (if any) is Hydra's own
            fast = None
        return fast if fast is not None else self.loader.load_sweep_config(self.config, overrides)

    def task_dict(self, overrides: list[str]) -> dict | None:
        """`_task_dict(compose(overrides))` (the task keys resolved, as plain containers) from a
        copy of the cached base's task keys alone: no copy of the hydra node (~2/3 of a
        composition's copy) and no HydraConfig per job, ~5 ms a job instead of ~25. None when
        that is not certain: the job is not on the short way, its overrides fail there, or its
        config or overrides refer to the hydra node (`${hydra:job.num}` differs per job)."""
        try:
            plan = self._plan(overrides)
            if plan is None or any("hydra" in o.input_line for o in plan[2]):
                return None
            task_base = self._task_base(plan[1], plan[0])
            if task_base is None:
                return None
            cfg = copy.deepcopy(task_base)
            OmegaConf.copy_cache(from_config=self.config, to_config=cfg)
            ConfigLoaderImpl._apply_overrides_to_config(plan[2], cfg)
            task = _task_dict(cfg)
        except Exception:  # the whole composition gives the error (Hydra's own)
            return None
        return task if isinstance(task, dict) else None

    def _task_base(self, key: tuple[str, ...], base: DictConfig) -> DictConfig | None:
        """The base's task keys as a config of their own (once per base); None when one of its
        values refers to the hydra node."""
        if key not in self.task_bases:
            task_base = OmegaConf.masked_copy(base, [k for k in base if k != "hydra"])
            OmegaConf.set_struct(task_base, OmegaConf.is_struct(base))
            unresolved = json.dumps(OmegaConf.to_container(task_base, resolve=False), default=str)
            self.task_bases[key] = None if "hydra" in unresolved else task_base
        return self.task_bases[key]

    def _plan(self, overrides: list[str]) -> tuple[DictConfig, tuple[str, ...], list[Override],
                                                    list[Override]] | None:
        """(cached base, its key, the plain overrides, the task overrides) of the short way, or
        None when it is not certain."""
        if self.repo is None:
            return None
        parsed = [self._parsed(line) for line in overrides]
        kinds = [self._kind(override) for override in parsed]
        if "unsure" in kinds or "plain" not in kinds:
            return None  # not certain, or nothing to share: compose in full
        base_lines = tuple(line for line, kind in zip(overrides, kinds, strict=True) if kind == "base")
        plain = [override for override, kind in zip(parsed, kinds, strict=True) if kind == "plain"]
        if base_lines not in self.bases:
            self.bases[base_lines] = self.loader.load_sweep_config(self.config, list(base_lines))
        base = self.bases[base_lines]
        task = [o for o in parsed if not o.is_hydra_override()]
        base_task = [o.input_line for o, kind in zip(parsed, kinds, strict=True) if kind == "base"
                     and not o.is_hydra_override()]
        if list(base.hydra.overrides.task) != base_task:
            return None  # something else wrote hydra.overrides.task: not the case this knows
        return base, base_lines, plain, task

    def _fast(self, overrides: list[str]) -> DictConfig | None:
        """The job's config through a cached base, or None when the short cut is not certain."""
        plan = self._plan(overrides)
        if plan is None:
            return None
        base, _, plain, task = plan
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

    def _parsed(self, line: str) -> Override:
        """The override of one line (Hydra's parser, ~0.3-0.5 ms a line), once per distinct line:
        a sweep's jobs repeat their lines (the command line's, each swept value)."""
        if line not in self.lines:
            self.lines[line] = self.parser.parse_overrides([line])[0]
        return self.lines[line]

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
