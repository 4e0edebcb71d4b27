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


# Override keys that say where or how a run is logged, not what it computes: never in a name.
NOT_NAMED = ("hydra", "tracking", "sweep", "force", "experiment_name", "blas_threads")


def named_overrides(overrides) -> dict[str, str]:
    """{dotted key: value as typed} of the overrides that change what a run computes.

    `+sweep=default` (the preset), `tracking.*`, `hydra.*` ... are left out; a later override of
    the same key wins, as in Hydra.
    """
    out: dict[str, str] = {}
    for text in overrides:
        key, sep, value = str(text).lstrip("+~").partition("=")
        if sep and key.split(".")[0].split("@")[0] not in NOT_NAMED:
            out[dotted_key(key)] = value
    return out


def labels(keys) -> dict[str, str]:
    """dotted key -> its label in names and columns: the short name, else the key's last part
    (`gradcheck.h` -> `h`), else, where two keys would share a last part, the whole key."""
    keys = list(keys)
    last = [k.rsplit(".", 1)[-1] for k in keys]
    taken = set(SHORT_NAMES.values())
    return {k: SHORT_NAMES.get(k) or (p if last.count(p) == 1 and p not in taken else k)
            for k, p in zip(keys, last, strict=True)}


def run_name(overrides) -> str:
    """`lr=0.1 width=16 init=he epochs=200`: every override that changes what the run computes,
    i.e. every key whose value differs from the base config (the defaults, or the sweep preset's);
    `defaults` when there is none. Two different configs never share a name."""
    values = named_overrides(overrides)
    label = labels(values)
    ordered = sorted(values, key=lambda k: order(label[k]))
    return " ".join(f"{label[k]}={values[k]}" for k in ordered) or "defaults"


def named_values(overrides, config: dict) -> dict[str, object]:
    """label -> value in `config` (a RunConfig's JSON dump) of each key the run's name carries."""
    keys = named_overrides(overrides)
    out: dict[str, object] = {}
    for key, label in labels(keys).items():
        node: object = config
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[label] = node
    return out
