"""One job's run: Hydra's `run_job`, without the copies a config composed for this job alone needs not.

Hydra's `run_job` (hydra/core/utils.py) copies the job's config four times before the task runs:
`HydraConfig.set_config` twice (a masked copy of the hydra node each), a deep copy of the whole
config for the task (its hydra node then deleted), and a deep copy of HydraConfig's copy for the
JobReturn: ~35 ms of its ~65 ms per job here (scripts/bench_phases.py). The launcher composes
each job's config for that job alone and drops it after the run, so `run_job` here copies the
hydra node once (HydraConfig's copy during the job, then the JobReturn's `hydra_cfg`) and the task
keys once (the task's config), and does the rest as Hydra does, in Hydra's order: the job folder,
`.hydra/config.yaml`, `hydra.yaml` and `overrides.yaml` (the same bytes), the job's logging, the
env_set, the callbacks, the JobReturn. tests/test_launcher.py runs both on the same configs and
compares what they write and return.

A job this does not cover (a config that is not a DictConfig, `hydra.job.chdir` not false, a task
config whose root has a structured type) goes to Hydra's own `run_job`; `hydra.launcher.lean_run_job:
false` sends every job there.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobRuntime, JobStatus, configure_log, env_override
from hydra.core.utils import run_job as hydra_run_job
from omegaconf import DictConfig, OmegaConf, open_dict, read_write


def covered(config: Any) -> bool:
    """True when `run_job` below runs this config itself (else Hydra's run_job does)."""
    return (isinstance(config, DictConfig) and OmegaConf.get_type(config) is dict
            and "hydra" in config and config.hydra.job.get("chdir") is False)


def run_job(*, hydra_context: Any, task_function: Any, config: DictConfig, job_dir_key: str,
            job_subdir_key: str | None) -> JobReturn:
    """hydra.core.utils.run_job(config=...) for a config the caller owns and drops afterwards
    (its hydra node is made read-only and its runtime.output_dir set, as Hydra's does)."""
    if not covered(config):
        return hydra_run_job(hydra_context=hydra_context, task_function=task_function, config=config,
                             job_dir_key=job_dir_key, job_subdir_key=job_subdir_key)
    callbacks = hydra_context.callbacks
    hydra_config = HydraConfig.instance()
    orig_hydra_cfg = hydra_config.cfg
    try:
        OmegaConf.set_readonly(config.hydra, True)  # as HydraConfig.set_config does
        hydra_config.cfg = config  # `${hydra:...}` in the job's folder resolves as in this job
        output_dir = str(OmegaConf.select(config, job_dir_key))
        if job_subdir_key is not None:
            output_dir = os.path.join(output_dir, str(OmegaConf.select(config, job_subdir_key)))
        with read_write(config.hydra.runtime), open_dict(config.hydra.runtime):
            config.hydra.runtime.output_dir = os.path.abspath(output_dir)
        # HydraConfig's copy: the hydra node alone, its parent the whole config (set_config's
        # emulation of a hidden node: the hydra node may interpolate task keys).
        hydra_cfg = OmegaConf.masked_copy(config, "hydra")
        hydra_cfg.hydra._set_parent(config)
        hydra_config.cfg = hydra_cfg

        ret = JobReturn()
        task_cfg = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
        OmegaConf.copy_cache(from_config=config, to_config=task_cfg)
        OmegaConf.set_struct(task_cfg, OmegaConf.is_struct(config))
        OmegaConf.set_readonly(task_cfg, OmegaConf.is_readonly(config))
        ret.cfg = task_cfg
        ret.hydra_cfg = hydra_cfg
        ret.overrides = OmegaConf.to_container(config.hydra.overrides.task)
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        ret.working_dir = os.getcwd()  # hydra.job.chdir is false
        configure_log(config.hydra.job_logging, config.hydra.verbose)
        if config.hydra.output_subdir is not None:
            hydra_output = Path(config.hydra.runtime.output_dir) / Path(config.hydra.output_subdir)
            _save_config(task_cfg, "config.yaml", hydra_output)
            _save_config(hydra_cfg, "hydra.yaml", hydra_output)
            _save_config(config.hydra.overrides.task, "overrides.yaml", hydra_output)
        with env_override(hydra_cfg.hydra.job.env_set):
            callbacks.on_job_start(config=config, task_function=task_function)
            try:
                ret.return_value = task_function(task_cfg)
                ret.status = JobStatus.COMPLETED
            except Exception as e:
                ret.return_value = e
                ret.status = JobStatus.FAILED
        ret.task_name = JobRuntime.instance().get("name")
        _flush_loggers()
        # Hydra's JobReturn holds a deep copy of HydraConfig's config: a root of its own.
        hydra_cfg.hydra._set_parent(hydra_cfg)
        callbacks.on_job_end(config=config, job_return=ret)
        return ret
    finally:
        hydra_config.cfg = orig_hydra_cfg


def _save_config(cfg: Any, filename: str, output_dir: Path) -> None:
    """hydra.core.utils._save_config (private there): the same file, byte for byte."""
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(str(output_dir / filename), "w", encoding="utf-8") as file:
        file.write(to_yaml(cfg))


#: The YAML of one entry of a config, by the repr of (where, key, value): see to_yaml.
_YAML_PARTS: OrderedDict[str, str] = OrderedDict()
YAML_PARTS_MAX = 2048


def to_yaml(cfg: Any) -> str:
    """`OmegaConf.to_yaml(cfg)`, the same text, with each entry of the top-level mapping (of the
    `hydra` node's mapping when that is the only key, as in HydraConfig's copy) emitted once per
    distinct value in this process.

    PyYAML's pure-Python emitter is most of what a job's `.hydra/` files cost (~7 ms for
    hydra.yaml here), and a sweep's jobs differ in a few entries only (`hydra.job`,
    `hydra.runtime`, `hydra.overrides`; `model`, `optim`, `seed`). In a block mapping each entry
    is emitted on lines of its own, from a new line at the mapping's indentation, so the whole
    text is the entries' texts one after the other: each entry's text is cut from the document of
    that entry alone under the same parent keys; a mapping under a bare key, to depth 3, is split
    the same way into its own entries (`_yaml_entries`). Kept by the repr of its plain value (str, int,
    float, bool, None, lists and str-keyed dicts of them: equal reprs, equal YAML); a config with
    any other value, or an empty one, is emitted whole. tests/test_launcher.py compares both.
    """
    container = OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    if isinstance(container, dict) and container and _plain(container):
        path, entries = (), container
        if list(container) == ["hydra"] and isinstance(container["hydra"], dict) and container["hydra"]:
            path, entries = ("hydra",), container["hydra"]
        text = _yaml_entries(path, entries)
        if text is not None:
            return "".join(f"{'  ' * depth}{name}:\n" for depth, name in enumerate(path)) + text
    return OmegaConf.to_yaml(cfg)


#: Keys PyYAML writes bare (a mapping under one is split into its entries): a word that does
#: not read as a YAML 1.1 bool or null. Any other key's mapping is one part.
_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NOT_BARE = {"y", "n", "yes", "no", "true", "false", "on", "off", "null"}
#: How deep a mapping is split into its entries (hydra.runtime.choices is at depth 2).
_SPLIT_DEPTH = 3


def _yaml_entries(path: tuple[str, ...], entries: dict) -> str | None:
    """The block-mapping text of `entries` under `path`: each entry's part, a non-empty mapping
    under a bare key split into its own entries' parts (a sweep's jobs differ in a few leaves
    of `hydra.job` and `hydra.runtime`: only those are emitted again). None: emit it whole."""
    parts = []
    for key, value in entries.items():
        if (isinstance(value, dict) and value and len(path) < _SPLIT_DEPTH
                and _BARE_KEY.match(key) and key.lower() not in _NOT_BARE):
            inner = _yaml_entries((*path, key), value)
            part = None if inner is None else f"{'  ' * len(path)}{key}:\n{inner}"
        else:
            part = _yaml_part(path, key, value)
        if part is None:
            return None
        parts.append(part)
    return "".join(parts)


def _yaml_part(path: tuple[str, ...], key: str, value: Any) -> str | None:
    memo = repr((path, key, value))
    text = _YAML_PARTS.get(memo)
    if text is None:
        document = {key: value}
        for name in reversed(path):
            document = {name: document}
        header = "".join(f"{'  ' * depth}{name}:\n" for depth, name in enumerate(path))
        text = OmegaConf.to_yaml(OmegaConf.create(document))  # plain values: the same container
        if not text.startswith(header):
            return None
        text = text[len(header):]
        if len(_YAML_PARTS) >= YAML_PARTS_MAX:
            _YAML_PARTS.popitem(last=False)
        _YAML_PARTS[memo] = text
    else:
        _YAML_PARTS.move_to_end(memo)
    return text


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(type(k) is str and _plain(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def _flush_loggers() -> None:
    """Flush every logging handler before the callbacks' on_job_end, as Hydra's run_job does."""
    refs = getattr(logging, "_handlerList", None)  # the stdlib's registry of live handlers
    handlers = [ref() for ref in refs] if refs is not None else logging.getLogger().handlers
    for handler in handlers:
        try:
            handler.flush()
        except Exception:  # a handler gone (weak reference) or closed
            pass
