"""One training run, or a sweep with --multirun: a thin Hydra entry point over tracking.run.run.

A sweep is owned by the project's Hydra sweeper (src/hydra_plugins/backprop_lab_sweeper); each of
its jobs is this same task function, returning its RunSummary to the sweeper. `make` passes its
ARGS in BPL_ARGS (split like a shell command line, parentheses and all: `seed=range(0,3)`).
"""

import atexit
import os
import shlex
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig

# At start-up: importing backprop_lab turns telemetry off (backprop_lab/__init__.py) before
# Hydra's plugin scan imports the launchers (Ray) or a job imports mlflow.
from backprop_lab.config.overrides import ConfigError, check_overrides
from backprop_lab.tracking.store import exit_quickly

CONF = Path(__file__).resolve().parent.parent / "conf"


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    from backprop_lab.tracking.run import UserError, job_from_hydra, run

    job = job_from_hydra(HydraConfig.get())
    try:
        summary = run(cfg, job)
    except UserError as exc:  # single run: one line (bad config, unusable store), nothing written
        print(exc, file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    except KeyboardInterrupt:
        if job.mode == "multirun":
            raise  # the sweeper ends the sweep with its own line
        print("interrupted: the run ended KILLED", file=sys.stderr)
        sys.exit(130)
    if summary.status == "failed" and job.mode == "single":
        sys.exit(1)
    return summary


def precheck(argv: list[str]) -> None:
    """Hydra's composition errors (unknown option, misspelt key) as one line, before Hydra runs.

    A single run's overrides are composed once here. A multirun's swept values (a,b / range(..))
    are left to the sweeper, which composes and checks every job up front; its plain overrides
    (`init=hee`, the preset) are checked here, as Hydra composes them before any sweeper runs.
    """
    from backprop_lab.config.schema import check_ascii

    try:  # every value, swept ones included: Hydra's lexer message for `０.１` is unusable
        check_ascii([a for a in argv if not a.startswith("-")])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    overrides = [a for a in argv if not a.startswith("-")]
    if len(overrides) != len(argv):  # --multirun, -m, --cfg ...
        overrides = [a for a in overrides if not _swept(a)]
        if not overrides:
            return
    try:
        check_overrides(str(CONF), overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    if len(overrides) == len(argv):  # a single run: its values and its store, before Hydra starts
        check_single_run(str(CONF), overrides)


def _swept(override: str) -> bool:
    """A sweep value (`a,b`, `range(0,3)`, ...) or a Hydra setting: not composed by the precheck.

    Except the launcher's (`JOBS=abc` typed as hydra.launcher.n_jobs=abc: Hydra's five-line
    merge error), composed with the launcher chosen on the command line, if any."""
    key, _, value = override.lstrip("+~").partition("=")
    sweep_fn = value.lstrip().startswith(("range(", "choice(", "glob(", "interval(", "tag("))
    launcher = key == "hydra/launcher" or key.startswith("hydra.launcher.")
    return "," in value or sweep_fn or (key.startswith(("hydra.", "hydra/")) and not launcher)


def check_single_run(config_dir: str, overrides: list[str]) -> None:
    """Validate a single run's config and check its store (plain sqlite3 / one GET /health).

    Before @hydra.main: a bad value or a broken store ends in one line in about a second, before
    Hydra writes its outputs/ folder and imports the sweep callback (mlflow, matplotlib: ~5 s).
    """
    from hydra import compose, initialize_config_dir

    from backprop_lab.config.schema import UserError, validate
    from backprop_lab.tracking import store

    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            rc = validate(compose("config", overrides=overrides))
        store.check_store_quickly(store.resolve_tracking(rc)[0])
    except UserError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)


if __name__ == "__main__":
    atexit.register(exit_quickly)  # the stores closed, then no final garbage collections (~1 s)
    sys.argv += shlex.split(os.environ.pop("BPL_ARGS", ""))
    precheck(sys.argv[1:])
    main()
