"""The run-config schema: checked once, when a run starts, before anything touches the store.

`validate(cfg)` turns a composed Hydra config (or a plain dict) into a typed `RunConfig`, or
raises `ConfigError` whose message is ONE line naming the dotted key, the bad value and what
would be valid, e.g. ``invalid config: optim.lr=-1: must be > 0``.

Strict types on purpose: ``model.width=10.5`` or ``optim.lr=abc`` are errors, not coercions.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backprop_lab.core.optim import SGD, Adam, Momentum, Optimizer

DATASETS = ("blobs", "moons", "circles", "xor", "spirals")
INIT_SCHEMES = ("he", "xavier", "xavier_uniform", "lecun", "normal", "zeros", "he_lecun_output")
OPTIMIZERS = ("gd", "sgd", "momentum", "nesterov", "adam")
ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid")
DTYPES = ("float32", "float64")
GRADCHECK_MODES = ("auto", "full", "directional")

# Keys that do not change what a run computes: excluded from the config key.
NON_SEMANTIC_KEYS = ("tracking", "force", "experiment_name", "sweep", "blas_threads")

# Upper bounds that catch typos before they cost memory or hours (docs/reliability.md).
# The history keeps every logged epoch (one float per series, in memory and in the store, and
# train() lays out the logged epochs before the first one): 1e6 epochs is ~1e7 metric rows.
MAX_EPOCHS = 1_000_000
# A plain MLP (no normalisation, no residuals) deeper than this does not train, and the
# gradient check costs forward passes per parameter tensor (two per layer).
MAX_DEPTH = 100
# Central differences in float64: round-off grows like eps/h (h=1e-10: ~1e-6 relative, the
# check's own threshold) and truncation like h**2 (h=1e-2: ~1e-4 on tanh/sigmoid).
GRADCHECK_H_RANGE = (1e-10, 1e-2)
# MLflow's own limit (mlflow.utils.validation.MAX_EXPERIMENT_NAME_LENGTH; a test pins it).
MAX_EXPERIMENT_NAME_LENGTH = 500

# user:password@ in a URI (tracking server with basic auth): never shown, never logged.
_CREDENTIALS = re.compile(r"(?<=://)[^/\s@:]*:[^/\s@]*@")


def redact(text: str) -> str:
    """`text` with every `scheme://user:password@` shown as `scheme://***@`."""
    return _CREDENTIALS.sub("***@", str(text))


class UserError(Exception):
    """An error the user can fix (bad config, unusable store); `str()` is one line.

    Any credentials in a URI inside the message are redacted here, once for all subclasses.
    """

    def __init__(self, *args: Any):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(UserError, ValueError):
    """A user-caused config error; `str()` is one line naming the key and what would be valid."""

    def __init__(self, key: str, value: Any, reason: str):
        self.key, self.value, self.reason = key, value, reason
        shown = "" if value is _NO_VALUE else f"={_show(value)}"
        super().__init__(f"invalid config: {key}{shown}: {reason}")


_NO_VALUE = object()


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
        return text if len(text) <= 60 else text[:57] + "..."
    return str(value)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


PosInt = Annotated[int, Field(ge=1)]
# inf and nan (`optim.lr=inf`, `1e400`, `nan`) are refused: every job would train to nothing.
PosFloat = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Beta = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]


class DataConfig(_Section):
    name: Literal[DATASETS]
    n_samples: Annotated[int, Field(ge=4)] = 400
    noise: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 1.0
    test_fraction: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.2

    @model_validator(mode="after")
    def _both_splits_non_empty(self) -> DataConfig:
        n_test = int(round(self.n_samples * self.test_fraction))
        if n_test < 1 or n_test >= self.n_samples:
            raise ValueError(
                f"data.test_fraction={self.test_fraction} with data.n_samples={self.n_samples} "
                "leaves an empty train or test split"
            )
        return self


class ModelConfig(_Section):
    name: str = "mlp"
    width: PosInt = 10
    depth: PosInt = 1
    # None -> [width] * depth (filled in by the validator, so the stored config is explicit).
    hidden_sizes: Annotated[list[PosInt], Field(min_length=1)] | None = None
    activation: Literal[ACTIVATIONS] = "relu"

    @model_validator(mode="before")
    @classmethod
    def _fill_hidden_sizes(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("hidden_sizes") is None:
            width, depth = data.get("width", 10), data.get("depth", 1)
            # Leave bad widths/depths to the field checks, which name the right key.
            if isinstance(width, int) and isinstance(depth, int) and width >= 1 and 1 <= depth <= MAX_DEPTH:
                data = {**data, "hidden_sizes": [width] * depth}
        return data

    @field_validator("depth")
    @classmethod
    def _depth_bounded(cls, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise ValueError(f"model.depth={depth}: must be <= {MAX_DEPTH} (a plain MLP that deep "
                             "does not train; the gradient check grows with every layer)")
        return depth

    @field_validator("hidden_sizes")
    @classmethod
    def _layers_bounded(cls, sizes: list[int] | None) -> list[int] | None:
        if sizes is not None and len(sizes) > MAX_DEPTH:
            raise ValueError(f"model.hidden_sizes=[{len(sizes)} layers]: at most {MAX_DEPTH} "
                             "hidden layers (a plain MLP that deep does not train)")
        return sizes

    def layer_sizes(self, n_inputs: int) -> tuple[int, ...]:
        """(D, H_1, ..., H_k, 1): one logit per sample."""
        return (n_inputs, *self.hidden_sizes, 1)


class InitConfig(_Section):
    name: Literal[INIT_SCHEMES]
    # Only the `normal` scheme reads it.
    std: PosFloat = 0.01


class GDConfig(_Section):
    name: Literal["gd"]
    lr: PosFloat


class SGDConfig(_Section):
    name: Literal["sgd"]
    lr: PosFloat
    batch_size: PosInt = SGD.default_batch_size
    # Reshuffle the mini-batches every epoch (the "shuffle" rng stream).
    shuffle: bool = True


class MomentumConfig(_Section):
    name: Literal["momentum"]
    lr: PosFloat
    momentum: Beta = Momentum.defaults["momentum"]
    # None = full batch.
    batch_size: PosInt | None = Optimizer.default_batch_size
    shuffle: bool = True


class NesterovConfig(MomentumConfig):
    """The same hyper-parameters as classical momentum; only the update rule differs."""

    name: Literal["nesterov"]


class AdamConfig(_Section):
    name: Literal["adam"]
    lr: PosFloat
    # Defaults: core/optim.py (conf/optim/adam.yaml repeats them for Hydra; test_config checks).
    beta1: Beta = Adam.defaults["beta1"]
    beta2: Beta = Adam.defaults["beta2"]
    eps: PosFloat = Adam.defaults["eps"]
    batch_size: PosInt | None = Optimizer.default_batch_size
    shuffle: bool = True


OptimConfig = Annotated[
    GDConfig | SGDConfig | MomentumConfig | NesterovConfig | AdamConfig,
    Field(discriminator="name"),
]


class TrackingConfig(_Section):
    # None -> sqlite:///<repo>/mlflow.db (see tracking.resolve_tracking).
    uri: str | None = None
    # None -> <repo>/mlartifacts for SQLite; a server stores artifacts itself.
    artifact_root: str | None = None

    @model_validator(mode="after")
    def _known_scheme(self) -> TrackingConfig:
        if self.uri is not None and not self.uri.startswith(("sqlite:///", "http://", "https://")):
            raise ValueError(
                f"tracking.uri={redact(self.uri)}: must be sqlite:///<path> or http(s)://host:port "
                "(the ./mlruns file store is refused by MLflow >= 3.7)"
            )
        if self.uri is not None and self.uri.rstrip("/") in ("sqlite:", "sqlite:/", "sqlite://"):
            raise ValueError(f"tracking.uri={self.uri}: names no file; use sqlite:///path/to/mlflow.db")
        return self


class TrainConfig(_Section):
    epochs: PosInt = 1000
    dtype: Literal[DTYPES] = "float64"
    log_every: PosInt = 1
    # Seeds whose runs also log the decision boundary while training (steps 0, 10, 100, ...);
    # every run logs its final boundary. None: every seed (tracking/record.py says why).
    snapshot_seeds: list[Annotated[int, Field(ge=0)]] | None = [0]

    @field_validator("epochs")
    @classmethod
    def _epochs_bounded(cls, epochs: int) -> int:
        if epochs > MAX_EPOCHS:
            raise ValueError(f"train.epochs={epochs}: must be <= {MAX_EPOCHS:_} (every logged epoch "
                             "is kept in memory and in the store; a longer run is a typo here)")
        return epochs


class GradcheckConfig(_Section):
    enabled: bool = True
    mode: Literal[GRADCHECK_MODES] = "auto"
    n_samples: PosInt = 64
    h: PosFloat = 1e-6
    threshold: PosFloat = 1e-6
    max_full_elements: PosInt = 5000
    n_directions: PosInt = 32

    @field_validator("h")
    @classmethod
    def _h_in_range(cls, h: float) -> float:
        lo, hi = GRADCHECK_H_RANGE
        if not lo <= h <= hi:
            raise ValueError(f"gradcheck.h={h:g}: must be in [{lo:g}, {hi:g}] (float64 central "
                             "differences: smaller h drowns in round-off, larger in truncation)")
        return h


class RunConfig(_Section):
    experiment_name: Annotated[str, Field(min_length=1)] = "backprop-lab/train"
    seed: Annotated[int, Field(ge=0)] = 0
    force: bool = False
    # BLAS threads a run may use (None: the library's default). Sweeps run many small jobs:
    # one thread each is fastest (extra OpenBLAS threads spin and steal the core) and JOBS=N
    # spreads jobs over cores instead. Not part of a run's identity.
    blas_threads: Annotated[int, Field(ge=1)] | None = 1
    data: DataConfig
    model: ModelConfig
    init: InitConfig
    optim: OptimConfig
    tracking: TrackingConfig = TrackingConfig()
    train: TrainConfig = TrainConfig()
    gradcheck: GradcheckConfig = GradcheckConfig()
    # Whatever a sweep preset keeps under `sweep:` (not part of a run's identity).
    sweep: dict[str, Any] | None = None

    @field_validator("experiment_name", mode="before")
    @classmethod
    def _experiment_name(cls, name: Any) -> Any:
        return check_experiment_name(name)


_NAME_HELP = (f"must be 1-{MAX_EXPERIMENT_NAME_LENGTH} characters, folders separated by '/', "
              "e.g. backprop-lab/train")


def check_experiment_name(name: Any) -> str:
    """A valid MLflow experiment name whose artifact folder stays inside the artifact root."""
    if not isinstance(name, str) or not name.strip():
        shown = "null" if name is None else repr(name) if isinstance(name, str) else _show(name)
        raise ValueError(f"experiment_name={shown}: {_NAME_HELP}")
    if len(name) > MAX_EXPERIMENT_NAME_LENGTH:
        raise ValueError(f"experiment_name={name[:20]}... ({len(name)} characters): {_NAME_HELP} "
                         "(MLflow's limit)")
    # The artifact folder is <artifact root>/<name>: no absolute paths, no '.'/'..' parts.
    parts = name.split("/")
    if name.startswith(("/", "~")) or "\\" in name or any(p in (".", "..") for p in parts):
        raise ValueError(f"experiment_name={name}: no '..', '.', leading '/' or '\\' "
                         f"(artifacts are stored under <artifact root>/<name>); {_NAME_HELP}")
    return name


# --------------------------------------------------------------------------- validation


def validate(cfg: Any) -> RunConfig:
    """Composed config (DictConfig or dict) -> RunConfig, or raise a one-line ConfigError."""
    data = _to_dict(cfg)
    data.pop("hydra", None)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:

        raise one_line(exc) from None


def _to_dict(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, RunConfig):
        return cfg.model_dump()
    if isinstance(cfg, Mapping) and not hasattr(cfg, "_metadata"):
        return dict(cfg)
    from omegaconf import OmegaConf  # only the experiment layer needs omegaconf
    from omegaconf.errors import OmegaConfBaseException

    try:
        # Key by key, without Hydra's own node (validate drops it): resolving that one costs
        # ~10x the rest (~12 ms a job). Interpolations still resolve against the whole config.
        data = {}
        for key in cfg:
            if key == "hydra":
                continue
            if OmegaConf.is_missing(cfg, key):
                data[key] = "???"  # what to_container keeps: the model's error names the key
                continue
            value = cfg[key]
            data[key] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        return data
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "?"
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(key, _NO_VALUE, f"cannot resolve: {msg}") from None


# --------------------------------------------------------------------------- derived views


def flatten(rc: RunConfig) -> dict[str, str]:
    """RunConfig -> {'optim.lr': '0.1', 'model.hidden_sizes': '[10]', ...} (MLflow params)."""
    out: dict[str, str] = {}

    def walk(prefix: str, node: Any) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(node, (list, dict)) or node is None:
            out[prefix] = json.dumps(node)
        elif isinstance(node, bool):
            out[prefix] = str(node).lower()
        else:
            out[prefix] = redact(str(node))  # a tracking URI's password never reaches the store

    dump = rc.model_dump(mode="json")
    if dump.get("sweep") is None:
        dump.pop("sweep", None)
    walk("", dump)
    return out


def public_dict(rc: RunConfig) -> dict[str, Any]:
    """The whole config as plain data, credentials in URIs redacted (the config.yaml artifact)."""
    dump = rc.model_dump(mode="json")
    for key in ("uri", "artifact_root"):
        if dump["tracking"].get(key):
            dump["tracking"][key] = redact(dump["tracking"][key])
    return dump


def semantic_dict(rc: RunConfig) -> dict[str, Any]:
    """The part of the config that decides what a run computes (which snapshots it draws does
    not: `train.snapshot_seeds` is left out, so the keys of runs logged before it existed hold)."""
    out = {k: v for k, v in rc.model_dump(mode="json").items() if k not in NON_SEMANTIC_KEYS}
    out["train"] = {k: v for k, v in out["train"].items() if k != "snapshot_seeds"}
    return out


def config_key(rc: RunConfig) -> str:
    """sha256 of the canonical JSON of the run's semantic config (tracking, force, names excluded)."""
    canonical = json.dumps(semantic_dict(rc), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# --------------------------------------------------------------------------- one-line errors

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
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}[kind]
        bound = next(iter(ctx.values()))
        reason = f"must be {op} {bound:g}"
        section = _section_for(loc[:-1])
        field = section.model_fields.get(loc[-1]) if section and isinstance(loc[-1], str) else None
        other = _range_text(field) if field else None
        if other:
            reason = f"must be {other}"
    elif kind.startswith("int_"):
        reason = "must be an integer"
    elif kind == "finite_number":
        reason = "must be a finite number"
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
        ValueError.__init__(self, redact(f"invalid config: {msg}"))


# --------------------------------------------------------------------------- command-line text


def check_ascii(overrides: list[str]) -> None:
    """Raise a one-line ConfigError for an override with non-ASCII characters outside quotes.

    Hydra's override lexer rejects them with a message nobody can act on; full-width digits
    (`optim.lr=０.１`, from an IME) look like numbers but are not. Quoted text
    (`experiment_name='résumé'`) is Hydra's to accept. Run by scripts/train.py before Hydra.
    """
    for text in overrides:
        unquoted = _QUOTED.sub("", text)
        bad = next((ch for ch in unquoted if ord(ch) > 127), None)
        if bad is None:
            continue
        key, sep, value = text.partition("=")
        what = unicodedata.name(bad, f"U+{ord(bad):04X}").lower()
        if unicodedata.category(bad) == "Nd":
            hint = "type ASCII digits (0-9)"
        else:
            hint = "use ASCII characters, or quote text values ('...')"
        raise ConfigError(key.lstrip("+~") if sep else "<command line>", value if sep else text,
                          f"non-ASCII character {bad!r} ({what}); {hint}")


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")
