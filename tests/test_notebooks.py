"""The analysis notebooks, executed headless against a real tiny sweep; the output-stripping check."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from analysis_store import DEFAULT_GRID, DIVERGING_LR, tiny_store
from mlflow import MlflowClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
sys.path.insert(0, str(REPO / "scripts"))
import run_notebooks  # noqa: E402  (scripts/ is not a package)

# notebook -> minimum number of figures its executed copy must hold
EXPECTED_FIGURES = {"01-sweep-overview.ipynb": 4, "02-initialization-study.ipynb": 2,
                    "03-gradient-checking.ipynb": 3}


@pytest.fixture(scope="session")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory)


@pytest.fixture(scope="module")
def executed(store):
    """name -> the notebook executed against the tiny store (each at most once per module)."""
    cache = {}

    def run(name):
        if name not in cache:
            # BPL_EXPERIMENT empty: each notebook reads its own default experiment.
            env = {"BPL_TRACKING_URI": store.uri, "BPL_EXPERIMENT": "", "BPL_SWEEP": "latest"}
            cache[name] = run_notebooks.execute(NOTEBOOKS / name, env, timeout=300)  # raises on a cell error
        return cache[name]
    return run


def _cell_text(nb, marker: str) -> str:
    """Every plain-text output (prints, tables, markdown) of the code cell whose source holds marker."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and marker in c.source)
    return "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "")
                   + o.get("data", {}).get("text/plain", "") for o in cell.outputs)


TESTED_ELSEWHERE = {"04-search-vs-grid.ipynb"}  # tests/test_search.py (needs a search in the store)


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted([*EXPECTED_FIGURES, *TESTED_ELSEWHERE])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_notebook_executes_against_the_sweep_and_draws_its_figures(store, executed, name, tmp_path):
    nb = executed(name)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    n_figures = run_notebooks.count_figures(nb)
    assert n_figures >= EXPECTED_FIGURES[name]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert f"from sweep " in text and store.uri in text  # it read the store it was given
    html = tmp_path / "report.html"
    run_notebooks.write_html(nb, html)
    assert html.read_text().count("data:image/png;base64") >= n_figures


@pytest.mark.slow
def test_sweep_overview_names_the_runs_that_really_diverged(store, executed):
    """The latest tiny sweep's runs at lr=DIVERGING_LR overflowed: notebook 01 must say so."""
    client = MlflowClient(store.uri)
    parent = client.search_runs([client.get_experiment_by_name("backprop-lab/default").experiment_id],
                                "tags.`bpl.role` = 'parent'", order_by=["attributes.start_time DESC"])[0]
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    diverged = {r.info.run_name: int(r.data.tags["bpl.diverged_epoch"]) for r in children
                if r.data.tags["bpl.status"] == "diverged"}
    n_runs = len(children) + 1  # + the job reused from the one-job sweep (finished)
    diverged_runs = [r for r in children if r.info.run_name in diverged]
    assert len(diverged) == n_runs // 2
    assert {float(r.data.params["optim.lr"]) for r in diverged_runs} == {DIVERGING_LR}
    cells = {(r.data.params["init.name"], r.data.params["model.width"]) for r in diverged_runs}
    nb = executed("01-sweep-overview.ipynb")
    assert re.search(r"^diverged\s+%d$" % len(diverged), _cell_text(nb, "value_counts()"), re.M)

    table = _cell_text(nb, "did not finish normally")
    assert f"{len(diverged)} of {n_runs} runs did not finish normally" in table
    for name, epoch in diverged.items():  # run_name, status, diverged_epoch, final/epochs_run
        assert re.search(rf"{re.escape(name)}\s+diverged\s+{epoch}\s+{epoch}\.0\s", table), (name, epoch)
    assert len(re.findall(r"^\d+\s+lr=", table, re.M)) == len(diverged)  # no other row

    # Tables of means: the all-diverged cells say so instead of averaging the blow-up.
    means = _cell_text(nb, "aggregate_seeds")
    assert means.count("diverged") == len(cells)  # one cell per (init, width) at that lr
    conclusion = _cell_text(nb, "runs diverged")
    assert f"{len(diverged)} of {n_runs} runs diverged, all at lr in {{{DIVERGING_LR:g}}}." in conclusion
    # Diverged runs are left out of the averages: only the other lr remains to compare.
    (kept,) = [lr for lr in DEFAULT_GRID["optim.lr"] if lr != DIVERGING_LR]
    assert f"only learning rate {kept:g} is left to compare" in conclusion
    assert re.search(r"init `\w+` is best \(\d\.\d{3}\) and `\w+` worst", conclusion), conclusion


def _run_notebooks(*args):
    return subprocess.run([sys.executable, "scripts/run_notebooks.py", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_run_notebooks_writes_an_html_report_with_figures(store, tmp_path):
    done = _run_notebooks(NOTEBOOKS / "03-gradient-checking.ipynb", "--tracking-uri", store.uri,
                          "--out", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ok      03-gradient-checking.ipynb" in done.stdout
    html = (tmp_path / "03-gradient-checking.html").read_text()
    assert html.count("data:image/png;base64") >= EXPECTED_FIGURES["03-gradient-checking.ipynb"]


@pytest.mark.slow
def test_run_notebooks_names_the_missing_sweep_in_one_line(store, tmp_path):
    done = _run_notebooks(NOTEBOOKS / "03-gradient-checking.ipynb", "--tracking-uri", store.uri,
                          "--experiment", "backprop-lab/optimizers", "--out", tmp_path)
    assert done.returncode == 1
    assert "FAILED  03-gradient-checking.ipynb: experiment 'backprop-lab/optimizers' not found" in done.stdout
    assert "run `make sweep SWEEP=optimizers` first" in done.stdout
    assert not list(tmp_path.glob("*.html"))


def test_error_line_is_the_analysis_error_of_a_failed_cell():
    from nbclient.exceptions import CellExecutionError

    traceback = ("\x1b[31m---------\x1b[0m\nAnalysisError                 Traceback\n"
                 "\x1b[31mAnalysisError\x1b[0m: no sweep (parent run) in experiment 'x': run `make sweep` first\n")
    error = CellExecutionError(traceback, "AnalysisError", "no sweep")
    assert run_notebooks.error_line(error) == "no sweep (parent run) in experiment 'x': run `make sweep` first"


def test_each_notebook_declares_its_default_experiment():
    assert {name: run_notebooks.default_experiment(NOTEBOOKS / name) for name in EXPECTED_FIGURES} == {
        "01-sweep-overview.ipynb": "backprop-lab/default",
        "02-initialization-study.ipynb": "backprop-lab/deep_init",
        "03-gradient-checking.ipynb": "backprop-lab/default"}


def test_run_notebooks_without_a_store_fails_before_any_kernel(tmp_path):
    done = _run_notebooks("--tracking-uri", f"sqlite:///{tmp_path / 'none.db'}", "--out", tmp_path / "r")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("run_notebooks: no MLflow store at")
    assert "make sweep" in done.stderr and not (tmp_path / "none.db").exists()


def _strip(*args):
    return subprocess.run([sys.executable, "scripts/strip_notebooks.py", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)


def test_committed_notebooks_are_stored_without_outputs():
    done = _strip("--check")  # what `make lint` runs
    assert done.returncode == 0, done.stdout + done.stderr
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        tagged = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(tagged) == 1 and "BPL_TRACKING_URI" in tagged[0].source, path.name


def test_strip_check_flags_outputs_and_strip_removes_them(tmp_path):
    path = tmp_path / "dirty.ipynb"
    shutil.copy(NOTEBOOKS / "03-gradient-checking.ipynb", path)
    nb = nbformat.read(path, as_version=4)
    sources = [c.source for c in nb.cells]
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    code.execution_count = 3
    nbformat.write(nb, path)

    check = _strip("--check", path)
    assert check.returncode == 1 and f"{path}: 1 cell(s) stored with outputs" in check.stdout
    assert json.loads(path.read_text())["cells"][1]["outputs"]  # --check leaves the file alone

    assert _strip(path).returncode == 0
    stripped = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in stripped.cells if c.cell_type == "code")
    assert [c.source for c in stripped.cells] == sources
    assert "parameters" in stripped.cells[1].metadata["tags"]
    assert _strip("--check", path).returncode == 0
