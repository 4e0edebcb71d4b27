"""Hydra's composition errors (unknown option, misspelt key, bad syntax) as the same ONE line
`validate` gives for a bad value, with a "did you mean" suggestion (difflib).

`explain(exc, overrides, compose, group_options)` is the one translation, used by a single run
(`check_overrides`, before @hydra.main) and by a sweep (backprop_lab.sweep.jobs, for the first job
that does not compose): `make train ARGS=optim.lrr=0.1` and `make sweep ARGS=optim.lrr=0.1,0.2`
end in the same line, `invalid config: optim.lrr=0.1: unknown key; did you mean optim.lr? ...`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import Any

from backprop_lab.config.schema import _NO_VALUE, ConfigError

# --------------------------------------------------------------------------- command-line pre-flight


def check_overrides(config_dir: str, overrides: list[str], config_name: str = "config") -> None:
    """Compose the config as Hydra will, turning Hydra's multi-line errors into one ConfigError.

    Run by scripts/train.py before @hydra.main for single runs. Only composition problems are
    reported here; values are checked by `validate`.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
        try:
            compose(config_name, overrides=overrides)
        except Exception as exc:  # Hydra's composition errors, all kinds
            loader = GlobalHydra.instance().config_loader()
            raise explain(exc, overrides, lambda some: compose(config_name, overrides=some),
                          loader.get_group_options) from None


def explain(exc: BaseException, overrides: list[str], compose: Callable[[list[str]], Any],
            group_options: Callable[[str], list[str]]) -> ConfigError:
    """The one-line ConfigError for a Hydra composition error of `overrides`.

    compose(overrides) -> the composed config (used to list the valid keys beside a bad one);
    group_options(group) -> the option names of a config group ([] if it is no group).
    """
    from hydra.errors import MissingConfigException

    text = str(exc)
    if isinstance(exc, MissingConfigException):
        m = re.search(r"Could not find '([^']+)/([^'/]+)'", text)
        group = m.group(1) if m else None
        options = sorted(group_options(group)) if group else []
        if not options:
            return ConfigError("<command line>", _NO_VALUE, _first(exc))
        given = _given(overrides, group, default=m.group(2))
        reason = f"no such option{_did_you_mean(str(given), options)}; valid: {', '.join(options)}"
        return ConfigError(group, given, reason)
    cause = str(exc.__cause__ or "")
    typed = re.search(r"full_key: (\S+)", cause) if "could not be converted" in cause else None
    if typed:  # a typed (structured) node, e.g. hydra.launcher.n_jobs=abc: OmegaConf's first line
        key = typed.group(1)
        return ConfigError(key, _given(overrides, key, default=_NO_VALUE), cause.splitlines()[0])
    m = re.search(r"Could not override '([^']+)'", text) or re.search(r"full_key: (\S+)", text)
    if not m:
        return ConfigError("<command line>", _NO_VALUE, _first(exc))
    key = m.group(1)
    given = _given(overrides, key, default=_NO_VALUE)
    parent, _, leaf = key.rpartition(".")
    groups_only = [o for o in overrides if group_options(o.lstrip("+~").split("=", 1)[0].split("@")[0])]
    try:
        from omegaconf import OmegaConf

        base = compose(groups_only)
        node = OmegaConf.select(base, parent) if parent else base
        valid = [str(k) for k in node.keys()] if hasattr(node, "keys") else []
    except Exception:  # the groups alone do not compose: no list of keys, the line stays
        valid = []
    guess = difflib.get_close_matches(leaf, valid, n=1)
    reason = "unknown key " + (f"(did you mean {parent + '.' if parent else ''}{guess[0]}?)" if guess
                               else "(misspelt?)")
    if valid:
        reason += f"; valid keys here: {', '.join(valid)}"
    return ConfigError(key, given, f"{reason} (to add a new key use +{key}=...)")


def _given(overrides: list[str], key: str, default: Any) -> Any:
    return next((o.split("=", 1)[1] for o in overrides if o.lstrip("+~").split("=", 1)[0] == key),
                default)


def _did_you_mean(given: str, options: list[str]) -> str:
    guess = difflib.get_close_matches(given, options, n=1)
    return f" (did you mean {guess[0]}?)" if guess else ""


def _first(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return "; ".join(lines[:2]) if lines else type(exc).__name__
