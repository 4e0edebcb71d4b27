"""The launcher's parameters, registered as `hydra/launcher: backprop_lab_fork` (Hydra's plugin idiom).

The project's conf/hydra/launcher/backprop_lab.yaml starts from this node and sets the project's values.
"""

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore


@dataclass
class BackpropLabLauncherConf:
    _target_: str = "hydra_plugins.backprop_lab_launcher.launcher.BackpropLabLauncher"
    # Workers running jobs at once; null: one per core (os.cpu_count()). 1: in this process.
    n_jobs: int | None = None
    # Modules imported once in the driver before the workers fork, so no worker imports them.
    preload: list = field(default_factory=list)
    # `module.Class` with `Class(config).compose(overrides)`, composing a job's config as Hydra's
    # `load_sweep_config` would (faster); null: Hydra's own load_sweep_config.
    composer: str | None = None
    # Ctrl-C: seconds the workers get to end their runs (KILLED) before they are terminated.
    grace_s: float = 10.0
    # Run job 0 in the driver before forking: the workers inherit the caches it warmed.
    warm_start: bool = True
    # Run each job through job.run_job (Hydra's run_job with one copy of the config instead of
    # four; the same job folder and JobReturn); false: Hydra's own run_job.
    lean_run_job: bool = True


ConfigStore.instance().store(group="hydra/launcher", name="backprop_lab_fork",
                             node=BackpropLabLauncherConf, provider="backprop_lab")
