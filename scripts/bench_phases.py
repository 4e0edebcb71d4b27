"""Where a sweep job's CPU goes, phase by phase (issue 14): one process, warm, no profiler.

    .venv/bin/python scripts/bench_phases.py [--jobs-per-cell 1]

The jobs: lr {0.1, 1.0} x width {2, 16, 64} x init {he, normal} of the default preset (seed 0,
1000 epochs), on a fresh SQLite store in a temporary folder. Measured as process CPU time
(every thread of this process), per job:
  plan      sweep.jobs.compose_jobs: the driver validates every job before the sweep starts
            (serial; past the bases); beside it every job composed whole (hydra node, HydraConfig),
            as before JobComposer.task_dict
  compose   JobComposer.compose: the job's config from the cached base, in the launcher's worker
  run_job   the launcher's job.run_job around a task that does nothing (job folder, .hydra/
            files, HydraConfig, logging); beside it Hydra's own run_job on the same configs
  run.run   the job's task: tracking.run.run (validate, store, compute, figures, MLflow)
  compute   the same configs through core.compute alone (the compute floor's part)
run.run - compute is what tracking and figures cost.
Then each guarded fast path a job takes beside the public call it stands for, alternated on one
store (thread CPU time, median of the jobs): the run's creation (MlflowClient.create_run), its
dataset input (log_inputs), its end with its last batch (write_batch + set_terminated) and its
three .hydra/ files (OmegaConf.to_yaml). Pairs measured side by side move together with the
machine's load, so they show a saving where run.run - compute (a difference of two noisy
figures) does not.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

from backprop_lab.env import set_quiet_env

set_quiet_env()
REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=1000)
    args = ap.parse_args()

    from hydra import compose, initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import run_job
    from hydra.types import HydraContext
    from omegaconf import open_dict
    from threadpoolctl import threadpool_limits

    from backprop_lab.config.schema import validate
    from backprop_lab.core import compute
    from backprop_lab.sweep.jobs import JobComposer, compose_jobs
    from backprop_lab.tracking import run as R
    from backprop_lab.tracking.run import JobContext, SweepJob
    from hydra_plugins.backprop_lab_launcher import job as lean_job

    cpu = time.process_time
    with tempfile.TemporaryDirectory(prefix="bpl-phases-") as tmp:
        root = Path(tmp)
        # As a sweep's jobs get them: the command line's task overrides in every job's list.
        store = [f"tracking.uri=sqlite:///{root / 'mlflow.db'}", f"tracking.artifact_root={root / 'art'}"]
        jobs = [[f"optim.lr={lr}", f"model.width={w}", f"init={i}", "seed=0", f"train.epochs={args.epochs}",
                 *store] for lr in (0.1, 1.0) for w in (2, 16, 64) for i in ("he", "normal")]
        with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", ["+sweep=default", *store, f"hydra.sweep.dir={root / 'multirun'}"],
                          return_hydra_config=True)
            HydraConfig.instance().set_config(cfg)
            loader = GlobalHydra.instance().config_loader()
            # Per job, past the bases (one Hydra composition per init, ~0.1-0.3 s each, once a
            # sweep: the launcher gets the same composer, use_composer).
            composer = JobComposer(cfg, loader)
            compose_jobs(cfg, jobs, loader, composer)
            t = cpu()
            compose_jobs(cfg, jobs, loader, composer)
            t_plan = (cpu() - t) / len(jobs)
            whole = JobComposer(cfg, loader)
            whole.task_dict = lambda overrides: None  # every job composed whole, hydra node and all
            compose_jobs(cfg, jobs, loader, whole)
            t = cpu()
            compose_jobs(cfg, jobs, loader, whole)
            t_plan_whole = (cpu() - t) / len(jobs)
            HydraConfig.instance().set_config(cfg)
            # As the launcher's workers get them: the sweeper's sweep.* overrides appended.
            told = SweepJob("0" * 32, "bench", 1, len(jobs), time.time()).overrides()
            t = cpu()
            composed = [composer.compose([*overrides, *told]) for overrides in jobs]
            t_compose = (cpu() - t) / len(jobs)
            context = HydraContext(config_loader=loader, callbacks=Callbacks(cfg))
            timings = {}
            for name, run_job_fn in (("hydra", run_job), ("lean", lean_job.run_job)):
                configs = [composer.compose([*overrides, *told]) for overrides in jobs]
                t = cpu()
                rets = []
                for k, job_cfg in enumerate(configs):
                    with open_dict(job_cfg):
                        job_cfg.hydra.job.id = job_cfg.hydra.job.num = k
                        job_cfg.hydra.sweep.dir = str(root / name)
                    rets.append(run_job_fn(hydra_context=context, task_function=lambda _cfg: None,
                                           config=job_cfg, job_dir_key="hydra.sweep.dir",
                                           job_subdir_key="hydra.sweep.subdir"))
                timings[name] = (cpu() - t) / len(jobs)
            t_run_job, t_run_job_hydra = timings["lean"], timings["hydra"]
            composed = [ret.cfg for ret in rets]  # the task's configs (no hydra node), as it gets them
            configs = [validate(job_cfg) for job_cfg in composed]
            with threadpool_limits(limits=1, user_api="blas"):
                quiet = io.StringIO()
                # A warm-up run: the figure layouts, compiled SQL, fonts (a first run costs ~3x).
                warm = [*jobs[0], "seed=99"]
                warm_cfg = composer.compose(warm)
                with open_dict(warm_cfg):
                    warm_cfg.hydra.job.id = warm_cfg.hydra.job.num = len(jobs)
                lean_job.run_job(hydra_context=context, task_function=lambda _cfg: None, config=warm_cfg,
                                 job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")
                warmed = R.run(warm_cfg, JobContext(mode="multirun", overrides=tuple(warm)), out=quiet)
                if warmed.status != "finished":
                    raise SystemExit(f"bench_phases: the warm-up run did not train:\n{quiet.getvalue()}")
                t = cpu()
                statuses = [R.run(job_cfg, JobContext(mode="multirun", overrides=tuple(overrides)), out=quiet)
                            .status for job_cfg, overrides in zip(composed, jobs, strict=True)]
                t_run = (cpu() - t) / len(jobs)
                if set(statuses) - {"finished", "diverged"}:
                    raise SystemExit(f"bench_phases: runs did not train ({statuses}):\n{quiet.getvalue()}")
                t = cpu()
                for rc in configs:
                    compute.compute_run(rc)
                t_compute = (cpu() - t) / len(jobs)
                paths = _fast_paths(composed[0], rets, len(jobs))
    ms = 1000.0
    print(f"per job, CPU ms ({len(jobs)} jobs x {args.epochs} epochs, warm, one process):")
    print(f"  plan {t_plan * ms:.0f} (the whole way: {t_plan_whole * ms:.0f})"
          f"   compose {t_compose * ms:.0f}   run_job {t_run_job * ms:.0f}"
          f" (Hydra's: {t_run_job_hydra * ms:.0f})")
    print(f"  run.run {t_run * ms:.0f} = compute {t_compute * ms:.0f} + tracking and figures "
          f"{(t_run - t_compute) * ms:.0f}")
    overhead = t_plan + t_compose + t_run_job + t_run - t_compute
    print(f"  overhead / compute = {overhead / t_compute:.2f} (target of issue 14: <= 0.30)")
    print("guarded fast paths, CPU ms per job (median of the jobs; the public way beside):")
    print("  " + "   ".join(f"{name} {fast * ms:.1f} ({public * ms:.1f})" for name, (fast, public)
                            in paths.items()))


def _fast_paths(task_cfg, rets, n: int) -> dict[str, tuple[float, float]]:
    """(fast, public) median CPU seconds per job of each guarded fast path a job takes, each
    beside the public call it stands for, alternated on one store: the run's creation
    (create_run), its dataset input (log_inputs), its end with the last batch (write_batch +
    set_terminated), and its .hydra/ YAML files (OmegaConf.to_yaml)."""
    import statistics

    from mlflow.data.numpy_dataset import from_numpy
    from mlflow.entities import DatasetInput, InputTag
    from omegaconf import OmegaConf

    from backprop_lab.config.schema import validate
    from backprop_lab.core import compute
    from backprop_lab.tracking import client as tracking
    from backprop_lab.tracking import store
    from hydra_plugins.backprop_lab_launcher import job as lean_job

    rc = validate(task_cfg)
    client = tracking.prepare_store(*store.resolve_tracking(rc))
    experiment_id = tracking.ensure_experiment(client, "bench/paths", store.resolve_tracking(rc)[1])
    dataset = compute.dataset_for(rc)
    tags = {"bpl.role": "child", **tracking.environment_tags()}
    final = [tracking.Metric(f"final/m{i}", 0.5, 1, 0) for i in range(30)]
    cpu = time.thread_time
    times: dict[str, tuple[list[float], list[float]]] = {
        k: ([], []) for k in ("create_run", "dataset input", "end + last batch", ".hydra YAML")}

    def timed(path: str, fast: bool, fn, *args, **kwargs):
        t = cpu()
        out = fn(*args, **kwargs)
        times[path][0 if fast else 1].append(cpu() - t)
        return out

    def public_input(run_id):
        ds = from_numpy(dataset.X_train, targets=dataset.y_train, name="train",
                        source=tracking._LOCAL_SOURCE())
        entity = DatasetInput(ds._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", "train")])
        client.log_inputs(run_id, datasets=[entity])

    def public_end(run_id):
        tracking.write_batch(client, run_id, metrics=final, tags={"bpl.status": "finished"})
        client.set_terminated(run_id, "FINISHED")

    def yaml_files(to_yaml, files):
        return [to_yaml(c) for c in files]

    public_input(client.create_run(experiment_id).info.run_id)  # the experiment holds the dataset
    for k in range(n):
        fast = timed("create_run", True, tracking.create_run, client, experiment_id, tags=tags,
                     run_name=f"job {k}").run_id
        public = timed("create_run", False, client.create_run, experiment_id, tags=tags,
                       run_name=f"job {k}").info.run_id
        timed("dataset input", True, tracking.log_dataset, client, fast, dataset.X_train,
              dataset.y_train, name="train", context="train")
        timed("dataset input", False, public_input, public)
        timed("end + last batch", True, tracking.write_batch, client, fast, metrics=final,
              tags={"bpl.status": "finished"}, end_status="FINISHED")
        timed("end + last batch", False, public_end, public)
    for ret in rets:  # a job's three files, from the configs the jobs of the bench ran with
        files = (ret.cfg, ret.hydra_cfg, ret.hydra_cfg.hydra.overrides.task)
        timed(".hydra YAML", True, yaml_files, lean_job.to_yaml, files)
        timed(".hydra YAML", False, yaml_files, OmegaConf.to_yaml, files)
    return {k: (statistics.median(fast), statistics.median(public)) for k, (fast, public) in times.items()}

if __name__ == "__main__":
    main()
