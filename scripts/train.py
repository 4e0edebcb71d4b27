"""One training run, or a sweep with --multirun: a thin Hydra entry point over experiment.run."""

import os
import sys
from pathlib import Path

for _k, _v in (("MLFLOW_DISABLE_TELEMETRY", "true"), ("DO_NOT_TRACK", "true"), ("RAY_USAGE_STATS_ENABLED", "0")):
    os.environ.setdefault(_k, _v)  # telemetry off before anything imports mlflow

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402

CONF = str(Path(__file__).resolve().parent.parent / "conf")


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg):
    from backprop_lab.experiment import JobContext, UserError, run

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    job = JobContext(mode="multirun" if multirun else "single",
                     sweep_dir=hc.sweep.dir if multirun else None,
                     job_num=hc.job.num if multirun else None,
                     overrides=tuple(hc.overrides.task), preset=hc.runtime.choices.get("sweep"),
                     swept=swept_keys(hc) if multirun else ())
    try:
        summary = run(cfg, job)
    except UserError as exc:  # single run: one line (bad config, unusable store), nothing written
        print(exc, file=sys.stderr)
        sys.exit(2 if exc.__class__.__name__ == "ConfigError" else 1)
    if summary.status == "failed" and not multirun:
        sys.exit(1)
    return summary


def swept_keys(hc) -> tuple[str, ...]:
    """Keys a multirun varies: the preset's sweeper params and command-line lists (a,b / range())."""
    keys = list((hc.sweeper.get("params") or {}).keys())
    for arg in sys.argv[1:]:  # the driver's command line (basic launcher; workers see the preset only)
        key, _, value = arg.lstrip("+~").partition("=")
        if "," in value or value.startswith(("range(", "choice(", "glob(", "interval(")):
            keys.append(key)
    return tuple(keys)


if __name__ == "__main__":
    if not any(a.startswith("-") for a in sys.argv[1:]):  # single run: Hydra's errors in one line too
        from backprop_lab.config_errors import ConfigError, check_overrides

        try:
            check_overrides(CONF, sys.argv[1:])
        except ConfigError as exc:
            sys.exit(print(exc, file=sys.stderr) or 2)
    main()
