"""One training run, or a sweep with --multirun: a thin Hydra entry point over experiment.run."""

import os
import sys

# Telemetry off before anything heavy is imported.
for _k, _v in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_k, _v)

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    from backprop_lab.experiment import ConfigError, JobContext, StoreError, run

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    job = JobContext(mode="multirun" if multirun else "single",
                     sweep_dir=hc.sweep.dir if multirun else None,
                     job_num=hc.job.num if multirun else None,
                     overrides=tuple(hc.overrides.task), preset=hc.runtime.choices.get("sweep"))
    try:
        summary = run(cfg, job)
    except (ConfigError, StoreError) as exc:  # single run: one line, nothing written
        print(exc, file=sys.stderr)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    if summary.status == "failed" and not multirun:
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
