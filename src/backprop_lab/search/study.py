"""A study's plumbing shared by its owner and its workers: the plan, storage, locks, counting.

`Plan` is what the owner hands each worker; `open_study` opens the Optuna study in its storage
(SQLite beside the tracking store, or an RDB URL); `file_lock` serialises asking (JOBS=N workers)
and keeps a second search out of a study; `reask_stale` and `counted` make a killed search resume
where it stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backprop_lab.config.schema import ConfigError, UserError
from backprop_lab.search.space import SearchConfig

STUDY_TAG = "bpl.study"
TRIAL_TAG = "bpl.trial"
RETRY_ATTR = "bpl.retry_of"  # user attr of a re-asked trial: the numbers of the trials it repeats
EPOCHS_ATTR = "bpl.epochs_run"  # user attr: epochs trained by the trial, over all its seeds
DIVERGED_ATTR = "bpl.n_diverged"  # user attr: seeds that diverged (a trial whose seeds all did: FAIL)


class SearchBusy(UserError):
    """Another search holds the study; `str()` is one line."""


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs (picklable: workers may be other processes)."""

    conf_dir: str
    overrides: tuple[str, ...]  # +search=<space> and the user's overrides
    search: SearchConfig
    storage: str
    study_name: str
    experiment_id: str
    parent_id: str
    epochs: int
    lock_dir: str
    tracking_uri: str
    artifact_root: str | None


# --------------------------------------------------------------------------- composition


def compose(conf_dir: str, overrides: list[str]) -> Any:
    """The composed config (DictConfig) of `overrides`; Hydra's errors as one ConfigError."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from backprop_lab.config.overrides import check_overrides

    if GlobalHydra.instance().is_initialized():  # a worker: overrides the owner checked
        return hydra_compose("config", overrides=overrides)
    check_overrides(conf_dir, overrides)  # one line for an unknown space, option or key
    with initialize_config_dir(config_dir=conf_dir, version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def run_config(cfg: Any) -> Any:
    """The run's config: the composed config minus the study's own `search:` node."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("search", None)
    return data


def study_storage(search: SearchConfig, uri: str) -> str:
    if search.storage:
        return search.storage
    if not uri.startswith("sqlite:///"):
        raise ConfigError("search.storage", None, "a tracking server needs an RDB URL for the study "
                          "(e.g. search.storage=postgresql://user@host/optuna or sqlite:////shared/optuna.db)")
    return f"sqlite:///{Path(uri.removeprefix('sqlite:///')).parent / 'optuna.db'}"


def lock_dir_for(storage: str) -> str:
    if storage.startswith("sqlite:///"):
        return str(Path(storage.removeprefix("sqlite:///")).parent)
    return tempfile.gettempdir()  # one machine's workers; see docs/search.md


@contextlib.contextmanager
def file_lock(path: Path, blocking: bool = True):
    """An OS lock (dropped by the kernel when the holder dies, even by SIGKILL)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise SearchBusy(f"search: the study is in use by {holder} (lock {path}); wait for it "
                             "to end, or change search.seed for a separate study") from None
        if not blocking:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}".encode(), 0)
        yield
    finally:
        os.close(fd)


def open_study(storage: str, name: str, sampler=None, pruner=None) -> Any:
    import optuna

    rdb = optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}}
                                     if storage.startswith("sqlite") else None)
    return optuna.create_study(storage=rdb, study_name=name, direction="maximize",
                               load_if_exists=True, sampler=sampler, pruner=pruner)


def reask_stale(study: Any) -> tuple[int, int]:
    """Trials left RUNNING by a dead search become FAIL; they and the trials that failed with an
    error (not those whose every seed diverged) are enqueued again with the same params.
    Returns (killed, failed) counts."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.user_attrs.get(RETRY_ATTR, [])}
    stale = [t for t in trials if t.state == TrialState.RUNNING]
    failed = [t for t in trials if t.state == TrialState.FAIL and t.number not in retried
              and not t.user_attrs.get(DIVERGED_ATTR)]
    for t in stale:
        study.tell(t.number, state=TrialState.FAIL)
    for t in [*stale, *failed]:
        study.enqueue_trial(t.params, user_attrs={RETRY_ATTR: [*t.user_attrs.get(RETRY_ATTR, []), t.number]})
    return len(stale), len(failed)


def live(trials: list) -> list:
    """The study's trials as the search counts them: all but enqueued ones and the trials of a
    killed search that were re-asked (their repeats stand for them)."""
    from optuna.trial import TrialState

    retried = {n for t in trials for n in t.user_attrs.get(RETRY_ATTR, [])}
    return [t for t in trials if t.state != TrialState.WAITING and t.number not in retried]


def counted(trials: list) -> int:
    """How many trials count toward `search.trials`."""
    return len(live(trials))
