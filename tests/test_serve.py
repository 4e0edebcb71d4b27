"""serve.py: real `mlflow ui` / `mlflow server` processes over a temporary SQLite store."""

from __future__ import annotations

import importlib.util
import json
import os
import runpy
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from backprop_lab.env import free_port
from backprop_lab.serve.server import ServeError, _group_alive, start_mlflow

REPO = Path(__file__).resolve().parents[1]


def api(url: str, endpoint: str, payload: dict | None = None) -> dict:
    """One MLflow REST call (POST with a JSON body, or GET)."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(f"{url}/api/2.0/mlflow/{endpoint}", data=data,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def pids_with_args(*args: str) -> list[int]:
    """Live processes whose command line holds `args` consecutively (read from /proc)."""
    needle = "\0".join(args).encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes() and int(cmdline.parent.name) != os.getpid():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


@pytest.mark.slow
def test_ui_starts_answers_the_api_and_stops_without_leftovers(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    art = tmp_path / "mlartifacts"
    handle = start_mlflow("ui", store_uri=store, artifact_root=str(art), port=free_port(),
                          log_path=tmp_path / "ui.log")
    try:
        with urllib.request.urlopen(f"{handle.url}/health", timeout=10) as r:
            assert r.status == 200
        # The store was prepared before MLflow saw it: Default has a local artifact location.
        default = api(handle.url, "experiments/get?experiment_id=0")["experiment"]
        assert default["artifact_location"] == (art / "0").as_uri()
        exp_id = api(handle.url, "experiments/create", {"name": "serve-test"})["experiment_id"]
        run = api(handle.url, "runs/create", {"experiment_id": exp_id, "run_name": "r"})["run"]
        run_id = run["info"]["run_id"]
        api(handle.url, "runs/log-metric",
            {"run_id": run_id, "key": "test/acc", "value": 0.75, "timestamp": 0, "step": 0})
        got = api(handle.url, f"runs/get?run_id={run_id}")["run"]["data"]["metrics"]
        assert [(m["key"], m["value"]) for m in got] == [("test/acc", 0.75)]
    finally:
        handle.stop()
    assert not handle.alive()
    assert not _group_alive(handle.pid), "mlflow left processes behind"
    handle.stop()  # idempotent


def test_busy_port_gives_one_clear_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ServeError) as e:
            start_mlflow("ui", store_uri=f"sqlite:///{tmp_path / 'm.db'}",
                         artifact_root=str(tmp_path / "a"), port=port)
    msg = str(e.value)
    assert f"port {port}" in msg and "--port" in msg and "\n" not in msg
    assert not (tmp_path / "m.db").exists(), "nothing is written when the port is busy"


def test_unwritable_store_gives_one_clear_line(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where a folder should be")
    with pytest.raises(ServeError) as e:
        start_mlflow("server", store_uri=f"sqlite:///{blocker / 'mlflow.db'}",
                     artifact_root=str(tmp_path / "a"), port=free_port())
    assert "store folder" in str(e.value) and "--store-uri" in str(e.value)
    with pytest.raises(ServeError, match="artifact root: .* --artifact-root"):
        start_mlflow("server", store_uri=f"sqlite:///{tmp_path / 'm.db'}",
                     artifact_root=str(blocker / "art"), port=free_port())


def test_other_interfaces_need_allowed_hosts_and_bad_mode_is_named(tmp_path):
    with pytest.raises(ServeError, match="--allowed-hosts"):
        start_mlflow("server", host="0.0.0.0", store_uri=f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(ServeError, match="'web' is not one of ui, server"):
        start_mlflow("web")


def test_cli_error_is_one_line_and_exit_code_nonzero(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, str(REPO / "scripts" / "serve.py"), "ui", "--port", str(port),
             "--store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--artifact-root", str(tmp_path / "a")],
            capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr


@pytest.mark.slow
def test_cli_server_prints_url_trains_with_credentials_and_sigterm_stops_the_whole_group(tmp_path, capfd):
    """`make server` as a user starts it; a real run logs into it through a URI with a user and
    password (issue 13: it works, and the password is printed and logged nowhere); SIGTERM stops
    every process of the server; then the same URI, dead, ends a run in one line, still redacted."""
    port = free_port()
    env = {**os.environ, "PORT": str(port), "HOST": "127.0.0.1"}  # the Makefile's variables
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "serve.py"), "server",
         "--store-uri", f"sqlite:///{tmp_path / 'm.db'}", "--artifact-root", str(tmp_path / "a"),
         "--log", str(tmp_path / "server.log")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True,
    )
    lines = []
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready in" in line:
                break
        assert any(f"http://127.0.0.1:{port}" in ln for ln in lines), "".join(lines)
        # The server mode proxies artifacts: new experiments get mlflow-artifacts: locations.
        url = f"http://127.0.0.1:{port}"
        exp_id = api(url, "experiments/create", {"name": "proxied"})["experiment_id"]
        loc = api(url, f"experiments/get?experiment_id={exp_id}")["experiment"]["artifact_location"]
        assert loc.startswith("mlflow-artifacts:")
        _train_with_credentials(tmp_path, port, capfd)
        mlflow_pids = pids_with_args("--port", str(port))
        assert mlflow_pids, "mlflow should be running"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "stopping mlflow" in out
        time.sleep(0.5)
        assert pids_with_args("--port", str(port)) == [], "mlflow processes left behind"
        # The server is gone: the same credentialed URI ends a run in one redacted line. The
        # entry point's check, in this process (a real interpreter's exit 1 on an unusable store:
        # tests/test_faults.py's broken store).
        uri = f"http://alice:s3cret@127.0.0.1:{port}"
        capfd.readouterr()
        t = time.monotonic()
        with pytest.MonkeyPatch.context() as patch, pytest.raises(SystemExit) as dead:
            patch.setenv("MLFLOW_TRACKING_URI", uri)
            _train_script().precheck(["train.epochs=3", f"tracking.artifact_root={tmp_path / 'art'}"])
        out, err = capfd.readouterr()
        assert dead.value.code == 1 and out == "" and err.count("\n") == 1, err[-2000:]
        assert "s3cret" not in out + err and "not reachable" in err
        assert f"http://***@127.0.0.1:{port}" in err
        assert time.monotonic() - t < 30  # the check itself takes < 3 s (test_tracking)
    finally:  # on a failed assertion: the clean path first, then by PID whatever is left
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for pid in pids_with_args("--port", str(port)):
            os.kill(pid, signal.SIGKILL)


def _train_script():
    """scripts/train.py as a module (scripts/ is not a package): its precheck runs in-process."""
    spec = importlib.util.spec_from_file_location("bpl_train_script", REPO / "scripts" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _train_with_credentials(tmp_path: Path, port: int, capfd) -> None:
    """A real single run into the server at `port` through http://alice:s3cret@...: the health
    check reaches 127.0.0.1:<port> (credentials in a header), the run finishes, and neither its
    output, its params nor its logged config hold the password."""
    from hydra.core.global_hydra import GlobalHydra

    from backprop_lab.tracking import client as tracking

    uri = f"http://alice:s3cret@127.0.0.1:{port}"
    tracking.check_server(uri)
    # `make train` with the URI in the environment: the script's own __main__ (precheck, then
    # @hydra.main) in this process, as the shell runs it; the server is the real process.
    capfd.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(tmp_path)
        patch.setattr(sys, "argv", [str(REPO / "scripts" / "train.py"), "train.epochs=3",
                                    "experiment_name=creds"])
        try:
            runpy.run_path(str(REPO / "scripts" / "train.py"), run_name="__main__")
        except SystemExit as exc:
            pytest.fail(f"the credentialed run exited {exc.code}: {capfd.readouterr().err[-3000:]}")
        finally:
            GlobalHydra.instance().clear()
    out, err = capfd.readouterr()
    assert "finished" in out, out + err[-3000:]
    assert "s3cret" not in out + err
    client = tracking.MlflowClient(f"http://127.0.0.1:{port}")
    (run,) = client.search_runs([client.get_experiment_by_name("creds").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["tracking.uri"] == f"http://***@127.0.0.1:{port}"
    config = Path(client.download_artifacts(run.info.run_id, "config/config.yaml", str(tmp_path)))
    assert "s3cret" not in config.read_text()
