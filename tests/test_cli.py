"""scripts/train.py as a user runs it: real subprocesses, real Hydra, a temporary SQLite store."""

import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from backprop_lab.config import schema as C
from backprop_lab.config.overrides import check_overrides
from conftest import clean_env

REPO = Path(__file__).resolve().parent.parent
TRAIN = str(REPO / "scripts" / "train.py")


@pytest.fixture(scope="session")
def cli_env(tmp_path_factory):
    env = clean_env()
    # Byte code: .venv is installed with `uv sync --compile-bytecode` (see the Makefile).
    return env


@pytest.fixture(scope="session")
def train_script():
    """scripts/train.py as a module (scripts/ is not a package): its precheck runs in-process."""
    spec = importlib.util.spec_from_file_location("bpl_train_script", TRAIN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train(tmp_path, env, *args, timeout=300):
    store = [f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
             f"tracking.artifact_root={tmp_path / 'store' / 'art'}"]
    flags = [a for a in args if a.startswith("-")]  # Hydra wants flags before the overrides
    overrides = [a for a in args if not a.startswith("-")]
    return subprocess.run([sys.executable, TRAIN, *flags, *store, *overrides], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_single_run_prints_one_line_and_logs_one_run(tmp_path, cli_env):
    proc = _train(tmp_path, cli_env, "train.epochs=10", "optim.lr=0.3")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lr=0.3") and "finished" in lines[0]
    client = MlflowClient(f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("backprop-lab/train")
    [run] = client.search_runs([exp.experiment_id])
    assert run.data.params["optim.lr"] == "0.3" and run.info.status == "FINISHED"
    assert not (tmp_path / "mlruns").exists()  # nothing dropped in the working directory


BAD = [
    ("optim.lr=-1", "optim.lr=-1: must be > 0"),
    ("optim.lr=0", "optim.lr=0: must be > 0"),
    ("optim.lr=abc", "optim.lr=abc: must be a number"),
    ("model.width=0", "model.width=0: must be >= 1"),
    ("model.hidden_sizes=[]", "model.hidden_sizes=[]: must be a non-empty list"),
    ("init=nope", "init=nope: no such option; valid: he"),
    ("optim=nope", "optim=nope: no such option; valid: adam"),
    ("data=nope", "data=nope: no such option; valid: blobs"),
    ("init.name=nope", "init.name=nope: must be one of: he"),
    ("optim.lrr=0.1", "optim.lrr=0.1: unknown key (did you mean optim.lr?); valid keys here: name, lr"),
    ("+optim.lrr=0.1", "optim.lrr=0.1: unknown key (misspelt?); valid keys here: name, lr"),
    ("init=hee", "init=hee: no such option (did you mean he?); valid: he"),
    ("data.test_fraction=1.5", "data.test_fraction=1.5: must be in (0, 1)"),
]


@pytest.mark.parametrize("override,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_input_one_line_nonzero_exit_store_untouched(tmp_path, capsys, train_script, override, expected):
    """In-process: the entry point's own check (scripts/train.py precheck, which runs before Hydra)."""
    store = [f"tracking.uri=sqlite:///{tmp_path / 'store' / 'mlflow.db'}",
             f"tracking.artifact_root={tmp_path / 'store' / 'art'}"]
    with pytest.raises(SystemExit) as info:
        train_script.precheck([*store, override])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert err.strip() == f"invalid config: {expected}" or (err.count("\n") == 1 and expected in err), err
    assert out == ""
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("override,expected", [
    ("init=hee", "invalid config: init=hee: no such option (did you mean he?); valid: he"),
    ("model.widht=3", "invalid config: model.widht=3: unknown key (did you mean model.width?)"),
    # what `make sweep JOBS=abc` would pass on (make refuses it first): not Hydra's five lines
    ("hydra.launcher.n_jobs=abc", "invalid config: hydra.launcher.n_jobs=abc: Value 'abc' of type 'str' "
                                  "could not be converted to Integer"),
])
def test_multirun_plain_override_checked_before_hydra(capsys, train_script, override, expected):
    """A non-swept override of a sweep is composed by Hydra before any sweeper runs: the entry
    point checks it first, so a typo ends in the same one line as in a single run (not Hydra's
    15-line 'Could not find' text); swept values are left to the sweeper."""
    with pytest.raises(SystemExit) as info:
        train_script.precheck(["--multirun", "+sweep=default", "optim.lr=0.1,1.0", override])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(expected), err
    assert train_script._swept("optim.lr=0.1,1.0") and train_script._swept("seed=range(0,3)")
    assert not train_script._swept("init=hee") and train_script._swept("hydra.sweep.dir=x")
    assert not train_script._swept("hydra.launcher.n_jobs=2")  # composed: the launcher's values


@pytest.mark.slow
def test_bad_input_through_the_real_entry_point_exits_2_in_one_line(tmp_path, cli_env):
    """One real interpreter: exit code 2, the one line on stderr, nothing on stdout, no store."""
    override, expected = BAD[0]
    proc = _train(tmp_path, cli_env, override)
    assert proc.returncode == 2
    assert proc.stderr == f"invalid config: {expected}\n", proc.stderr
    assert proc.stdout == ""
    assert not (tmp_path / "store").exists() and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("problem", ["unreachable server", "unwritable store path"])
def test_an_unusable_store_is_one_line_exit_1_before_hydra(tmp_path, capsys, train_script, problem):
    """In-process: the entry point's precheck of a single run's store (the real interpreter's
    exit 1 on a store: test_faults' broken store, test_serve's dead credentialed server)."""
    import socket

    if problem == "unreachable server":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        uri = named = f"http://127.0.0.1:{port}"
        expected = "not reachable"
    else:
        blocker = tmp_path / "a_file"
        blocker.write_text("")
        uri, named, expected = f"sqlite:///{blocker}/mlflow.db", str(blocker), "writable"
    t = time.perf_counter()
    with pytest.raises(SystemExit) as info:
        train_script.precheck([f"tracking.uri={uri}", f"tracking.artifact_root={tmp_path / 'art'}",
                               "train.epochs=2"])
    elapsed = time.perf_counter() - t
    out, err = capsys.readouterr()
    assert info.value.code == 1 and out == ""
    assert err.count("\n") == 1 and named in err and expected in err, err
    assert elapsed < 30  # the check itself takes < 3 s (test_tracking); no MLflow retries


# --------------------------------------------------------------------------- make train / make sweep


def _make(tmp_path, target, *variables, timeout=300):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAKE", "MFLAGS"))}
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), target, *variables], env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
@pytest.mark.parametrize("variable, expected", [
    ("JOBS=0", "JOBS=0: must be a positive integer (jobs at once; empty: one per core)"),
    ("JOBS=abc", "JOBS=abc: must be a positive integer (jobs at once; empty: one per core)"),
    ("LAUNCHER=nope", "LAUNCHER=nope: must be one of basic, ray, slurm"),
])
def test_make_sweep_checks_jobs_and_launcher_in_one_line(tmp_path, variable, expected):
    proc = _make(tmp_path, "sweep", variable, "DRY=1")
    assert proc.returncode == 2
    # The line, then make's own "*** [Makefile:NN: sweep] Error 2" (as for any failing target).
    assert proc.stderr.splitlines()[0] == expected and "Traceback" not in proc.stderr


@pytest.mark.slow
def test_make_sweep_args_with_parentheses_reach_hydra_intact(tmp_path):
    store = f"tracking.uri=sqlite:///{tmp_path / 'm.db'} hydra.sweep.dir={tmp_path / 'sweep'}"
    proc = _make(tmp_path, "sweep", "SWEEP=seeds", "DRY=1", f"ARGS=seed=range(0,3) model.width=2 {store}")
    assert proc.returncode == 0, proc.stderr
    listed = [ln for ln in proc.stdout.splitlines() if ln.startswith("[")]
    assert [ln.split()[1:3] for ln in listed] == [["width=2", f"seed={s}"] for s in range(3)]
    # A dry run on a new store: every job would run, each with its config key; nothing written.
    assert all(" run  | " in ln for ln in listed) and re.search(r"key [0-9a-f]{12}", listed[0])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "override,expected",
    [
        ("init=foo", "invalid config: init=foo: no such option; valid: he, he_lecun_output"),
        ("optim=foo", "invalid config: optim=foo: no such option; valid: adam, gd"),
        ("data=foo", "invalid config: data=foo: no such option; valid: blobs, circles"),
        ("optim.lrr=0.1", "invalid config: optim.lrr=0.1: unknown key (did you mean optim.lr?); valid keys "
                          "here: name, lr"),
        ("optim=adamm", "invalid config: optim=adamm: no such option (did you mean adam?); valid: adam, gd"),
        ("bogus=1", "invalid config: bogus=1: unknown key (misspelt?); valid keys here: data, model"),
        ("optim.lr=(", "invalid config: <command line>: Error parsing override 'optim.lr=('"),
    ],
)
def test_hydra_composition_errors_become_one_line(override, expected):
    with pytest.raises(C.ConfigError) as info:
        check_overrides(str(REPO / "conf"), [override])
    assert "\n" not in str(info.value) and expected in str(info.value)


def test_check_overrides_accepts_good_overrides():
    check_overrides(str(REPO / "conf"), ["optim=adam", "optim.lr=0.01", "model.width=4", "+sweep=default"])
