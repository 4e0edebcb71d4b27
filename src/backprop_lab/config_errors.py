"""Errors a user can cause in the config, as ONE line naming the dotted key and what is valid.

- `one_line(ValidationError) -> ConfigError`: pydantic's error list -> `invalid config: key=value: reason`.
- `check_overrides(config_dir, overrides)`: compose as Hydra will and turn Hydra's multi-line
  composition errors (unknown option, misspelt key, bad syntax) into the same one line.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from backprop_lab.config import (
    _NO_VALUE, AdamConfig, ConfigError, GDConfig, MomentumConfig, NesterovConfig, RunConfig, SGDConfig,
)

_OPTIM_FIELDS = {
    "gd": GDConfig, "sgd": SGDConfig, "momentum": MomentumConfig,
    "nesterov": NesterovConfig, "adam": AdamConfig,
}


def _dotted(loc: tuple) -> str:
    parts: list[str] = []
    for i, item in enumerate(loc):
        # The discriminated union inserts the tag (optim -> adam -> lr); users never type it.
        if i == 1 and loc[0] == "optim" and item in _OPTIM_FIELDS:
            continue
        if isinstance(item, int):
            parts[-1] = f"{parts[-1]}[{item}]" if parts else f"[{item}]"
        else:
            parts.append(str(item))
    return ".".join(parts) or "<root>"


def _section_for(loc: tuple) -> type[BaseModel] | None:
    """The schema class at `loc` (the tag of the optim union picks its class), else None."""
    model: type[BaseModel] | None = RunConfig
    for i, item in enumerate(loc):
        if model is RunConfig and item == "optim":
            model = _OPTIM_FIELDS.get(loc[i + 1]) if i + 1 < len(loc) else None
            continue
        if model is None or item in _OPTIM_FIELDS and model in _OPTIM_FIELDS.values():
            continue
        field = model.model_fields.get(item) if isinstance(item, str) else None
        annotation = field.annotation if field else None
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return model


def one_line(exc: ValidationError) -> ConfigError:
    err = exc.errors()[0]
    kind, loc, ctx = err["type"], tuple(err["loc"]), err.get("ctx", {})
    key, value = _dotted(loc), err.get("input", _NO_VALUE)
    if kind == "extra_forbidden":
        section = _section_for(loc[:-1])
        valid = ", ".join(section.model_fields) if section else "see docs/pipeline.md"
        reason = f"unknown key (misspelt?); valid keys here: {valid}"
    elif kind == "missing":
        value, reason = _NO_VALUE, "missing; it is required"
    elif kind == "union_tag_invalid":
        key = f"{key}.name"
        value = ctx.get("tag", value)
        reason = f"must be one of: {', '.join(_OPTIM_FIELDS)}"
    elif kind == "union_tag_not_found":
        key, value = f"{key}.name", _NO_VALUE
        reason = f"missing; must be one of: {', '.join(_OPTIM_FIELDS)}"
    elif kind == "literal_error":
        reason = f"must be one of: {ctx.get('expected', '').replace(chr(39), '').replace(' or ', ', ')}"
    elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        reason = f"must be {op} {bound:g}"
        section = _section_for(loc[:-1])
        field = section.model_fields.get(loc[-1]) if section and isinstance(loc[-1], str) else None
        other = _range_text(field) if field else None
        if other:
            reason = f"must be {other}"
    elif kind.startswith("int_"):
        reason = "must be an integer"
    elif kind.startswith("float_"):
        reason = "must be a number"
    elif kind.startswith("bool_"):
        reason = "must be true or false"
    elif kind.startswith("string_"):
        reason = "must be a string"
    elif kind in ("list_type", "too_short"):
        reason = "must be a non-empty list of positive integers" if "hidden_sizes" in key else err["msg"]
    elif kind in ("dict_type", "model_type", "model_attributes_type"):
        reason = "must be a mapping of keys (a config group)"
    elif kind == "value_error":
        # Our own validators already wrote the whole message, key included.
        msg = err["msg"].removeprefix("Value error, ")
        return _Raw(msg)
    else:
        reason = err["msg"]
    return ConfigError(key, value, reason)


def _range_text(field: Any) -> str | None:
    lo = hi = None
    for m in field.metadata:
        for attr, sym in (("gt", "> "), ("ge", ">= ")):
            if getattr(m, attr, None) is not None:
                lo = (sym, getattr(m, attr))
        for attr, sym in (("lt", "< "), ("le", "<= ")):
            if getattr(m, attr, None) is not None:
                hi = (sym, getattr(m, attr))
    if lo and hi:
        return f"in {'(' if lo[0] == '> ' else '['}{lo[1]:g}, {hi[1]:g}{')' if hi[0] == '< ' else ']'}"
    return None


class _Raw(ConfigError):
    def __init__(self, msg: str):
        key, _, reason = msg.partition(": ")
        self.key, self.value, self.reason = key.split("=")[0], _NO_VALUE, reason
        ValueError.__init__(self, f"invalid config: {msg}")


# --------------------------------------------------------------------------- command-line pre-flight


def check_overrides(config_dir: str, overrides: list[str], config_name: str = "config") -> None:
    """Compose the config as Hydra will, turning Hydra's multi-line errors into one ConfigError.

    Run by scripts/train.py before @hydra.main for single runs, so an unknown option
    (`init=foo`), a misspelt key (`optim.lrr=0.1`) or bad syntax ends in one line too.
    Only composition problems are reported here; values are checked by `validate`.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException, MissingConfigException
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            compose(config_name, overrides=overrides)
        return
    except MissingConfigException as exc:
        group = _missing_group(exc)
        if group:
            given = next((o.split("=", 1)[1] for o in overrides
                          if o.lstrip("+~").split("=", 1)[0] == group), _NO_VALUE)
            options = sorted(p.stem for p in (Path(config_dir) / group).glob("*.yaml"))
            raise ConfigError(group, given, f"no such option; valid: {', '.join(options)}") from None
        raise ConfigError("<command line>", _NO_VALUE, _first(exc)) from None
    except HydraException as exc:
        text = str(exc)
        m = re.search(r"Could not override '([^']+)'", text) or re.search(r"full_key: (\S+)", text)
        if not m:
            raise ConfigError("<command line>", _NO_VALUE, _first(exc)) from None
        key = m.group(1)
        given = next((o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0] == key), _NO_VALUE)
        parent, _, leaf = key.rpartition(".")
        groups_only = [o for o in overrides
                       if (Path(config_dir) / o.lstrip("+~").split("=", 1)[0]).is_dir()]
        try:
            with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
                base = compose(config_name, overrides=groups_only)
            node = OmegaConf.select(base, parent) if parent else base
            valid = ", ".join(node.keys()) if hasattr(node, "keys") else ""
        except HydraException:
            valid = ""
        reason = "unknown key (misspelt?)" + (f"; valid keys here: {valid}" if valid else "")
        raise ConfigError(key, given, f"{reason} (to add a new key use +{key}=...)") from None


def _missing_group(exc: Exception) -> str | None:
    m = re.search(r"Could not find '([^']+)/[^'/]+'", str(exc))
    return m.group(1) if m else None


def _first(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines[:2]) if lines else type(exc).__name__
