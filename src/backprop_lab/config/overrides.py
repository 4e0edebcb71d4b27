"""Hydra's composition errors (unknown option, misspelt key, bad syntax) as the same ONE line
`validate` gives for a bad value: `check_overrides(config_dir, overrides)`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from backprop_lab.config.schema import _NO_VALUE, ConfigError

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
