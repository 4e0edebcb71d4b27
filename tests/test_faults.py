"""Faults and bad input (issue 13): one line within seconds, a non-zero exit, nothing written.

Broken stores are real SQLite files built from one migrated MLflow schema (shared fixture) and
then damaged the way a disk, a typo or another program damages them. Bad values are composed
with Hydra and validated in-process; one subprocess per entry point proves exit code and output.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import random
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from backprop_lab import QUIET_ENV
from backprop_lab.config import schema
from backprop_lab.serve.store import ServeError, check_store
from backprop_lab.tracking import client as tracking
from backprop_lab.tracking import store as tracking_store

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, **QUIET_ENV}
ENV.pop("MLFLOW_TRACKING_URI", None)


# --------------------------------------------------------------------------- broken stores


def _drop(table: str):
    def make(db: Path, template: Path) -> None:
        shutil.copyfile(template, db)
        with sqlite3.connect(db) as con:
            con.execute(f"DROP TABLE {table}")
    return make


def _random_bytes(db: Path, template: Path) -> None:
    db.write_bytes(random.Random(0).randbytes(64 * 1024))


def _damaged_first_page(db: Path, template: Path) -> None:
    data = bytearray(template.read_bytes())
    data[100:4096] = random.Random(1).randbytes(3996)  # the schema b-tree after the 100-byte header
    db.write_bytes(bytes(data))


def _damaged_header(db: Path, template: Path) -> None:
    data = bytearray(template.read_bytes())
    data[0:100] = bytes(100)
    db.write_bytes(bytes(data))


def _foreign(db: Path, template: Path) -> None:
    with sqlite3.connect(db) as con:
        con.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, text TEXT)")
        con.execute("INSERT INTO notes (text) VALUES ('my shopping list')")


BROKEN = {
    "random_bytes": (_random_bytes, "is not a SQLite database"),
    "damaged_header": (_damaged_header, "is not a SQLite database"),
    "damaged_first_page": (_damaged_first_page, "damaged"),
    "no_latest_metrics": (_drop("latest_metrics"), "missing MLflow tables (latest_metrics)"),
    "no_runs": (_drop("runs"), "missing MLflow tables (runs)"),
    "no_alembic_version": (_drop("alembic_version"), "missing MLflow tables (alembic_version)"),
    "no_metrics": (_drop("metrics"), "missing MLflow tables (metrics)"),
    "no_tags": (_drop("tags"), "missing MLflow tables (tags)"),
    "foreign_notes": (_foreign, "not an MLflow store (its tables: notes)"),
}


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_store_is_refused_in_one_line_fast_and_left_untouched(tmp_path, mlflow_schema, kind):
    make, expected = BROKEN[kind]
    db = tmp_path / "mlflow.db"
    make(db, mlflow_schema)
    before = _snapshot(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(tracking.StoreError) as run_err:  # what make train / make sweep meet
        tracking.prepare_store(f"sqlite:///{db}", str(tmp_path / "mlartifacts"))
    with pytest.raises(ServeError) as ui_err:  # what make ui / make server meet
        check_store(f"sqlite:///{db}", str(tmp_path / "mlartifacts"))
    assert time.monotonic() - t0 < 3
    for err in (run_err, ui_err):
        assert expected in str(err.value) and str(db) in str(err.value) and "\n" not in str(err.value)
    assert "--store-uri" in str(ui_err.value) and "tracking.uri" in str(run_err.value)
    assert _snapshot(tmp_path) == before, "a refused store must not be written to"


def test_a_folder_as_store_is_refused_and_an_empty_sqlite_uri_names_no_file(tmp_path):
    with pytest.raises(tracking.StoreError, match="is a folder, not a file"):
        tracking.prepare_store(f"sqlite:///{tmp_path}", str(tmp_path / "art"))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(schema.ConfigError, match=r"tracking.uri=sqlite:///: names no file"):
        schema.validate(_compose(["tracking.uri=sqlite:///"]))


def test_mlflow_engine_retries_are_bounded():
    from mlflow.store.db import utils as db_utils

    assert tracking_store.bound_engine_retries() is True  # the private constant still exists
    assert db_utils.MAX_RETRY_COUNT == tracking_store.ENGINE_ATTEMPTS == 2


def test_train_and_ui_on_a_broken_store_end_in_one_line(tmp_path, mlflow_schema):
    """The real commands: exit code, one line of output, seconds, the file unchanged."""
    db = tmp_path / "mlflow.db"
    _random_bytes(db, mlflow_schema)
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    t0 = time.monotonic()
    train = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "train.py"), f"tracking.uri=sqlite:///{db}",
         f"tracking.artifact_root={tmp_path / 'art'}", "train.epochs=2"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    train_s = time.monotonic() - t0
    ui = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "serve.py"), "ui", "--store-uri", f"sqlite:///{db}",
         "--artifact-root", str(tmp_path / "art"), "--port", "1"],
        cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
    assert train.returncode == 1, train.stderr[-2000:]
    assert train.stderr.strip().count("\n") == 0 and "is not a SQLite database" in train.stderr
    assert ui.returncode == 2 and ui.stderr.strip().count("\n") == 0, ui.stderr[-2000:]
    assert "is not a SQLite database" in ui.stderr
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "art").exists(), "no artifact root is created for a refused store"
    assert not (tmp_path / "outputs").exists(), "refused before Hydra makes its outputs/ folder"
    assert train_s < 60, f"{train_s:.0f} s (MLflow's retries would take ~100 s)"


# --------------------------------------------------------------------------- a disk that fills


@contextlib.contextmanager
def _small_disk(folder: Path, size: int):
    """A real filesystem of `size` bytes at `folder` (a tmpfs), unmounted afterwards whatever happens.

    Skips, saying why, where mounting is refused (not root, a container without CAP_SYS_ADMIN).
    """
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip(f"disk-full test: mounting a {size >> 20} MiB tmpfs needs root (uid {os.geteuid()})")
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                           capture_output=True, text=True)
    if mount.returncode != 0:
        pytest.skip(f"disk-full test: `mount -t tmpfs` refused here ({mount.stderr.strip()})")
    try:
        yield folder
    finally:
        for _ in range(20):  # a process that just ended may still hold it for a moment
            if subprocess.run(["umount", str(folder)], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        else:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path) -> Path:
    """Write zeros into folder/hog until the disk refuses: what another program does to a disk.
    A disk that is full already (the sweep's own writes, e.g. a WAL not yet checkpointed) refuses
    the file itself: that is the same full disk."""
    hog = folder / "hog"
    with contextlib.suppress(OSError), open(hog, "wb") as f:
        while True:
            f.write(bytes(64 * 1024))
            f.flush()
    return hog


def _statuses(db: Path) -> list[tuple[str, str]]:
    """(role, status) of every run, read with plain sqlite3; [] while the store is being made."""
    try:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as con:
            return con.execute("SELECT t.value, r.status FROM runs r JOIN tags t ON t.run_uuid = "
                               "r.run_uuid WHERE t.key = 'bpl.role'").fetchall()
    except sqlite3.Error:
        return []


@pytest.mark.slow
def test_disk_full_mid_sweep_one_line_each_parent_ended_no_child_running(tmp_path):
    """A real sweep whose SQLite store and artifacts sit on a 16 MiB tmpfs that another program
    fills once the first child has finished: every job ends in one line, the sweep exits 1 with
    one line on stderr within seconds, and the store (read afterwards) has its parent FAILED and
    no run RUNNING. (The whole sweep takes ~4 MB, its WAL and disk reserve a few MB more: on
    8 MiB the sweep sometimes filled the disk itself before a child was seen FINISHED.) It takes
    the sweep's disk reserve (sweep/lock.py) to end the parent: without it this test left the
    parent RUNNING."""
    with _small_disk(tmp_path / "disk", 16 << 20) as disk:
        db = disk / "mlflow.db"
        cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", "optim.lr=0.1,0.2,0.3",
               "model.width=3,4", "train.epochs=50", "hydra.launcher.n_jobs=2",
               f"tracking.uri=sqlite:///{db}", f"tracking.artifact_root={disk / 'art'}",
               f"hydra.sweep.dir={tmp_path / 'multirun'}"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=ENV, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        started = time.monotonic()
        try:
            deadline = time.monotonic() + 300
            while ("child", "FINISHED") not in _statuses(db):
                assert proc.poll() is None and time.monotonic() < deadline, "no child finished"
                time.sleep(0.1)
            filled = time.monotonic()
            hog = _fill(disk)
            out, err = proc.communicate(timeout=300)
            seconds = time.monotonic() - filled
            print(f"first child FINISHED after {filled - started:.1f} s; full disk -> exit {seconds:.1f} s")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        hog.unlink(missing_ok=True)  # room again, to read the store as it was left
        statuses = _statuses(db)
        leftovers = sorted(p.name for p in disk.iterdir())

    assert proc.returncode == 1, err[-3000:]
    assert len(err.strip().splitlines()) == 1, err[-3000:]
    assert err.startswith("sweep: stopped, parent run ") and " ended FAILED: " in err, err
    assert "Traceback" not in out + err
    run_lines = [ln for ln in out.splitlines() if ln.startswith("[") and "/6] " in ln]
    assert sorted(ln[:5] for ln in run_lines) == [f"[{k}/6]" for k in range(1, 7)], out
    failed = [ln for ln in run_lines if " failed " in ln]
    full = re.compile("disk is full|disk holding it is full|No space left on device")
    assert failed and all(full.search(ln) for ln in failed), failed
    assert seconds < 60, f"{seconds:.0f} s from the full disk to the sweep's end"
    assert ("parent", "FAILED") in statuses and ("child", "FINISHED") in statuses
    assert all(status != "RUNNING" for _, status in statuses), statuses
    assert not [n for n in leftovers if n.endswith(".lock")], leftovers


# --------------------------------------------------------------------------- bad values


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=overrides)


BAD_VALUES = [
    (["optim.lr=inf"], "optim.lr=inf: must be a finite number"),
    (["optim.lr=1e400"], "optim.lr=inf: must be a finite number"),
    (["optim.lr=nan"], "optim.lr=nan: must be a finite number"),
    (["optim=adam", "optim.beta2=nan"], "optim.beta2=nan: must be a finite number"),
    (["data.noise=inf"], "data.noise=inf: must be a finite number"),
    (["train.epochs=1000000000000"], "train.epochs=1000000000000: must be <= 1_000_000"),
    (["model.depth=2000"], "model.depth=2000: must be <= 100"),
    (["model.depth=1000000000000"], "model.depth=1000000000000: must be <= 100"),
    (["+model.hidden_sizes=[" + ",".join(["2"] * 101) + "]"], "at most 100 hidden layers"),
    (["gradcheck.h=1e-300"], "gradcheck.h=1e-300: must be in [1e-10, 0.01]"),
    (["gradcheck.h=0.5"], "gradcheck.h=0.5: must be in [1e-10, 0.01]"),
    (["experiment_name=" + "x" * 501], "(501 characters): must be 1-500 characters"),
    (["experiment_name=../../x"], "experiment_name=../../x: no '..'"),
    (["experiment_name=a/../../b"], "no '..'"),
    (["experiment_name=/etc/x"], "leading '/'"),
    (["experiment_name="], "experiment_name='': must be 1-500 characters"),
    (["experiment_name=null"], "experiment_name=null: must be 1-500 characters"),
]


@pytest.mark.parametrize(("overrides", "expected"), BAD_VALUES, ids=[o[0][-1][:40] for o in BAD_VALUES])
def test_bad_value_is_one_line_naming_key_and_what_is_valid(overrides, expected):
    with pytest.raises(schema.ConfigError) as err:
        schema.validate(_compose(overrides))
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_limits_accept_their_edges():
    rc = schema.validate(_compose(["train.epochs=1000000", "model.depth=100", "gradcheck.h=1e-10",
                                   "experiment_name=" + "x" * 500, "experiment_name=a.b/c..d"]))
    assert rc.train.epochs == 1_000_000 and len(rc.model.hidden_sizes) == 100
    assert schema.validate(_compose(["gradcheck.h=0.01"])).gradcheck.h == 0.01


def test_experiment_name_limit_is_mlflows_own():
    from mlflow.utils.validation import MAX_EXPERIMENT_NAME_LENGTH

    assert schema.MAX_EXPERIMENT_NAME_LENGTH == MAX_EXPERIMENT_NAME_LENGTH


@pytest.mark.parametrize(("override", "expected"), [
    ("optim.lr=０.１", "optim.lr=０.１: non-ASCII character '０' (fullwidth digit zero); type ASCII digits"),
    ("model.width=１6", "model.width=１6: non-ASCII character '１'"),
    ("experiment_name=run😀", "experiment_name=run😀: non-ASCII character '😀' (grinning face); use ASCII"),
    ("optim.lr=0.1,０.２", "optim.lr=0.1,０.２: non-ASCII character '０'"),
])
def test_non_ascii_override_is_one_line_naming_the_key(override, expected):
    with pytest.raises(schema.ConfigError) as err:
        schema.check_ascii(["init=he", override])
    assert str(err.value) == f"invalid config: {expected}" or expected in str(err.value)
    schema.check_ascii(["experiment_name='résumé'", "optim.lr=0.1"])  # quoted text is Hydra's


def test_non_ascii_digits_on_the_command_line_exit_2_in_one_line(tmp_path):
    for argv in (["optim.lr=０.１"], ["--multirun", "optim.lr=0.1,０.２"]):
        proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *argv,
                               f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"],
                              cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().count("\n") == 0 and "type ASCII digits" in proc.stderr
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- credentials


def test_credentials_are_redacted_in_every_user_error():
    uri = "http://alice:s3cret@127.0.0.1:1"
    assert schema.redact(f"see {uri}/api and https://bob:pw@h") == \
        "see http://***@127.0.0.1:1/api and https://***@h"
    assert "s3cret" not in str(schema.UserError(f"tracking store {uri} is down"))
    with pytest.raises(tracking.StoreError) as err:
        tracking.check_server(uri, timeout=1)
    assert "s3cret" not in str(err.value) and "http://***@127.0.0.1:1" in str(err.value)
    assert "Connection refused" in str(err.value), "the check must reach 127.0.0.1:1, not 'alice'"
    assert ServeError(f"store {uri} down").args[0] == "store http://***@127.0.0.1:1 down"


def test_health_request_strips_credentials_into_a_basic_auth_header(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    req = tracking_store.health_request("https://alice:p%40ss@example.org:8443/prefix/")
    assert req.full_url == "https://example.org:8443/prefix/health"
    assert req.get_header("Authorization") == "Basic YWxpY2U6cEBzcw=="  # alice:p@ss
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "carol")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "pw")
    req = tracking_store.health_request("http://127.0.0.1:5001")
    assert req.full_url == "http://127.0.0.1:5001/health"
    assert req.get_header("Authorization") == "Basic Y2Fyb2w6cHc="  # MLflow's variables win


# A real run into a tracking server through a URI with a password, and the same URI once the
# server is gone: test_serve.py's `make server` test (one server start for both).


# --------------------------------------------------------------------------- reproduce


def test_logging_and_reproduce_round_with_one_function():
    # The first three were rounded differently by a decimal round_sig and the array version.
    values = [6.094230320955163e-153, 1.553607188014256e-309, 1.9835950676583318e+186,
              1.2345678901e12, 0.123456789, 0.0]
    logged = tracking.round_sig_array(values)
    assert [tracking.round_sig(v) for v in values] == list(logged)
    batch = tracking.metric_batch([("x", range(len(values)), values)], 0)
    assert [m.value for m in batch] == list(logged)


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory, mlflow_schema):
    """A real single run whose loss passes 1e10 before it diverges (values the old rounding broke)."""
    from backprop_lab.tracking.run import run

    folder = tmp_path_factory.mktemp("repro")
    cfg = _compose([f"tracking.uri=sqlite:///{folder / 'mlflow.db'}",
                    f"tracking.artifact_root={folder / 'art'}", "optim.lr=100", "train.epochs=150",
                    "gradcheck.enabled=false"])
    summary = run(cfg, out=io.StringIO())
    assert summary.status == "diverged", summary
    return folder, summary.run_id


def test_reproduce_matches_a_run_with_huge_logged_values(diverged_run):
    folder, run_id = diverged_run
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    client = tracking.MlflowClient(uri)
    values = [m.value for m in client.get_metric_history(run_id, "train/loss")]
    assert max(values) > 1e10, "the run should log values where the two roundings disagreed"
    repro = _reproduce_module()
    out = io.StringIO()
    assert repro.reproduce(run_id, uri, out=out) == 0, out.getvalue()
    assert f"MATCH: run {run_id}" in out.getvalue()


def test_reproduce_names_a_missing_artifact(diverged_run, tmp_path):
    folder, run_id = diverged_run
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    art = Path(tracking.MlflowClient(uri).get_run(run_id).info.artifact_uri.removeprefix("file://"))
    backup = tmp_path / "backup"
    shutil.move(art, backup)
    try:
        repro = _reproduce_module()
        with pytest.raises(repro.ReproduceError) as err:
            repro.reproduce(run_id, uri, out=io.StringIO())
    finally:
        shutil.move(backup, art)
    msg = str(err.value)
    assert "artifact config/config.yaml is missing" in msg and "status" not in msg and "\n" not in msg


def _reproduce_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bpl_reproduce", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
