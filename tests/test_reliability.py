"""Reliability of sweeps (issue 5): divergence and failure isolation, parallel workers on a fresh
store, resume after SIGKILL, bit-identical reruns, reproduce.py. Real SQLite stores in tmp_path,
the real command line, real worker processes and real signals; nothing is mocked.

The failing job is a config that validates but cannot train: a hidden layer of 10**12 units
(numpy raises MemoryError when the weights are allocated), the kind of typo a user makes.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from test_sweep import ENV, REPO, client_for, run_sweep, runs_of, store_args, sweep_in_process

pytestmark = pytest.mark.slow
HUGE = "1000000000000"
# Fresh-store parallel sweeps per worker count: one in the suite; raise it to hunt races
# (BPL_PARALLEL_REPEATS=10, each repeat costs ~1 min).
REPEATS = int(os.environ.get("BPL_PARALLEL_REPEATS", "1"))


def children(client, experiment: str, parent_id: str):
    return runs_of(client, experiment, f"tags.`mlflow.parentRunId` = '{parent_id}'")


def only_parent(client, experiment: str):
    parents = runs_of(client, experiment, "tags.`bpl.role` = 'parent'")
    assert len(parents) == 1, [p.info.run_name for p in parents]
    return parents[0]


def test_diverged_and_failed_jobs_do_not_stop_the_sweep(tmp_path):
    result = run_sweep(tmp_path, "optim.lr=0.1,100", f"model.width=10,{HUGE}", "train.epochs=150")
    assert result.returncode == 1, result.stderr[-2000:]
    assert "sweep custom: 4 jobs: 1 finished, 1 diverged, 2 failed, 0 skipped" in result.stdout

    client = client_for(tmp_path)
    parent = only_parent(client, "backprop-lab/train")
    assert parent.info.status == "FAILED"
    runs = {(c.data.params["optim.lr"], c.data.params["model.width"]): c
            for c in children(client, "backprop-lab/train", parent.info.run_id)}
    assert len(runs) == 4

    ok, diverged = runs[("0.1", "10")], runs[("100.0", "10")]
    assert ok.info.status == "FINISHED" and ok.data.tags["bpl.status"] == "finished"
    assert diverged.info.status == "FINISHED" and diverged.data.tags["bpl.status"] == "diverged"
    epoch = int(diverged.data.tags["bpl.diverged_epoch"])
    assert 0 < epoch < 150
    assert all(math.isfinite(v) for v in diverged.data.metrics.values())
    losses = client.get_metric_history(diverged.info.run_id, "train/loss")
    assert losses and all(math.isfinite(m.value) for m in losses)
    assert max(m.step for m in losses) <= epoch

    for lr in ("0.1", "100.0"):
        failed = runs[(lr, HUGE)]
        assert failed.info.status == "FAILED" and failed.data.tags["bpl.status"] == "failed"
        path = client.download_artifacts(failed.info.run_id, "error/traceback.txt", str(tmp_path))
        assert "MemoryError" in Path(path).read_text()
        # The exit message lists every failed job by run id.
        assert failed.info.run_id in result.stderr
    assert "sweep: 2 job(s) failed:" in result.stderr


def _by_key(folder: Path, experiment: str):
    client = client_for(folder)
    kids = runs_of(client, experiment, "tags.`bpl.role` = 'child'")
    return client, {k.data.tags["bpl.config_key"]: k for k in kids}


def _assert_bit_identical(ca, ra, cb, rb, where: Path) -> None:
    """Two runs of one config: the same history.npz bytes, params, final metrics and histories."""
    for name in ("history.npz", "params.npz"):
        pa = Path(ca.download_artifacts(ra.info.run_id, name, str(where / "a" / ra.info.run_id)))
        pb = Path(cb.download_artifacts(rb.info.run_id, name, str(where / "b" / rb.info.run_id)))
        if name == "history.npz":  # written with fixed member dates: same history, same bytes
            assert pa.read_bytes() == pb.read_bytes()
        with np.load(pa) as xa, np.load(pb) as xb:
            assert xa.files == xb.files and all(np.array_equal(xa[k], xb[k]) for k in xa.files)
    finals = [{k: v for k, v in r.data.metrics.items() if not k.startswith("time/")} for r in (ra, rb)]
    assert finals[0] == finals[1] and finals[0]
    for metric in ("train/loss", "test/acc", "grad_norm/W1"):
        ha = [(m.step, m.value) for m in ca.get_metric_history(ra.info.run_id, metric)]
        hb = [(m.step, m.value) for m in cb.get_metric_history(rb.info.run_id, metric)]
        assert sorted(ha) == sorted(hb) and len(ha) == EPOCHS


EPOCHS = 10
# Adam: its moment estimates are state the workers must carry exactly too.
GRID = ["+sweep=default", "init=he", "seed=0", "optim=adam", "optim.lr=0.01,0.05", f"train.epochs={EPOCHS}"]


# Two writers race on the fresh store (the schema, the experiment, the parent) as well as four did
# (BPL_PARALLEL_JOBS=4 for more writers than cores); each joblib worker is an interpreter importing
# MLflow and Hydra (~5 s of CPU), so the suite starts two.
@pytest.mark.parametrize("n_jobs", [int(os.environ.get("BPL_PARALLEL_JOBS", "2"))])
def test_parallel_workers_on_a_fresh_store_bit_identical_to_one_process_and_reproduce_matches(
        tmp_path, capsys, n_jobs):
    """joblib's workers on a fresh store (repeated: BPL_PARALLEL_REPEATS): every run in the right
    experiment under the one parent. Then the same configs in one process (n_jobs=1: the
    sweeper and launcher in this process) and with the real command line on the project's forked
    workers (n_jobs=2: job 0 in the driver, job 1 in a worker): the same histories, weights and
    final metrics whatever the launcher (issue 14); reproduce.py re-runs one and matches."""
    widths = ",".join(str(w) for w in range(2, 2 + n_jobs))
    for attempt in range(REPEATS):
        folder = tmp_path / f"attempt{attempt}"
        folder.mkdir()
        result = run_sweep(folder, *GRID, f"model.width={widths}",
                           "hydra/launcher=joblib", f"hydra.launcher.n_jobs={n_jobs}")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "Traceback" not in result.stderr and "OperationalError" not in result.stderr
        client = client_for(folder)
        everything = client.search_runs(
            [e.experiment_id for e in client.search_experiments()], "", max_results=1000)
        assert {r.info.experiment_id for r in everything} == {
            client.get_experiment_by_name("backprop-lab/default").experiment_id}
        parent = only_parent(client, "backprop-lab/default")
        kids = children(client, "backprop-lab/default", parent.info.run_id)
        assert len(everything) == 1 + 2 * n_jobs and len(kids) == 2 * n_jobs
        assert len({k.data.tags["bpl.config_key"] for k in kids}) == 2 * n_jobs
        assert {k.info.status for k in kids} == {"FINISHED"} and parent.info.status == "FINISHED"

    # Two of joblib's configs (width 2, both rates) again, with the project's launcher.
    cj, joblib = _by_key(tmp_path / "attempt0", "backprop-lab/default")
    (tmp_path / "one").mkdir()
    done = sweep_in_process(*GRID, "model.width=2", "hydra.launcher.n_jobs=1", *store_args(tmp_path / "one"))
    assert [s.status for s in done] == ["finished"] * 2, done
    (tmp_path / "forked").mkdir()
    (tmp_path / "forked" / "tmp").mkdir()  # the sweep's temporary files (TMPDIR): none left after it
    forked = run_sweep(tmp_path / "forked", *GRID, "model.width=2", "hydra.launcher.n_jobs=2",
                       env={**ENV, "TMPDIR": str(tmp_path / "forked" / "tmp")})
    assert forked.returncode == 0, forked.stderr[-2000:]
    assert not any((tmp_path / "forked" / "tmp").iterdir())
    # Which path ran: the forked sweep's jobs were computed ahead while its driver started
    # (sweep/ahead.py names the file in the job's config), joblib's were not (its jobs may run
    # elsewhere): comparing the two compares a logged compute-ahead with a run's own compute.
    def ahead(folder: Path) -> int:
        jobs = folder.glob("multirun/*/.hydra/overrides.yaml")
        return sum("sweep.computed=" in f.read_text() for f in jobs)
    assert ahead(tmp_path / "attempt0") == 0
    # sweep.ahead uses the cores the driver leaves idle: none on a one-core machine.
    assert ahead(tmp_path / "forked") >= 1 or (os.cpu_count() or 1) < 2
    ca, one = _by_key(tmp_path / "one", "backprop-lab/default")
    assert len(one) == 2 and set(one) <= set(joblib)
    for other in ("forked", "joblib"):
        cb, b = (cj, joblib) if other == "joblib" else _by_key(tmp_path / other, "backprop-lab/default")
        for key in one:
            _assert_bit_identical(ca, one[key], cb, b[key], tmp_path / other)

    # reproduce.py's main() in-process (its own interpreter: test_reproduce_unknown_run...).
    run_id = joblib[next(iter(one))].info.run_id
    uri = f"sqlite:///{tmp_path / 'attempt0' / 'mlflow.db'}"
    assert _reproduce_module().main([run_id, "--tracking-uri", uri]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"MATCH: run {run_id}")


def _session_processes(sid: int) -> list[int]:
    """Live processes of session `sid` (the sweep's driver, its forks)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(stat.parent.name))
    return pids


def test_a_driver_killed_while_jobs_are_computed_ahead_leaves_no_process_nor_file(tmp_path):
    """SIGKILL to the driver while sweep.ahead computes jobs (no finally runs in the driver): the
    process computing ahead stops before its next job and removes its temporary folder."""
    if (os.cpu_count() or 1) < 2:
        pytest.skip("sweep.ahead computes on the cores the driver leaves idle: this machine has one")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", "+sweep=default", "init=he",
           "seed=0,1,2", "model.width=2,4", "optim.lr=0.1,1.0", "train.epochs=300", *store_args(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**ENV, "TMPDIR": str(tmp)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp.glob("bpl-ahead-*/*.pkl")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None and list(tmp.glob("bpl-ahead-*/*.pkl")), "no job computed ahead"
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone
        proc.wait()
        deadline = time.monotonic() + 60
        while (_session_processes(proc.pid) or list(tmp.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _session_processes(proc.pid) and not list(tmp.iterdir())
    finally:
        for pid in _session_processes(proc.pid):
            os.kill(pid, signal.SIGKILL)


def test_resume_after_sigkill_skips_finished_kills_running_and_force_reruns(tmp_path, capfd):
    # Short runs: the sweep (driver and workers) is frozen (SIGSTOP) while the store is looked at,
    # and killed only while a child is RUNNING after two finished; else it goes on (SIGCONT). A
    # look timed by a sleep alone needed runs of ~1 s of CPU (500 epochs) to catch one RUNNING.
    args = ["+sweep=default", "init=he", "seed=0", "optim.lr=0.05,0.1,0.2", "model.width=16,24",
            "train.epochs=100"]
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", *args,
           *store_args(tmp_path)]
    (tmp_path / "tmp").mkdir()  # what a SIGKILL leaves of the sweep's temporary files: not in /tmp
    proc = subprocess.Popen(cmd, cwd=tmp_path, env={**ENV, "TMPDIR": str(tmp_path / "tmp")},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    db = tmp_path / "mlflow.db"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
            try:
                os.killpg(proc.pid, signal.SIGSTOP)
            except ProcessLookupError:  # the sweep ended between the poll and the signal
                continue
            states = _child_states(db)
            if states.count("FINISHED") >= 2 and "RUNNING" in states:
                os.killpg(proc.pid, signal.SIGKILL)
                break
            os.killpg(proc.pid, signal.SIGCONT)
        else:
            pytest.fail("the sweep ended before it could be killed mid-run")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    client = client_for(tmp_path)
    parent = only_parent(client, "backprop-lab/default")
    before = children(client, "backprop-lab/default", parent.info.run_id)
    n_done = sum(c.info.status == "FINISHED" for c in before)
    running = [c.info.run_id for c in before if c.info.status == "RUNNING"]
    # One worker per core by default: as many jobs as workers may be RUNNING at the kill.
    assert parent.info.status == "RUNNING" and 1 <= len(running) <= (os.cpu_count() or 1)
    assert 2 <= n_done and n_done + len(running) <= 6

    again = run_sweep(tmp_path, *args)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (f"6 jobs, {n_done} already finished -> will be skipped; resumed parent "
            f"{parent.info.run_id}, {len(running)} run(s) left RUNNING by a crash marked KILLED"
            ) in again.stdout
    assert f"{6 - n_done} finished, 0 diverged, 0 failed, {n_done} skipped" in again.stdout
    assert only_parent(client, "backprop-lab/default").info.status == "FINISHED"
    after = children(client, "backprop-lab/default", parent.info.run_id)
    assert {client.get_run(run_id).info.status for run_id in running} == {"KILLED"}
    finished = [c for c in after if c.info.status == "FINISHED"]
    assert len(finished) == 6 and len({c.data.tags["bpl.config_key"] for c in finished}) == 6
    assert {c.info.run_id for c in before if c.info.status == "FINISHED"} <= {c.info.run_id for c in finished}

    # force=true, in-process (one job at a time): the same sweeper, no new interpreter.
    capfd.readouterr()
    summaries = sweep_in_process(*args, *store_args(tmp_path), "force=true", "hydra.launcher.n_jobs=1")
    assert [s.status for s in summaries] == ["finished"] * 6
    forced = capfd.readouterr().out
    assert "6 jobs, 0 already finished -> will be skipped (force=true: none); new parent" in forced
    assert "6 finished, 0 diverged, 0 failed, 0 skipped" in forced
    parents = runs_of(client, "backprop-lab/default", "tags.`bpl.role` = 'parent'")
    assert len(parents) == 2
    new = next(p for p in parents if p.info.run_id != parent.info.run_id)
    assert len([c for c in children(client, "backprop-lab/default", new.info.run_id)
                if c.info.status == "FINISHED"]) == 6
    # The new jobs went to the new parent only: the old one kept its six.
    assert len(children(client, "backprop-lab/default", parent.info.run_id)) == len(after)


def _child_states(db: Path) -> list[str]:
    """Statuses of the child runs, read with plain sqlite3 (cheap enough to poll)."""
    import sqlite3

    if not db.exists():
        return []
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            rows = conn.execute(
                "SELECT r.status FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                "WHERE t.key = 'bpl.role' AND t.value = 'child'").fetchall()
    except sqlite3.Error:  # schema still being created
        return []
    return [r[0] for r in rows]


def test_reproduce_unknown_run_one_line_nonzero_store_untouched(tmp_path, capsys, tiny_sweep):
    # An existing store with real runs (the session's tiny sweep), so the unknown id is the only problem.
    assert tiny_sweep.returncode == 0, tiny_sweep.stderr[-2000:]
    db = tiny_sweep.root / "mlflow.db"
    # The sweep's driver exits without the final garbage collections (store.exit_quickly): it
    # closed its SQLite connections first, so the WAL was merged into mlflow.db and removed.
    wal = db.with_name("mlflow.db-wal")
    assert not wal.exists() or wal.stat().st_size == 0, f"{wal}: {wal.stat().st_size} bytes left unmerged"
    digest = hashlib.sha256(db.read_bytes()).hexdigest()
    result = _reproduce(tiny_sweep.root, "0123456789abcdef0123456789abcdef")
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "run '0123456789abcdef0123456789abcdef' not found" in lines[0]
    assert hashlib.sha256(db.read_bytes()).hexdigest() == digest

    # A store that does not exist: the same main(), in-process (the exit code is its return value).
    nowhere = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    assert _reproduce_module().main(["abc", "--tracking-uri", nowhere]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err, err
    assert not (tmp_path / "nowhere").exists()


def _reproduce(folder: Path, run_id: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "scripts" / "reproduce.py"), run_id,
           "--tracking-uri", f"sqlite:///{folder / 'mlflow.db'}"]
    return subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)


def _reproduce_module():
    spec = importlib.util.spec_from_file_location("bpl_reproduce", REPO / "scripts" / "reproduce.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_closing_the_engines_merges_the_wal_of_an_open_store(empty_store, tmp_path):
    # What store.exit_quickly does before gc.freeze(): with the store's connections left to
    # the final collections (which gc.freeze skips) the WAL stayed beside mlflow.db (2f10d18).
    from backprop_lab.tracking import store

    client = store.prepare_store(empty_store, str(tmp_path / "art"))
    client.create_run(client.get_experiment_by_name("Default").experiment_id)
    wal = tmp_path / "mlflow.db-wal"
    assert wal.exists() and wal.stat().st_size > 0  # a write sits in the WAL, the engine is open
    assert store.close_engines() >= 1
    assert not wal.exists() or wal.stat().st_size == 0
    assert len(client.search_runs(["0"])) == 1  # the engine reopens on its next use
