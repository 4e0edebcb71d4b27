"""A search worker: ask a trial, train its configuration on each seed as a child run, tell.

`work(plan)` loops until the study holds `plan.search.trials` trials. Asking is done under a
file lock (count + ask in one step), so JOBS=N workers never ask one trial too many. Each seed is
one MLflow run made by `tracking.run.run` exactly as a sweep job (params, metrics, gradient check,
figures), a child of the study's parent run, tagged `bpl.trial`. While a seed trains, its test loss
goes to the median pruner every `report_every` epochs (as the intermediate value -loss, since the
study maximises accuracy; step = seed index x epochs + epoch, so seeds line up across trials);
a pruned run ends FINISHED with `bpl.status=pruned`, `bpl.pruned_epoch` and the trial ends PRUNED.
"""

from __future__ import annotations

import io
import math
import sys
import time
from pathlib import Path
from typing import Any

from backprop_lab.analysis.summary import METRIC, SCORED_STATUSES
from backprop_lab.search import space
from backprop_lab.search.study import (
    DIVERGED_ATTR,
    EPOCHS_ATTR,
    RETRY_ATTR,
    STUDY_TAG,
    TRIAL_TAG,
    Plan,
    compose,
    counted,
    file_lock,
    open_study,
    run_config,
)

MAX_FAILURES_IN_A_ROW = 3


class Reporter:
    """on_epoch for tracking.run.run: reports -test/loss to the trial; True asks train() to stop."""

    def __init__(self, trial: Any, offset: int, every: int, prune: bool):
        self.trial, self.offset, self.every, self.prune = trial, offset, every, prune
        self.next = every
        self.pruned_epoch: int | None = None

    def __call__(self, epoch: int, metrics: dict[str, float]) -> bool:
        if epoch < self.next:
            return False
        self.next = (epoch // self.every + 1) * self.every
        loss = metrics["test/loss"]
        self.trial.report(-loss if math.isfinite(loss) else -1e300, self.offset + epoch)
        if self.prune and self.trial.should_prune():
            self.pruned_epoch = epoch + 1
            return True
        return False


def work(plan: Plan, out=None) -> None:
    """Run trials until the study holds plan.search.trials of them (see the module docstring)."""
    import optuna
    from hydra import initialize_config_dir

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = out or sys.stdout
    failures = 0
    with initialize_config_dir(config_dir=plan.conf_dir, version_base="1.3"):
        while True:
            with file_lock(Path(plan.lock_dir) / f"{plan.study_name}.ask.lock"):
                study = _study(plan)
                trials = study.get_trials(deepcopy=False)
                if counted(trials) >= plan.search.trials:
                    return
                trial = study.ask()
            error = run_trial(plan, study, trial, out)
            failures = failures + 1 if error else 0
            if failures == MAX_FAILURES_IN_A_ROW:  # a broken store or config, not a bad trial
                print(f"search: {failures} trials in a row failed (last: {error}); stopping this "
                      "worker: fix the cause, then the same command resumes", file=sys.stderr, flush=True)
                return


def _study(plan: Plan) -> Any:
    """The study with a sampler seeded from the search seed and the trials so far: the same
    command gives the same trials (JOBS=1), and a resumed search draws what it would have."""
    import optuna

    probe = open_study(plan.storage, plan.study_name)
    position = counted(probe.get_trials(deepcopy=False))
    sampler = optuna.samplers.TPESampler(seed=plan.search.seed * 1_000_003 + position)
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=plan.search.pruner.startup_trials,
        n_warmup_steps=plan.search.pruner.warmup_epochs)
    return open_study(plan.storage, plan.study_name, sampler=sampler, pruner=pruner)


def run_trial(plan: Plan, study: Any, trial: Any, out) -> str | None:
    """Train the trial's configuration on each seed (reusing runs of the trials it repeats);
    returns the error of a failed trial, else None."""
    from optuna.trial import TrialState

    from backprop_lab.tracking import client as tracking
    from backprop_lab.tracking.run import JobContext, run

    t0 = time.perf_counter()
    values = space.suggest(trial, plan.search.params)
    config_overrides = space.overrides(values)
    label = " ".join(f"{k}={space.show(v)}" for k, v in values.items())
    repeats = trial.user_attrs.get(RETRY_ATTR, [])
    earlier = _earlier_runs(plan, repeats) if repeats else {}
    scores: list[float] = []  # the scored seeds (analysis.summary: diverged runs never average)
    n_diverged = epochs_run = 0
    client = tracking.prepare_store(plan.tracking_uri, plan.artifact_root)
    for index, seed in enumerate(plan.search.seeds):
        found = earlier.get(seed)
        status = found.data.tags.get("bpl.status") if found is not None else None
        if found is not None and found.info.status == "FINISHED" and status in ("finished", "diverged"):
            client.set_tag(found.info.run_id, TRIAL_TAG, str(trial.number))  # now this trial's run
            acc = found.data.metrics.get(METRIC)
            epochs_run += int(found.data.metrics.get("final/epochs_run", plan.epochs))
        else:
            if found is not None:  # left unfinished by a killed search: replaced, not duplicated
                client.delete_run(found.info.run_id)
            overrides = [*plan.overrides, *config_overrides, f"seed={seed}"]
            cfg = run_config(compose(plan.conf_dir, overrides))
            named = tuple(o for o in overrides if not o.startswith("+search"))
            job = JobContext(mode="multirun", overrides=named, preset=f"search-{plan.search.space}",
                             swept=(*(space.override_key(k) for k in values), "seed"))
            reporter = Reporter(trial, index * plan.epochs, plan.search.report_every,
                                plan.search.pruner.enabled)
            summary = run(cfg, job, out=io.StringIO(), parent_id=plan.parent_id, on_epoch=reporter,
                          tags={TRIAL_TAG: str(trial.number), STUDY_TAG: plan.study_name})
            status, acc = summary.status, summary.test_acc
            epochs_run += int(summary.metrics.get("final/epochs_run", 0))
            if status == "failed":
                trial.set_user_attr(EPOCHS_ATTR, epochs_run)
                study.tell(trial, state=TrialState.FAIL)
                _line(plan, study, trial, label, f"failed on seed {seed}: {summary.error}", t0, out)
                return summary.error or "failed"
            if status == "stopped":
                tracking.log_tags(client, summary.run_id, {"bpl.status": "pruned",
                                                           "bpl.pruned_epoch": reporter.pruned_epoch})
                trial.set_user_attr(EPOCHS_ATTR, epochs_run)
                study.tell(trial, state=TrialState.PRUNED)
                _line(plan, study, trial, label,
                      f"pruned at epoch {reporter.pruned_epoch} of seed {seed}", t0, out)
                return None
        if status in SCORED_STATUSES and acc is not None and math.isfinite(acc):
            scores.append(acc)
        else:
            n_diverged += 1
    trial.set_user_attr(EPOCHS_ATTR, epochs_run)
    trial.set_user_attr(DIVERGED_ATTR, n_diverged)
    if not scores:  # nothing to average: TPE learns nothing from it, the summary counts it
        study.tell(trial, state=TrialState.FAIL)
        _line(plan, study, trial, label, f"diverged on all {n_diverged} seed(s)", t0, out)
        return None
    value = sum(scores) / len(scores)
    study.tell(trial, value)
    extra = f", {n_diverged} diverged" if n_diverged else ""
    _line(plan, study, trial, label, f"mean test acc {value:.4f} over {len(scores)} seed(s){extra}",
          t0, out)
    return None


def _earlier_runs(plan: Plan, numbers: list[int]) -> dict[int, Any]:
    """seed -> the run a trial this one repeats made for it (found by its bpl.trial tag).

    A run killed before its end has no params yet (they are written with its last batch): it holds
    nothing to reuse and is deleted here, so the seed's new run replaces it."""
    from backprop_lab.tracking import client as tracking

    client = tracking.prepare_store(plan.tracking_uri, plan.artifact_root)
    found: dict[int, Any] = {}
    for number in numbers:
        flt = f"tags.`mlflow.parentRunId` = '{plan.parent_id}' and tags.`{TRIAL_TAG}` = '{number}'"
        for r in client.search_runs([plan.experiment_id], filter_string=flt, max_results=1000):
            if "seed" in r.data.params:
                found[int(r.data.params["seed"])] = r
            else:
                client.delete_run(r.info.run_id)
    return found


def _line(plan: Plan, study: Any, trial: Any, label: str, what: str, t0: float, out) -> None:
    from backprop_lab.tracking.run import write_line

    k = counted(study.get_trials(deepcopy=False))
    write_line(out, f"[{k}/{plan.search.trials}] trial {trial.number} {label}: {what} "
                    f"({time.perf_counter() - t0:.1f}s)")
