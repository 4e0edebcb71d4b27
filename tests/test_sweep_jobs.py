"""Fast up-front composition of a sweep's jobs (sweep.jobs) and the sweeper that owns the sweep.

Every job composed the short way (one Hydra composition per set of config-group choices, plain
overrides applied to a copy) must equal the job composed in full, exactly as the launcher will:
same config (hydra node included), same validated RunConfig, same config key, same errors. Each
preset's jobs are composed once here and checked against what the preset is for.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from backprop_lab.config import schema as bpl_config
from backprop_lab.sweep import jobs as sweep_jobs

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
PRESETS = sorted(p.stem for p in (CONF / "sweep").glob("*.yaml"))


@pytest.fixture()
def hydra_conf():
    """A Hydra context on conf/: compose(*overrides) -> the driver's config of `--multirun ...`."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra

        def compose(*overrides: str) -> DictConfig:
            return hydra.compose_config("config", overrides=list(overrides), run_mode=RunMode.MULTIRUN)

        yield compose


def task_config(job_cfg: DictConfig) -> dict:
    task = job_cfg.copy()
    with read_write(task), open_dict(task):
        del task["hydra"]
    return OmegaConf.to_container(task, resolve=True)


GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()}  # config groups (init, optim, data, ...)


def full_sample(job_overrides: list) -> list[int]:
    """Which jobs to compare with their full composition (~1 s each): the first and the last, the
    first of each distinct set of config-group choices (each cached base of the short way), and a
    fixed, seeded sample of 8."""
    firsts: dict[tuple[str, ...], int] = {}
    for i, overrides in enumerate(job_overrides):
        groups = tuple(o for o in overrides if o.split("=", 1)[0].lstrip("+~") in GROUPS)
        firsts.setdefault(groups, i)
    n = len(job_overrides)
    seeded = random.Random(0).sample(range(n), k=min(n, 8))
    return sorted({0, n - 1, *firsts.values(), *seeded})


def assert_fast_equals_full(cfg: DictConfig) -> tuple[sweep_jobs.JobComposer, list[sweep_jobs.Job]]:
    job_overrides = sweep_jobs.expand_jobs(cfg)
    loader = GlobalHydra.instance().config_loader()
    composer = sweep_jobs.JobComposer(cfg)
    jobs = sweep_jobs.compose_jobs(cfg, job_overrides)
    assert len(jobs) == len(job_overrides) > 1
    # compose_jobs composed and validated every job the short way; a sample is composed again
    # (short way and in full) and must match it.
    for i in full_sample(job_overrides):
        job, overrides = jobs[i], job_overrides[i]
        fast = composer.compose(list(overrides))
        full = loader.load_sweep_config(cfg, list(overrides))
        assert OmegaConf.to_container(fast) == OmegaConf.to_container(full), overrides
        assert OmegaConf.is_struct(fast) and not OmegaConf.is_readonly(fast.hydra)
        assert task_config(fast) == task_config(full), overrides
        task = composer.task_dict(list(overrides))  # what compose_jobs validated, when not None
        assert task is None or task == task_config(full), overrides
        run_config = bpl_config.validate(task_config(full))
        assert job.run_config == run_config, overrides
        assert job.config_key == bpl_config.config_key(run_config), overrides
    return composer, jobs


# --------------------------------------------------------------------------- same configs


@pytest.mark.parametrize("preset", [pytest.param("default", marks=pytest.mark.slow),
                                    *(p for p in PRESETS if p != "default")])
def test_every_preset_composes_the_same_configs_the_short_way(hydra_conf, preset):
    cfg = hydra_conf(f"+sweep={preset}")
    composer, jobs = assert_fast_equals_full(cfg)
    # One full composition per distinct config-group choice of the preset, not one per job.
    groups = {"default": 3, "seeds": 1, "datasets": 5, "optimizers": 5, "deep_init": 4}
    assert len(composer.bases) == groups[preset]
    # The driver validated every job from its task keys alone (no copy of the hydra node).
    assert all(composer.task_dict(o) is not None for o in sweep_jobs.expand_jobs(cfg)[:3])
    # ... and the preset asks what it says (its jobs, validated, are the sweep's).
    rcs = [j.run_config for j in jobs]
    assert {rc.experiment_name for rc in rcs} == {f"backprop-lab/{preset}"}
    assert {(rc.sweep or {}).get("preset") for rc in rcs} == {preset}
    assert len({j.config_key for j in jobs}) == len(jobs), "two jobs compute the same thing"
    assert len({j.name for j in jobs}) == len(jobs), "two jobs share a run name"
    if preset == "default":
        assert len({rc.optim.lr for rc in rcs}) >= 3 and len({rc.model.width for rc in rcs}) >= 4
        assert len({rc.init.name for rc in rcs}) >= 3 and len(jobs) >= 36
    elif preset == "seeds":
        assert len({rc.seed for rc in rcs}) >= 5
    elif preset == "datasets":
        assert {rc.data.name for rc in rcs} == {"blobs", "moons", "circles", "xor", "spirals"}
    elif preset == "optimizers":
        assert {rc.optim.name for rc in rcs} == {"gd", "sgd", "momentum", "nesterov", "adam"}
    elif preset == "deep_init":
        # He et al. (2015, Fig. 3): depth 30, every scheme at the same lr, seeds for bands.
        assert all(len(rc.model.hidden_sizes) >= 30 and rc.model.activation == "relu" for rc in rcs)
        assert {rc.init.name for rc in rcs} >= {"he", "xavier", "lecun", "normal"}
        assert {rc.init.std for rc in rcs if rc.init.name == "normal"} == {0.01}
        assert len({rc.seed for rc in rcs}) >= 3 and {rc.sweep["per"] for rc in rcs} == {"init"}


@pytest.mark.parametrize("overrides, n_bases", [
    (("+sweep=seeds", "seed=0,1", "optim.lr=0.1,0.5"), 1),           # an extra value sweep
    (("init=he,xavier", "model.width=7", "optim.lr=0.1,0.2"), 2),    # group sweep + value override
    (("+sweep=seeds", "+sweep.note=hello", "+init.std=0.05", "model.width=2", "seed=0,1"), 1),  # adds
    (("+sweep={note: 1}", "seed=1,2"), 0),                             # a dict: composed in full
    (("~gradcheck.h", "~train.log_every", "seed=1,2"), 1),              # deletions
    (("hydra.job.config.override_dirname.kv_sep=_", "hydra.job.chdir=false", "seed=3,4"), 1),
    (("optim=adam,sgd", "optim.lr=${seed}", "model.hidden_sizes=[8,4]", "seed=1"), 2),
])
def test_command_line_cases_compose_the_same_configs(hydra_conf, overrides, n_bases):
    composer, _ = assert_fast_equals_full(hydra_conf(*overrides))
    assert len(composer.bases) == n_bases


@pytest.mark.parametrize("overrides", [
    ["optim.lrr=0.1"],            # misspelt key
    ["+optim.lr=0.1"],            # add over an existing key
    ["~optim.nope"],              # delete a missing key
    ["init=nope"],                # unknown group option
    ["foo@bar=1"],                # a package on a non-group
    ["model.width=[1,2"],         # unparsable
])
def test_errors_are_hydras_own(hydra_conf, overrides):
    cfg = hydra_conf("seed=1")
    loader = GlobalHydra.instance().config_loader()
    with pytest.raises(Exception) as full:
        loader.load_sweep_config(cfg, overrides)
    with pytest.raises(Exception) as fast:
        sweep_jobs.JobComposer(cfg).compose(overrides)
    assert type(fast.value) is type(full.value) and str(fast.value) == str(full.value)


def test_a_job_that_refers_to_the_hydra_node_is_validated_as_the_launcher_runs_it(hydra_conf):
    """`${hydra:job.num}` differs per job: such a job is composed whole, hydra node and all."""
    cfg = hydra_conf("experiment_name=x${hydra:job.num}", "seed=1,2")
    composer = sweep_jobs.JobComposer(cfg)
    assert composer.task_dict(["experiment_name=x${hydra:job.num}", "seed=1"]) is None
    assert composer.task_dict(["seed=1"]) is not None
    jobs = sweep_jobs.compose_jobs(cfg, sweep_jobs.expand_jobs(cfg))
    assert [job.run_config.experiment_name for job in jobs] == ["x0", "x1"]


def test_bad_job_after_good_ones_fails_up_front_with_one_line(hydra_conf):
    cfg = hydra_conf("init=he,nope", "optim.lr=0.1,0.2")
    with pytest.raises(bpl_config.ConfigError) as info:
        sweep_jobs.compose_jobs(cfg, sweep_jobs.expand_jobs(cfg))
    assert str(info.value).startswith("invalid config: init=nope: no such option; valid: he, ")


# --------------------------------------------------------------------------- the sweeper


def test_the_sweeper_is_discovered_and_owns_the_sweep(hydra_conf, tmp_path):
    """Hydra finds the plugin through src/ and builds it from conf/hydra/sweeper/backprop_lab.yaml."""
    from hydra.core.plugins import Plugins
    from hydra.plugins.sweeper import Sweeper

    name = "hydra_plugins.backprop_lab_sweeper.BackpropLabSweeper"
    cfg = hydra_conf("seed=1,2")
    assert cfg.hydra.sweeper._target_ == name and cfg.hydra.sweeper.dry_run is False
    cls = Plugins.instance().class_name_to_class[name]
    assert issubclass(cls, Sweeper)  # Hydra's public sweeper interface, not BasicSweeper's internals
    sweeper = cls(max_batch_size=None, params={"model.width": "2,3"}, dry_run=True)
    assert (sweeper.params, sweeper.dry_run) == ({"model.width": "2,3"}, True)


def test_a_bad_launcher_value_ends_in_one_line(hydra_conf, capsys):
    """`make sweep JOBS=0` reaches the sweeper as hydra.launcher.n_jobs=0: one line, exit 2."""
    from hydra.core.plugins import Plugins
    from hydra.types import HydraContext

    cfg = hydra_conf("seed=1,2", "hydra.launcher.n_jobs=0")
    cls = Plugins.instance().class_name_to_class["hydra_plugins.backprop_lab_sweeper.BackpropLabSweeper"]
    context = HydraContext(config_loader=GlobalHydra.instance().config_loader(), callbacks=None)
    with pytest.raises(SystemExit) as info:
        cls().setup(hydra_context=context, task_function=lambda c: None, config=cfg)
    assert info.value.code == 2
    assert capsys.readouterr().err == ("sweep: hydra.launcher: hydra.launcher.n_jobs=0: expected a whole "
                                       "number >= 1, or null (one worker per core)\n")
