"""The documented team set-up (docs/distributed.md, "The team choice: PostgreSQL"), for real.

A throw-away PostgreSQL (tests/local_postgres.py: Debian's initdb/postgres on 127.0.0.1, random
port, random password), then exactly the documented command

    python scripts/serve.py server --store-uri postgresql+psycopg2://user:pw@host:port/db --artifact-root DIR

and a real 2-job sweep (basic launcher) with tracking.uri=http://..., checked through the server
(MlflowClient over REST) and in PostgreSQL itself. Skipped without PostgreSQL's server binaries
or psycopg2 (.ci/run installs both).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from backprop_lab.env import free_port
from backprop_lab.serve.server import ServeError, _group_alive, redact_uri, start_mlflow
from local_postgres import DB_NAME, DB_USER, missing, start_local_postgres

REPO = Path(__file__).resolve().parent.parent

MISSING = missing()
EPOCHS = 5


def start_cli_server(store_uri: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str, str]:
    """`scripts/serve.py server ...` as documented; returns (process, url, its output so far)."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "serve.py"), "server", "--host", "127.0.0.1",
         "--port", str(port), "--store-uri", store_uri, "--artifact-root", str(artifacts),
         "--log", str(log), "--timeout", "90"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env={k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"},
    )
    lines = []
    for line in proc.stdout:  # ends when serve.py exits (its own --timeout bounds the wait)
        lines.append(line)
        if "ready in" in line:
            break
    return proc, f"http://127.0.0.1:{port}", "".join(lines)


def stop_cli_server(proc: subprocess.Popen) -> None:
    """SIGTERM = serve.py's clean path (stops MLflow's group); then SIGKILL whatever is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


@pytest.mark.distributed
@pytest.mark.slow
@pytest.mark.skipif(MISSING is not None, reason=f"PostgreSQL test skipped: {MISSING}")
def test_documented_postgres_server_tracks_a_real_sweep(tmp_path, monkeypatch):
    pg = start_local_postgres(tmp_path / "pg")
    server = None
    try:
        server, url, out = start_cli_server(pg.uri, tmp_path / "mlartifacts", tmp_path / "server.log")
        assert server.poll() is None and url in out, out + (tmp_path / "server.log").read_text()[-3000:]
        store_line = server.stdout.readline()  # "  store <uri>, artifacts ..., log ..."
        assert store_line.startswith("  store ") and "***" in store_line
        assert pg.password not in out + store_line  # printed, the store URI hides its password
        _sweep(tmp_path, url)
        _check_through_the_server(tmp_path, url)
        _check_in_postgres(pg, monkeypatch)
    finally:  # leave nothing running, even on a failed assertion
        if server is not None:
            stop_cli_server(server)
        pg.stop()
    assert server.returncode == 0, "serve.py should stop cleanly on SIGTERM"
    assert not _group_alive(server.pid), "mlflow server processes left behind"
    assert not pg.alive() and not _group_alive(pg.proc.pid), "postgres processes left behind"


def _sweep(tmp_path: Path, url: str) -> None:
    cmd = [sys.executable, str(REPO / "scripts" / "train.py"), "--multirun", "+sweep=default", "seed=0,1",
           "init=he", "model.width=4", "optim.lr=0.1", f"train.epochs={EPOCHS}", f"tracking.uri={url}",
           f"hydra.sweep.dir={tmp_path / 'multirun'}"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def _check_through_the_server(tmp_path: Path, url: str) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=url)
    # The Default experiment got the artifact root (serve.py), not the server's <cwd>/mlruns.
    assert client.get_experiment("0").artifact_location == (tmp_path / "mlartifacts" / "0").as_uri()
    exp = client.get_experiment_by_name("backprop-lab/default")
    assert exp.artifact_location.startswith("mlflow-artifacts:"), "artifacts must go through the server"
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("bpl.role") == "parent"]
    children = [r for r in runs if r.data.tags.get("bpl.role") == "child"]
    assert len(runs) == 3 and len(parents) == 1 and len(children) == 2
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.metrics["sweep/n_finished"] == 2
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.data.params["seed"] for c in children) == ["0", "1"]
    for child in children:
        assert child.info.status == "FINISHED"
        assert (child.data.params["model.width"], child.data.params["optim.lr"]) == ("4", "0.1")
        history = client.get_metric_history(child.info.run_id, "train/loss")
        assert sorted(m.step for m in history) == list(range(EPOCHS))
        assert all(m.value > 0 for m in history)
        plots = {f.path for f in client.list_artifacts(child.info.run_id, "plots")}
        assert "plots/decision_boundary.png" in plots
        # A round trip through the server's artifact proxy: history.npz has one row per epoch.
        npz = Path(client.download_artifacts(child.info.run_id, "history.npz", str(tmp_path / "dl")))
        with np.load(npz) as history:
            assert list(history["epoch"]) == list(range(EPOCHS))
    assert "sweep/children.csv" in {f.path for f in client.list_artifacts(parent.info.run_id, "sweep")}
    assert len(list((tmp_path / "mlartifacts").rglob("decision_boundary.png"))) == 2


def _check_in_postgres(pg, monkeypatch) -> None:
    """The runs really are rows in PostgreSQL; a client without the password in its URI (libpq's
    PGPASSWORD, what the docs suggest for scripts) reads the same store directly."""
    con = pg.connect()
    with contextlib.closing(con), con.cursor() as cur:
        cur.execute("SELECT count(*) FROM runs")
        assert cur.fetchone()[0] == 3
        cur.execute("SELECT count(*) FROM metrics WHERE key = 'train/loss'")
        assert cur.fetchone()[0] == 2 * EPOCHS
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("PGPASSWORD", pg.password)
    direct = MlflowClient(tracking_uri=f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{pg.port}/{DB_NAME}")
    exp = direct.get_experiment_by_name("backprop-lab/default")
    assert len(direct.search_runs([exp.experiment_id])) == 3


@pytest.mark.skipif(MISSING is not None and "psycopg2" in MISSING, reason="needs psycopg2")
def test_unreachable_postgres_store_fails_fast_in_one_line_without_the_password(tmp_path):
    secret = "s3cr3t-pw"
    uri = f"postgresql+psycopg2://mlflow:{secret}@127.0.0.1:{free_port()}/mlflow"  # nothing listens
    with pytest.raises(ServeError) as e:
        start_mlflow("server", store_uri=uri, artifact_root=str(tmp_path / "a"), port=free_port())
    msg = str(e.value)
    # serve.py's own probe answered ("cannot be opened"), not MLflow after ~100 s of retries.
    assert "cannot be opened" in msg and "Connection refused" in msg and "\n" not in msg
    # Every user error redacts the whole user:password part (config.schema.redact).
    assert secret not in msg and "postgresql+psycopg2://***@127.0.0.1" in msg
    assert redact_uri(uri) == uri.replace(f"mlflow:{secret}", "***")
    assert redact_uri("sqlite:////tmp/m.db") == "sqlite:////tmp/m.db"
