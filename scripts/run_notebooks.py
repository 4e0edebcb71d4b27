"""`make notebooks`: execute the analysis notebooks headless against a store, write HTML reports.

    python scripts/run_notebooks.py [NOTEBOOK ...] [--tracking-uri URI] [--experiment NAME]
                                    [--sweep latest|all|<parent run id>] [--out reports] [--show-code]

The notebooks read their parameters from env vars (BPL_TRACKING_URI, BPL_EXPERIMENT,
BPL_SWEEP); this script sets them for the kernel. Without --experiment each notebook reads
its own default experiment (01 and 03: backprop-lab/default, 02: backprop-lab/deep_init).
A notebook whose sweep is missing runs without its cells tagged `needs-sweep` (notebook 02's
part 1 needs no store): the report says in their place, and this script prints, which
`make sweep ...` fills the rest. The HTML reports show outputs only; --show-code adds the code.
Exit status 1 if a notebook failed (a cell raised) or if none ran a cell that reads a sweep.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from backprop_lab import QUIET_ENV  # (and its import turned telemetry off here)

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
DEFAULT_EXPERIMENT = re.compile(r'EXPERIMENT = .* or "([^"]+)"')
NEEDS_SWEEP = "needs-sweep"  # cell tag: the cell reads the sweep from the store


def count_figures(nb) -> int:
    """Number of image outputs (PNG/SVG) in an executed notebook."""
    return sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.get("outputs", [])
               if any(k.startswith("image/") for k in out.get("data", {})))


def without_sweep(nb, missing: str):
    """`nb` without its cells tagged `needs-sweep`; one markdown cell in their place says `missing`.

    Returns the number of code cells left out (0: the notebook is unchanged).
    """
    import nbformat

    kept, dropped, noted = [], 0, False
    for cell in nb.cells:
        if NEEDS_SWEEP not in cell.metadata.get("tags", []):
            kept.append(cell)
            continue
        dropped += cell.cell_type == "code"
        if not noted:
            kept.append(nbformat.v4.new_markdown_cell(
                f"> **Not run: this part reads a sweep the store does not hold.** {missing}",
                metadata={"tags": ["missing-sweep"]}))
            noted = True
    nb.cells = kept
    return dropped


# What a kernel would otherwise write to stderr on every `make notebooks`: MLflow's artifact
# download progress bars, and tqdm's "IProgress not found" warning (mlflow imports tqdm.auto,
# which warns in a Jupyter kernel without ipywidgets; the message prefix is matched, so the
# filter needs no import at interpreter start-up).
KERNEL_QUIET = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
                "PYTHONWARNINGS": "ignore:IProgress not found"}


def execute(path: Path, env: dict[str, str], timeout: int = 600, missing: str | None = None):
    """Run every cell of notebook `path` in a fresh python3 kernel with `env` added to os.environ.

    missing: what is missing from the store (one line): the `needs-sweep` cells are left out.
    Returns the executed notebook; raises nbclient's CellExecutionError on the first failing cell.
    The kernel starts in the notebook's folder and inherits this process's environment, which is
    how the parameters reach it. It talks over local IPC sockets in a temporary folder: over TCP,
    ipykernel warns on every start that the channel is not encrypted.
    """
    import nbformat
    from nbclient import NotebookClient
    from traitlets.config import Config

    nb = nbformat.read(path, as_version=4)
    if missing:
        without_sweep(nb, missing)
    env = {**KERNEL_QUIET, **env}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with tempfile.TemporaryDirectory(prefix="bpl-kernel-") as sockets:
            ipc = Config({"KernelManager": {"transport": "ipc", "ip": os.path.join(sockets, "kernel")}})
            NotebookClient(nb, timeout=timeout, kernel_name="python3", config=ipc,
                           resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def error_line(error: Exception) -> str:
    """The one line a user needs from a failed cell: the AnalysisError message when there is one."""
    text = ANSI.sub("", str(error))
    found = re.findall(r"AnalysisError: (.+)", text)
    if found:
        return found[-1].strip()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(error).__name__


def default_experiment(path: Path) -> str | None:
    """The experiment a notebook reads by default: `EXPERIMENT = ... or "<name>"` in its parameters cell."""
    import nbformat

    for cell in nbformat.read(path, as_version=4).cells:
        if "parameters" in cell.metadata.get("tags", []):
            found = DEFAULT_EXPERIMENT.search(cell.source)
            return found.group(1) if found else None
    return None


def precheck(uri: str, experiment: str | None, sweep: str) -> str | None:
    """What is missing for a notebook reading `experiment`/`sweep` of `uri` (one line), or None.

    Checked here so that a missing sweep costs no kernel start; the notebook says the same.
    """
    from backprop_lab import analysis

    if not experiment:
        return None
    try:
        if sweep == "latest":
            analysis.latest_sweep(uri, experiment)
        elif sweep in ("", "all"):
            analysis.load_runs(uri, experiment=experiment)
    except analysis.AnalysisError as error:
        return str(error)
    return None


def stderr_outputs(nb) -> list[str]:
    """Every text a kernel wrote to stderr while the notebook ran (warnings land here)."""
    return [out.get("text", "") for cell in nb.cells if cell.cell_type == "code"
            for out in cell.get("outputs", []) if out.get("name") == "stderr"]


def write_html(nb, target: Path, show_code: bool = False) -> None:
    """The report: outputs and markdown only (no code, no In/Out prompts) unless `show_code`."""
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=not show_code,
                            exclude_input_prompt=not show_code, exclude_output_prompt=not show_code)
    body, _ = exporter.from_notebook_node(nb)
    target.write_text(body, encoding="utf-8")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="*", help="notebook files (default: notebooks/*.ipynb)")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store (default: BPL_TRACKING_URI, MLFLOW_TRACKING_URI, "
                             "else sqlite:///<repo>/mlflow.db)")
    parser.add_argument("--experiment", default=os.environ.get("BPL_EXPERIMENT", ""),
                        help="experiment for every notebook (default: each notebook's own)")
    parser.add_argument("--sweep", default=os.environ.get("BPL_SWEEP", "latest"),
                        help="parent run id, 'latest' (default) or 'all'")
    parser.add_argument("--out", default=str(REPO / "reports"), help="folder for the HTML reports")
    parser.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    parser.add_argument("--show-code", action="store_true", help="show the code cells in the HTML reports")
    args = parser.parse_args(argv)

    from nbclient.exceptions import CellExecutionError

    from backprop_lab import analysis

    uri = args.tracking_uri or os.environ.get("BPL_TRACKING_URI") or analysis.default_tracking_uri()
    try:
        analysis.store._client(uri)  # fail in one line before starting any kernel if there is no store
    except analysis.AnalysisError as error:
        print(f"run_notebooks: {error}", file=sys.stderr)
        return 1
    paths = [Path(p) for p in args.notebooks] or sorted(NOTEBOOKS.glob("[0-9][0-9]-*.ipynb"))
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        print(f"run_notebooks: no such notebook: {', '.join(missing)}", file=sys.stderr)
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {"BPL_TRACKING_URI": uri, "BPL_EXPERIMENT": args.experiment, "BPL_SWEEP": args.sweep,
           **QUIET_ENV}
    failed = complete = 0
    print(f"store: {uri}")
    for path in paths:
        start = time.perf_counter()
        missing = precheck(uri, args.experiment or default_experiment(path), args.sweep)
        try:
            nb = execute(path.resolve(), env, args.timeout, missing=missing)
        except CellExecutionError as error:
            failed += 1
            print(f"  FAILED  {path.name}: {error_line(error)}")
            continue
        target = out / f"{path.stem}.html"
        write_html(nb, target, show_code=args.show_code)
        done = f"{count_figures(nb)} figures, {time.perf_counter() - start:.1f} s -> {target}"
        if missing:
            print(f"  partial {path.name}: {done}\n          the rest needs a sweep: {missing}")
        else:
            complete += 1
            print(f"  ok      {path.name}: {done}")
        for text in stderr_outputs(nb):  # a warning in a report is a defect: say where
            print(f"  stderr  {path.name}: {text.strip().splitlines()[0] if text.strip() else ''}")
    return 1 if failed or not complete else 0


if __name__ == "__main__":
    sys.exit(main())
