"""`make search`: the owner of one Optuna study, from the command line to the parent run's summary.

`main(argv, conf_dir)` composes `+search=<space>` and the user's overrides with Hydra's compose
API, checks everything (one line, exit 2, nothing written), then:

1. opens the tracking store and the study's storage (`<folder of the SQLite store>/optuna.db`,
   or `search.storage` with a tracking server) and holds the study's lock for its whole life, so
   two searches never write into one study;
2. creates or resumes the study's parent run (tag `bpl.study`) and re-asks the trials a killed
   search left RUNNING (they become FAIL; the same parameters are enqueued again);
3. runs `search.jobs` workers (backprop_lab.search.trials.work) until the study holds
   `search.trials` trials;
4. writes the summary on the parent: the note (best trial with links, pruned trials, the epochs
   pruning saved), Optuna's figures, `search/trials.csv`, `search/*` metrics; the parent ends.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from backprop_lab.config.schema import ConfigError, UserError, semantic_dict, validate
from backprop_lab.search import space as space_mod
from backprop_lab.search import trials as trials_mod
from backprop_lab.search.space import SearchConfig
from backprop_lab.search.study import (
    DIVERGED_ATTR,
    EPOCHS_ATTR,
    STUDY_TAG,
    TRIAL_TAG,
    Plan,
    SearchBusy,
    compose,
    counted,
    file_lock,
    live,
    lock_dir_for,
    open_study,
    reask_stale,
    run_config,
    study_storage,
)

# --------------------------------------------------------------------------- composition


def load(argv: list[str], conf_dir: str) -> tuple[SearchConfig, Any, tuple[str, ...]]:
    """Parse `SPACE=... TRIALS=... JOBS=...` words and overrides; check everything, write nothing."""
    space, overrides = "default", []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in ("SPACE", "TRIALS", "JOBS"):
            if key == "SPACE":
                space = value
            else:
                overrides.append(f"search.{key.lower()}={value}")
        else:
            overrides.append(arg)
    spaces = sorted(p.stem for p in (Path(conf_dir) / "search").glob("*.yaml"))
    if space not in spaces:
        raise ConfigError("SPACE", space, f"no such search space; valid: {', '.join(spaces)}"
                          f" (conf/search/<space>.yaml)")
    overrides = [f"+search={space}", *overrides]
    cfg = compose(conf_dir, overrides)
    search = SearchConfig.from_config(cfg)
    rc = validate(run_config(cfg))
    # Every key the space draws must exist in the run config (a misspelt key: one line now).
    trial = _FirstChoice()
    values = space_mod.suggest(trial, search.params)
    validate(run_config(compose(conf_dir, [*overrides, *space_mod.overrides(values)])))
    return search, rc, tuple(overrides)


class _FirstChoice:
    """A stand-in trial drawing the lowest value of every range (to check a space composes)."""

    def suggest_int(self, name, low, high, log=False):
        return low

    def suggest_float(self, name, low, high, log=False):
        return low

    def suggest_categorical(self, name, choices):
        return choices[0]


# --------------------------------------------------------------------------- main


def main(argv: list[str], conf_dir: str, out=None) -> int:
    """The whole `make search`; returns the exit code (2: bad input, nothing written)."""
    out = out or sys.stdout
    try:
        search, rc, overrides = load(argv, conf_dir)
    except UserError as exc:
        print(f"search: {exc}", file=sys.stderr)
        return 2
    from backprop_lab.tracking import client as tracking

    try:
        uri, artifact_root = tracking.resolve_tracking(rc)
        storage = study_storage(search, uri)
        client = tracking.prepare_store(uri, artifact_root)
        experiment_id = tracking.ensure_experiment(client, rc.experiment_name, artifact_root)
    except ConfigError as exc:
        print(f"search: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        print(f"search: {exc}", file=sys.stderr)
        return 1
    base = semantic_dict(rc)
    base.pop("seed", None)  # the trials' seeds are search.seeds
    study_name = f"{search.space}-{search.identity(base)[:12]}"
    lock_dir = lock_dir_for(storage)
    Path(lock_dir).mkdir(parents=True, exist_ok=True)
    try:
        with file_lock(Path(lock_dir) / f"{study_name}.lock", blocking=False):
            return _search(search, rc, overrides, conf_dir, client, (uri, artifact_root), storage,
                           study_name, experiment_id, lock_dir, out)
    except SearchBusy as exc:
        print(exc, file=sys.stderr)
        return 1


def _search(search, rc, overrides, conf_dir, client, tracking_at, storage, study_name, experiment_id,
            lock_dir, out) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(storage, study_name)
    killed, failed = reask_stale(study)
    parent = _find_parent(client, experiment_id, study_name)
    if parent is None:
        parent_id = _create_parent(client, experiment_id, search, study_name, storage, rc)
    else:
        parent_id = parent.info.run_id
        client.update_run(parent_id, status="RUNNING")
    uri = tracking_at[0]
    plan = Plan(conf_dir, overrides, search, storage, study_name, experiment_id, parent_id,
                rc.train.epochs, lock_dir, *tracking_at)
    done = counted(study.get_trials(deepcopy=False))
    how = f"resumed parent {parent_id}" if parent is not None else f"new parent {parent_id}"
    if killed:
        how += f", {killed} trial(s) left RUNNING by a killed search re-asked"
    if failed:
        how += f", {failed} failed trial(s) re-asked"
    print(f"search {search.space}: {search.trials} trials ({done} done), {len(search.seeds)} seed(s) "
          f"each, {search.jobs} worker(s); study {study_name} in {storage}; {how}; "
          f"experiment {rc.experiment_name}; store {uri}", file=out, flush=True)
    try:
        if search.jobs == 1:
            trials_mod.work(plan, out=out)
        else:
            ctx = multiprocessing.get_context("spawn")
            with concurrent.futures.ProcessPoolExecutor(search.jobs, mp_context=ctx) as pool:
                for future in [pool.submit(trials_mod.work, plan) for _ in range(search.jobs)]:
                    future.result()
    except KeyboardInterrupt:
        client.set_terminated(parent_id, status="KILLED")
        raise
    return finish(client, plan, out)


def _find_parent(client: Any, experiment_id: str, study_name: str) -> Any:
    flt = f"tags.`bpl.role` = 'parent' and tags.`{STUDY_TAG}` = '{study_name}'"
    runs = client.search_runs([experiment_id], filter_string=flt, max_results=1,
                              order_by=["attributes.start_time ASC"])
    return runs[0] if runs else None


def _create_parent(client, experiment_id, search, study_name, storage, rc) -> str:
    from backprop_lab.tracking import client as tracking

    note = (f"Search space `{search.space}`: an Optuna study (seeded TPE, median pruning) of "
            f"{search.trials} trials, each a configuration trained on seeds {search.seeds}. "
            f"The summary is written here when the search ends. Study `{study_name}` in {storage}; "
            "running the same command again resumes it.")
    tags = {"bpl.role": "parent", "bpl.preset": f"search-{search.space}", STUDY_TAG: study_name,
            "bpl.study_storage": storage, "mlflow.note.content": note, **tracking.environment_tags()}
    name = f"search:{search.space} {time.strftime('%Y-%m-%d %H:%M:%S')}"
    return client.create_run(experiment_id, run_name=name, tags=tags).info.run_id


# --------------------------------------------------------------------------- the summary


def compute_saved(trials: list, full_epochs: int) -> tuple[int, int]:
    """(epochs trained, epochs pruning saved): a pruned trial saves what its seeds had left."""
    from optuna.trial import TrialState

    run = saved = 0
    for t in trials:
        used = int(t.user_attrs.get(EPOCHS_ATTR, 0))
        run += used
        if t.state == TrialState.PRUNED:
            saved += full_epochs - used
    return run, saved


def finish(client: Any, plan: Plan, out) -> int:
    """The parent's note, figures, table and metrics; the parent ends FINISHED."""
    from mlflow.entities import Metric, RunTag
    from optuna.trial import TrialState

    study = open_study(plan.storage, plan.study_name)
    trials = live(study.get_trials())
    n = {s: sum(t.state == s for t in trials) for s in (TrialState.COMPLETE, TrialState.PRUNED,
                                                          TrialState.FAIL)}
    n_diverged = sum(t.state == TrialState.FAIL and t.user_attrs.get(DIVERGED_ATTR, 0) > 0 for t in trials)
    n[TrialState.FAIL] -= n_diverged
    full = plan.epochs * len(plan.search.seeds)
    epochs_run, epochs_saved = compute_saved(trials, full)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = max(complete, key=lambda t: (t.value, -t.number)) if complete else None
    best_runs = _trial_runs(client, plan, best.number) if best else []
    link = f"#/experiments/{plan.experiment_id}/runs/"
    c, p, f = n[TrialState.COMPLETE], n[TrialState.PRUNED], n[TrialState.FAIL]
    lines = [f"**Search `{plan.search.space}`**: {len(trials)} trials, {c} complete, {p} pruned, "
             f"{n_diverged} diverged on every seed, {f} failed; each trial is one configuration "
             f"trained on seeds {plan.search.seeds} for {plan.epochs} epochs, scored by its mean "
             "final test accuracy (diverged seeds are not averaged)."]
    if best is not None:
        params = _params(best)
        runs = ", ".join(f"[seed {r.data.params.get('seed', '?')}]({link}{r.info.run_id})" for r in best_runs)
        lines.append(f"**Best: trial {best.number}** ({params}): mean test acc {best.value:.4f} "
                     f"over {len(plan.search.seeds)} seed(s), runs {runs or '-'}.")
    share = epochs_saved / (epochs_run + epochs_saved) if epochs_run + epochs_saved else 0.0
    lines.append(f"**Pruning**: {n[TrialState.PRUNED]} trials stopped early by the median pruner; "
                 f"{epochs_run} epochs trained, {epochs_saved} saved ({share:.0%} of the epochs the "
                 "same trials would have trained unpruned).")
    lines.append(f"Study `{plan.study_name}` in {plan.storage}. Figures: search/*.png; every trial: "
                 "search/trials.csv; child runs carry the tag bpl.trial.")
    note = "\n\n".join(lines)
    _log_figures(client, plan.parent_id, study)
    if trials:
        client.log_text(plan.parent_id, study.trials_dataframe().to_csv(index=False), "search/trials.csv")
    now = int(time.time() * 1000)
    metrics = {"search/n_trials": len(trials), "search/n_complete": n[TrialState.COMPLETE],
               "search/n_diverged": n_diverged,
               "search/n_pruned": n[TrialState.PRUNED], "search/n_failed": n[TrialState.FAIL],
               "search/epochs_run": epochs_run, "search/epochs_saved": epochs_saved}
    tags = {"mlflow.note.content": note}
    if best is not None:
        metrics["search/best_test_acc"] = best.value
        tags["bpl.best_trial"] = str(best.number)
        if best_runs:
            tags["bpl.best_child_run_id"] = best_runs[0].info.run_id
    client.log_batch(plan.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, v) for k, v in tags.items()], synchronous=True)
    client.set_terminated(plan.parent_id, status="FINISHED" if not n[TrialState.FAIL] else "FAILED")
    best_text = (f"; best trial {best.number} ({_params(best)}): mean test acc {best.value:.4f}"
                 if best else "")
    print(f"search {plan.search.space}: {len(trials)} trials: {n[TrialState.COMPLETE]} complete, "
          f"{n[TrialState.PRUNED]} pruned ({epochs_saved} of {epochs_run + epochs_saved} epochs saved), "
          f"{n[TrialState.FAIL]} failed{best_text}; parent run {plan.parent_id}", file=out, flush=True)
    return 1 if n[TrialState.FAIL] else 0


def _params(trial: Any) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items())


def _trial_runs(client: Any, plan: Plan, number: int) -> list:
    flt = (f"tags.`mlflow.parentRunId` = '{plan.parent_id}' and tags.`{TRIAL_TAG}` = '{number}'")
    runs = client.search_runs([plan.experiment_id], filter_string=flt, max_results=100)
    return sorted(runs, key=lambda r: int(r.data.params.get("seed", 0)))


def _log_figures(client: Any, run_id: str, study: Any) -> None:
    """Optuna's matplotlib figures; one that cannot be drawn (too few trials) is left out."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    figures = {"optimization_history": ovm.plot_optimization_history,
               "param_importances": ovm.plot_param_importances,
               "parallel_coordinate": ovm.plot_parallel_coordinate}
    for name, plot in figures.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ExperimentalWarning of optuna's matplotlib backend
            try:
                ax = plot(study)
            except (ValueError, RuntimeError):  # e.g. importances of fewer than two trials
                continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        fig.set_size_inches(8, 5)
        fig.tight_layout()
        client.log_figure(run_id, fig, f"search/{name}.png")
        plt.close(fig)


