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
    from backprop_lab.experiment import ConfigError, UserError, job_from_hydra, run

    job = job_from_hydra(HydraConfig.get(), sys.argv[1:])
    try:
        summary = run(cfg, job)
    except UserError as exc:  # single run: one line (bad config, unusable store), nothing written
        sys.exit(print(exc, file=sys.stderr) or (2 if isinstance(exc, ConfigError) else 1))
    if summary.status == "failed" and job.mode == "single":
        sys.exit(1)
    return summary


if __name__ == "__main__":
    if not any(a.startswith("-") for a in sys.argv[1:]):  # single run: Hydra's errors in one line too
        from backprop_lab.config_errors import ConfigError, check_overrides

        try:
            check_overrides(str(Path(__file__).resolve().parent.parent / "conf"), sys.argv[1:])
        except ConfigError as exc:
            sys.exit(print(exc, file=sys.stderr) or 2)
    main()
