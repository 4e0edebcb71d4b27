"""Shared test set-up: telemetry off, marker gating, and `tiny_sweep`: one real sweep per session."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from backprop_lab.env import QUIET_ENV, set_quiet_env

set_quiet_env()  # before any test module imports mlflow (importing backprop_lab did it too)


# `make test` runs on every core (pytest-xdist, --dist loadgroup); tests of one xdist_group run
# on one worker. Grouped here: the users of a module-scoped fixture (one module: the fixture is
# built once, e.g. the browser module's sweep and UI server, the search study, the executed
# notebooks), the users of a session store they re-run or hash (tiny_sweep: never at the same
# time), and the distributed tests (one cluster at a time). tiny_store is shared by a file lock.
SESSION_GROUPS = {"tiny_sweep": "tiny_sweep"}


def xdist_groups(item) -> set[str]:
    groups = {SESSION_GROUPS[name] for name in SESSION_GROUPS.keys() & set(getattr(item, "fixturenames", ()))}
    info = getattr(item, "_fixtureinfo", None)  # pytest's; without it a module is not grouped
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        if defs and defs[-1].scope == "module":
            groups.add(item.path.name)
    if "distributed" in item.keywords:
        groups.add("distributed")
    return groups


# pytest-xdist 3.8 puts a test's group into its id (`item._nodeid`), which pytest 9.2 no longer
# reads (nodeids are structured now): its loadgroup would split every group. So the workers write
# the groups they collected to a file the controller named, and the controller's scheduler
# (xdist's public hook) reads them. Without xdist the marks are only marks.
GROUPS_ENV = "BPL_XDIST_GROUPS"


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        folder = Path(tempfile.mkdtemp(prefix="bpl-xdist-"))
        os.environ[GROUPS_ENV] = str(folder / "groups.json")  # the workers start after this
    if config.pluginmanager.hasplugin("xdist"):  # its hook is unknown under -p no:xdist
        config.pluginmanager.register(FileGroupsPlugin(), "bpl-xdist-groups")


@pytest.hookimpl(wrapper=True)  # before every plain hook, xdist's own included
def pytest_collection_modifyitems(config, items):
    grouped = {}
    for item in items:
        groups = xdist_groups(item)
        for group in groups:
            item.add_marker(pytest.mark.xdist_group(group))
        if groups:
            grouped[item.nodeid] = "_".join(sorted(groups))
    if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(GROUPS_ENV):
        target = Path(os.environ[GROUPS_ENV])
        tmp = target.with_name(f"{os.environ['PYTEST_XDIST_WORKER']}.json")
        tmp.write_text(json.dumps(grouped))
        tmp.replace(target)  # every worker collects the same tests: same content
    if os.environ.get("BPL_DISTRIBUTED", "0") != "1":
        skip = pytest.mark.skip(reason="distributed test: run with `make test DISTRIBUTED=1`")
        for item in items:
            if "distributed" in item.keywords:
                item.add_marker(skip)
    result = yield
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # Longest first: xdist hands out the groups (most tests first) and then the single tests
        # in this order; a slow test left for last keeps one worker busy while the other idles.
        # Every worker sorts alike (a stable sort of the same collection); without xdist the
        # file order stays (module fixtures are built once per module).
        items.sort(key=lambda item: "slow" not in item.keywords)
    return result


def pytest_unconfigure(config):
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        groups = os.environ.pop(GROUPS_ENV, None)
        if groups:
            shutil.rmtree(Path(groups).parent, ignore_errors=True)


class FileGroupsPlugin:
    @staticmethod
    def pytest_xdist_make_scheduler(config, log):
        if config.getvalue("dist") != "loadgroup":
            return None
        from xdist.scheduler import LoadGroupScheduling

        class FileGroups(LoadGroupScheduling):
            """loadgroup with the groups the workers wrote (read once, after collection)."""

            groups: dict[str, str] | None = None

            def _split_scope(self, nodeid: str) -> str:
                if self.groups is None:
                    path = Path(os.environ.get(GROUPS_ENV, "/nonexistent"))
                    self.groups = json.loads(path.read_text()) if path.is_file() else {}
                return self.groups.get(nodeid) or super()._split_scope(nodeid)

        return FileGroups(config, log)


# --------------------------------------------------------------------------- one real tiny sweep


def session_dir(tmp_path_factory) -> Path:
    """The temp folder of the whole test session: shared by every pytest-xdist worker (each
    worker's own base temp is a subfolder of it); the base temp itself without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class TinySweep:
    """A finished tiny sweep (see `tiny_sweep`): where it wrote and what it printed."""

    root: Path  # tmp folder: mlflow.db, art/ (artifacts), multirun/ (Hydra's job folders)
    args: tuple[str, ...]  # scripts/train.py arguments of the sweep (store and sweep dir included)
    experiment: str
    returncode: int
    stdout: str
    stderr: str

    @property
    def uri(self) -> str:
        return f"sqlite:///{self.root / 'mlflow.db'}"

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(self.uri)

    def runs(self, flt: str = ""):
        client = self.client()
        experiment = client.get_experiment_by_name(self.experiment)
        return client.search_runs([experiment.experiment_id], flt, max_results=1000)


TINY_EPOCHS = 30
# init x lr x seed at width 3 on moons (the default preset's data): 8 jobs, 2 seeds per config.
# lr=1e10 makes both of its configs diverge (a non-finite loss after ~17 epochs, status
# "diverged"); lr=1.0 finishes. `train.epochs` is a user override, so it is in every run name.
TINY_GRID = ("init=he,xavier", "optim.lr=1.0,1e10", "seed=0,1", "model.width=3")


def train_command(root: Path, *args: str) -> list[str]:
    """scripts/train.py with its store and sweep dir under `root`."""
    return [sys.executable, str(REPO / "scripts" / "train.py"), *args,
            f"tracking.uri=sqlite:///{root / 'mlflow.db'}", f"tracking.artifact_root={root / 'art'}",
            f"hydra.sweep.dir={root / 'multirun'}"]


def sigint_state(pid: int) -> str:
    """How process `pid` takes SIGINT, from /proc (ignored / blocked / caught / default): said
    by the Ctrl-C tests when a process does not end, so a failure names its cause."""
    try:
        fields = dict(line.split(":\t", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                      if ":\t" in line)
    except OSError:
        return f"pid {pid}: gone"
    bit = 1 << 1  # SIGINT = 2
    how = [name for name, key in (("ignored", "SigIgn"), ("blocked", "SigBlk"), ("caught", "SigCgt"))
           if int(fields.get(key, "0"), 16) & bit]
    return f"pid {pid} ({fields.get('State', '?').strip()}): SIGINT {'/'.join(how) or 'default'}"


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "MLFLOW_TRACKING_URI")}
    env.update(QUIET_ENV)
    return env


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> TinySweep:
    """`make sweep` shrunk: the real command line (`scripts/train.py --multirun +sweep=default
    init=he,xavier optim.lr=1.0,1e10 seed=0,1 model.width=3 train.epochs=30`) into a fresh SQLite
    store, once per session. 8 jobs under one parent (experiment backprop-lab/default): 4
    finished (lr=1.0), 4 diverged (lr=1e10), none failed. Read it; do not write into it (other
    tests share it); re-running `args` resumes it (everything skipped)."""
    root = tmp_path_factory.mktemp("tiny_sweep")
    # The default (forked) launcher with two workers, as `make sweep` runs on this machine: its
    # workers' rows once went missing from a WAL store (SQLite connections crossing the fork);
    # test_sweep's "every child linked" counts them.
    args = ("--multirun", "+sweep=default", *TINY_GRID, f"train.epochs={TINY_EPOCHS}",
            "hydra.launcher.n_jobs=2")
    done = subprocess.run(train_command(root, *args), cwd=root, env=clean_env(), capture_output=True,
                          text=True, timeout=900)
    return TinySweep(root, tuple(train_command(root, *args)[2:]), "backprop-lab/default",
                     done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="session", autouse=True)
def shared_store_started(request, tmp_path_factory):
    """The build of tests/analysis_store.py's shared store starts with the session's first test
    (on every xdist worker: the first one starts it), not when its first reader asks for it: its
    sweeps run beside other tests instead of while a reader's worker waits for them."""
    from analysis_store import start_store

    start_store(tmp_path_factory, request.session)


# --------------------------------------------------------------------------- a migrated empty store


@pytest.fixture(scope="session")
def mlflow_schema():
    """An empty, migrated MLflow SQLite store of this MLflow version (tracking/store.py builds it
    once per machine and caches it): tests copy it and never run MLflow's ~60 migrations again."""
    from backprop_lab.tracking import store

    template = store._schema_template()
    assert template is not None and template.is_file()
    return template


@pytest.fixture
def empty_store(tmp_path, mlflow_schema) -> str:
    """The URI of an empty MLflow SQLite store in tmp_path, made by the project's own
    prepare_store (a copy of `mlflow_schema`, its Default experiment pointed at tmp_path/art)."""
    from backprop_lab.tracking import store

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    store.prepare_store(uri, str(tmp_path / "art"))
    return uri
