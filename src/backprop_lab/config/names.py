"""Short names of config keys: one table for run names, table columns and summaries.

`optim.lr` is `lr` in a run name (`lr=0.1 width=16 init=he`), in `analysis.load_runs` columns
and in a sweep's summary; a config-group choice (`init=he`) names the group's `name` key.
"""

from __future__ import annotations

# dotted config key -> short name, in the order names and columns show them.
SHORT_NAMES: dict[str, str] = {
    "optim.lr": "lr",
    "model.width": "width",
    "model.depth": "depth",
    "init.name": "init",
    "optim.name": "opt",
    "data.name": "data",
    "model.activation": "act",
    "train.epochs": "epochs",
    "seed": "seed",
}
# A config-group override (`init=he`) selects the group option whose `name` is that value.
GROUP_KEYS: dict[str, str] = {"init": "init.name", "optim": "optim.name", "data": "data.name"}


def dotted_key(key: str) -> str:
    """The dotted config key an override key stands for: `init` -> `init.name`, `+seed` -> `seed`."""
    key = key.lstrip("+~")
    return GROUP_KEYS.get(key, key)


def short_name(key: str) -> str:
    """`optim.lr` -> `lr`, `init` -> `init`, `gradcheck.h` -> `gradcheck.h` (unknown keys stay whole)."""
    dotted = dotted_key(key)
    return SHORT_NAMES.get(dotted, dotted)


def order(name: str) -> tuple[int, str]:
    """Sort key: the table's order first, other names after, alphabetically."""
    names = list(SHORT_NAMES.values())
    return (names.index(name) if name in names else len(names), name)
