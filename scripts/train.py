"""One training run, or a sweep with --multirun: a thin Hydra entry point over experiment.run."""

import os
import sys
from pathlib import Path

for _k, _v in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_k, _v)  # telemetry off before anything imports mlflow

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    from backprop_lab.tracking.run import ConfigError, UserError, job_from_hydra, run

    job = job_from_hydra(HydraConfig.get(), sys.argv[1:])
    try:
        summary = run(cfg, job)
    except UserError as exc:  # single run: one line (bad config, unusable store), nothing written
        print(exc, file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    if summary.status == "failed" and job.mode == "single":
        sys.exit(1)
    return summary


def precheck(argv: list[str]) -> None:
    """Hydra's own composition errors (unknown option, misspelt key) as one line, before Hydra runs.

    A single run's overrides are composed once here. A multirun's values may be sweeps (a,b), so
    only its preset choice is checked here; the sweep callback validates every job up front.
    """
    from backprop_lab.config.overrides import ConfigError, check_overrides
    from backprop_lab.config.schema import check_ascii

    try:  # every value, swept ones included: Hydra's lexer message for `０.１` is unusable
        check_ascii([a for a in argv if not a.startswith("-")])
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    overrides = [a for a in argv if not a.startswith("-")]
    if len(overrides) != len(argv):  # --multirun, -m, --cfg ...
        overrides = [a for a in overrides if a.lstrip("+").startswith("sweep=")]
    if not overrides and len(overrides) != len(argv):
        return
    config_dir = str(Path(__file__).resolve().parent.parent / "conf")
    try:
        check_overrides(config_dir, overrides)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2)
    if len(overrides) == len(argv):  # a single run: its values and its store, before Hydra starts
        check_single_run(config_dir, overrides)


def check_single_run(config_dir: str, overrides: list[str]) -> None:
    """Validate a single run's config and check its store (plain sqlite3 / one GET /health).

    Before @hydra.main: a bad value or a broken store ends in one line in about a second, before
    Hydra writes its outputs/ folder and imports the sweep callback (mlflow, matplotlib: ~5 s).
    """
    from hydra import compose, initialize_config_dir

    from backprop_lab.config.schema import ConfigError, UserError, validate
    from backprop_lab.tracking import store

    try:
        with initialize_config_dir(config_dir=config_dir, version_base="1.3"):
            rc = validate(compose("config", overrides=overrides))
        store.check_store_quickly(store.resolve_tracking(rc)[0])
    except UserError as exc:
        print(exc, file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)


if __name__ == "__main__":
    precheck(sys.argv[1:])
    main()
