"""The run-config schema: every shipped option composes and validates; bad values give one line."""

from pathlib import Path

import pytest
from hydra import compose, initialize

from backprop_lab.config import schema as C

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("data", "model", "init", "optim", "tracking")


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    # One Hydra context for the module: initialize() is the slow part of composing.
    with initialize(config_path="../conf", version_base="1.3"):
        yield


def _compose(overrides=()):
    return compose("config", overrides=list(overrides))


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group,option", [(g, o) for g in GROUPS for o in _options(g)] + [("sweep", o) for o in _options("sweep")]
)
def test_every_option_of_every_group_composes_and_validates(group, option):
    prefix = "+" if group == "sweep" else ""
    rc = C.validate(_compose([f"{prefix}{group}={option}"]))
    if group in ("data", "init", "optim"):
        assert getattr(rc, group).name == option
    if group == "model":
        assert rc.model.hidden_sizes == [rc.model.width] * rc.model.depth


def test_groups_are_not_empty():
    for group in GROUPS:
        assert _options(group), group
    assert set(_options("init")) == set(C.INIT_SCHEMES)
    assert set(_options("optim")) == set(C.OPTIMIZERS)
    assert set(_options("data")) == set(C.DATASETS)


def test_defaults_reproduce_the_notebook():
    rc = C.validate(_compose())
    assert (rc.data.name, rc.model.hidden_sizes, rc.model.activation) == ("blobs", [10], "relu")
    assert (rc.init.name, rc.optim.name, rc.optim.lr, rc.train.epochs) == ("he", "gd", 0.1, 1000)
    assert rc.experiment_name == "backprop-lab/train" and rc.seed == 0 and rc.force is False
    assert rc.tracking.uri is None or "MLFLOW_TRACKING_URI" in __import__("os").environ


def test_schema_enumerations_match_the_engine():
    from backprop_lab.core import data, initializers, layers, optim

    assert set(C.DATASETS) == set(data.DATASETS)
    assert set(C.INIT_SCHEMES) == set(initializers.INIT_SCHEMES)
    assert set(C.OPTIMIZERS) == set(optim.OPTIMIZERS)
    assert set(C.ACTIVATIONS) <= set(layers.ACTIVATIONS)



@pytest.mark.parametrize("option", sorted(p.stem for p in (CONF / "optim").glob("*.yaml")))
def test_optimizer_yaml_repeats_the_engines_defaults(option):
    """conf/optim/*.yaml list the defaults so that `optim.beta1=...` needs no `+`; the engine
    (core/optim.py) owns them, and the schema reads them from there."""
    import yaml

    from backprop_lab.core import optim

    given = yaml.safe_load((CONF / "optim" / f"{option}.yaml").read_text())
    cls = optim.OPTIMIZERS[given["name"]]
    assert {k: given[k] for k in cls.defaults if k in given} == cls.defaults
    if "batch_size" in given:
        assert given["batch_size"] == cls.default_batch_size
    fields = C._OPTIM_FIELDS[given["name"]].model_fields
    assert {k: fields[k].default for k in cls.defaults} == cls.defaults
    if "batch_size" in fields:
        assert fields["batch_size"].default == cls.default_batch_size
    else:
        assert option == "gd"

@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["optim.lr=-1"], "invalid config: optim.lr=-1: must be > 0"),
        (["optim.lr=0"], "invalid config: optim.lr=0: must be > 0"),
        (["optim.lr=abc"], "invalid config: optim.lr=abc: must be a number"),
        (["model.width=0"], "invalid config: model.width=0: must be >= 1"),
        (["model.width=2.5"], "invalid config: model.width=2.5: must be an integer"),
        (["model.hidden_sizes=[]"], "invalid config: model.hidden_sizes=[]: must be a non-empty list"),
        (["model.hidden_sizes=[8,0]"], "invalid config: model.hidden_sizes[1]=0: must be >= 1"),
        (["init.name=foo"], "invalid config: init.name=foo: must be one of: he, xavier"),
        (["optim.name=foo"], "invalid config: optim.name=foo: must be one of: gd, sgd"),
        (["data.name=foo"], "invalid config: data.name=foo: must be one of: blobs, moons"),
        (["model.activation=gelu"], "invalid config: model.activation=gelu: must be one of: relu"),
        (["+optim.lrr=0.1"],
         "invalid config: optim.lrr=0.1: unknown key (misspelt?); valid keys here: name, lr"),
        (["data.test_fraction=1.5"], "invalid config: data.test_fraction=1.5: must be in (0, 1)"),
        (["data.test_fraction=0"], "invalid config: data.test_fraction=0: must be in (0, 1)"),
        (["train.epochs=0"], "invalid config: train.epochs=0: must be >= 1"),
        (["train.dtype=float16"], "invalid config: train.dtype=float16: must be one of: float32, float64"),
        (["gradcheck.mode=half"], "invalid config: gradcheck.mode=half: must be one of: auto, full"),
        (["seed=-3"], "invalid config: seed=-3: must be >= 0"),
        (["optim=adam", "optim.beta1=1.0"], "invalid config: optim.beta1=1.0: must be in [0, 1)"),
        (["tracking.uri=./mlruns"],
         "invalid config: tracking.uri=./mlruns: must be sqlite:///<path> or http"),
        (["data.n_samples=4", "data.test_fraction=0.1"], "leaves an empty train or test split"),
    ],
)
def test_bad_values_give_one_line_naming_the_key(overrides, expected):
    with pytest.raises(C.ConfigError) as info:
        C.validate(_compose(overrides))
    msg = str(info.value)
    assert "\n" not in msg
    assert expected in msg


def test_validate_resolves_the_task_keys_not_hydras_node():
    """Hydra's own node is dropped unresolved (it cost ~10x the task keys a job, and some of its
    values exist only in a running job); a task key may still interpolate it."""
    from omegaconf import OmegaConf
    from omegaconf.errors import InterpolationToMissingValueError

    cfg = compose("config", ["experiment_name=x/${hydra.job.name}"], return_hydra_config=True)
    with pytest.raises(InterpolationToMissingValueError, match="hydra.job.num"):
        OmegaConf.to_container(cfg, resolve=True)
    assert C.validate(cfg).experiment_name == f"x/{cfg.hydra.job.name}"
    with pytest.raises(C.ConfigError, match="^invalid config: seed=\\?\\?\\?: "):
        C.validate(compose("config", ["seed=???"], return_hydra_config=True))


def test_config_key_ignores_tracking_and_force_but_not_semantics():
    base = C.validate(_compose())
    same = C.validate(_compose(["force=true", "tracking.uri=sqlite:////tmp/x.db", "experiment_name=other",
                                "train.snapshot_seeds=null"]))
    other_lr = C.validate(_compose(["optim.lr=0.2"]))
    explicit = C.validate(_compose(["model.hidden_sizes=[10]"]))
    assert C.config_key(base) == C.config_key(same) == C.config_key(explicit)
    assert C.config_key(base) != C.config_key(other_lr)
    assert len(C.config_key(base)) == 64


def test_flatten_gives_dotted_string_params():
    params = C.flatten(C.validate(_compose(["optim=adam"])))
    assert params["optim.lr"] == "0.01" and params["optim.beta2"] == "0.999"
    assert params["model.hidden_sizes"] == "[10]" and params["gradcheck.enabled"] == "true"
    assert params["tracking.uri"] in ("null", __import__("os").environ.get("MLFLOW_TRACKING_URI"))
    assert all(isinstance(v, str) for v in params.values())
    assert "sweep" not in params
