"""`make ui` / `make server`: MLflow over the project's store, light settings, clean Ctrl-C.

    python scripts/serve.py ui                  # http://127.0.0.1:5000, SQLite store of the repo
    python scripts/serve.py server --port 5001  # tracking server; artifacts uploaded through it
    HOST=0.0.0.0 ALLOWED_HOSTS=myhost:5001 python scripts/serve.py server   # reachable by others

Defaults come from the environment (HOST, PORT, ALLOWED_HOSTS, STORE_URI, ARTIFACT_ROOT), so the
Makefile's `make server HOST=... PORT=...` reaches them. See docs/distributed.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from backprop_lab.serve.server import (
    DEFAULT_PORTS,
    MODES,
    ServeError,
    check_store,
    default_artifact_root,
    default_store_uri,
    redact_uri,
    start_mlflow,
)


def default_store() -> str | None:
    # Show the same store `make train` writes to; an http tracking URI is not a backend store.
    uri = os.environ.get("STORE_URI") or os.environ.get("MLFLOW_TRACKING_URI", "")
    return uri if uri and not uri.startswith(("http:", "https:")) else None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=MODES, help="ui: browse the store; server: tracking server for workers")
    p.add_argument("--store-uri", default=default_store(), help="backend store (default sqlite:///<repo>/mlflow.db)")
    p.add_argument("--artifact-root", default=os.environ.get("ARTIFACT_ROOT") or default_artifact_root())
    p.add_argument("--host", default=os.environ.get("HOST") or "127.0.0.1")
    p.add_argument("--port", type=int, default=int(os.environ["PORT"]) if os.environ.get("PORT") else None,
                   help=f"default {DEFAULT_PORTS}")
    p.add_argument("--allowed-hosts", default=os.environ.get("ALLOWED_HOSTS") or None,
                   help="Host headers MLflow accepts, needed with a non-loopback --host")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for /health")
    p.add_argument("--log", default=None, help="MLflow's own log file (default: a temp file)")
    p.add_argument("--experiment", default=os.environ.get("EXPERIMENT") or None,
                   help="ui: the experiment the printed link opens (default: the newest sweep's)")
    return p.parse_args(argv)


def print_sweep_link(handle, experiment: str | None) -> None:
    """The sweep's runs as a table (swept params, final metrics, best first): docs/ui.md."""
    from mlflow import MlflowClient

    from backprop_lab.serve.link import sweep_view

    try:
        view = sweep_view(MlflowClient(handle.store_uri), experiment)
    except LookupError as e:
        print(f"  warning: {e}", flush=True)
        return
    if view is None:
        print("  no sweep in this store yet (make sweep): open the URL above", flush=True)
        return
    print(f"  sweep {view.experiment_name}: swept params and final metrics, best test accuracy first:")
    print(f"  {view.url(handle.url)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def on_sigterm(signum, frame):  # turn SIGTERM into the same clean path as Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    # Ctrl-C works even when started with SIGINT ignored (a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    handle = None
    try:
        t0 = time.monotonic()
        # A broken or foreign store is refused before anything is printed or started: one line.
        check_store(args.store_uri or default_store_uri(), args.artifact_root)
        print(f"starting mlflow {args.mode} ...", flush=True)
        handle = start_mlflow(
            args.mode, store_uri=args.store_uri, artifact_root=args.artifact_root, host=args.host,
            port=args.port, allowed_hosts=args.allowed_hosts, timeout=args.timeout, log_path=args.log,
        )
        print(f"MLflow {args.mode} ready in {time.monotonic() - t0:.1f} s: {handle.url}", flush=True)
        print(f"  store {redact_uri(handle.store_uri)}, artifacts {handle.artifact_root}, "
              f"log {handle.log_path}")
        if args.mode == "ui":
            print_sweep_link(handle, args.experiment)
        if args.mode == "server":
            print(f"  point runs at it: MLFLOW_TRACKING_URI={handle.url}  (or tracking=server)")
        print("  Ctrl-C stops it", flush=True)
        while handle.alive():
            time.sleep(0.5)
        print(f"error: mlflow exited with code {handle.proc.returncode} (log: {handle.log_path})",
              file=sys.stderr)
        return 1
    except ServeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\nstopping mlflow ...", flush=True)
        return 0
    finally:
        # A second Ctrl-C (or the one `uv run`/make forward) must not cut the clean-up short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if handle is not None:
            handle.stop()


if __name__ == "__main__":
    sys.exit(main())
