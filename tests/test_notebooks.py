"""The analysis notebooks, executed headless against a real tiny sweep; the output-stripping check."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from contextlib import closing, contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
from mlflow import MlflowClient

import run_notebooks  # scripts/: on pytest's pythonpath (pyproject.toml)
import strip_notebooks
from analysis_store import DEEP_DEPTH, DEEP_GRID, DEFAULT_GRID, DIVERGING_LR, tiny_store

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"

# notebook -> minimum number of figures its executed copy must hold
EXPECTED_FIGURES = {"01-sweep-overview.ipynb": 3, "02-initialization-study.ipynb": 2,
                    "03-gradient-checking.ipynb": 3}


@pytest.fixture(scope="session")
def store(request, tmp_path_factory):
    return tiny_store(tmp_path_factory, request.session, "analysis")


@dataclass
class MakeNotebooks:
    """One in-process `run_notebooks.main` (what `make notebooks` runs) and what it left behind."""

    uri: str
    status: int
    stdout: str
    stderr: str  # this process's and every kernel's (file descriptor 2)
    reports: Path
    notebooks: dict  # name -> the executed notebook (nbformat)


@contextmanager
def stderr_to(path: Path):
    """Everything written to stderr inside: sys.stderr and file descriptor 2, which the kernels
    started inside inherit (a kernel's own warnings never reach a cell's outputs)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "w") as file, redirect_stderr(file):
        os.dup2(file.fileno(), 2)
        try:
            yield
        finally:
            file.flush()
            os.dup2(saved, 2)
            os.close(saved)


def make_notebooks(argv: list[str], folder: Path) -> MakeNotebooks:
    """`run_notebooks.main(argv)` in this process (no new interpreter), keeping every notebook it
    executed (run_notebooks.execute itself runs; it is only wrapped to keep its result)."""
    executed = {}
    real = run_notebooks.execute

    def keep(path, *args, **kwargs):
        executed[Path(path).name] = real(path, *args, **kwargs)
        return executed[Path(path).name]

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, redirect_stdout(out), stderr_to(folder / "stderr.txt"):
        patch.setattr(run_notebooks, "execute", keep)
        status = run_notebooks.main([*argv, "--out", str(folder / "reports")])
    uri = argv[argv.index("--tracking-uri") + 1]
    return MakeNotebooks(uri, status, out.getvalue(), (folder / "stderr.txt").read_text(),
                         folder / "reports", executed)


@pytest.fixture(scope="module")
def default_only(store, tmp_path_factory) -> MakeNotebooks:
    """`make sweep && make notebooks` (02 and 03) on a copy of the store without its deep_init sweep:
    03 runs whole, 02 only its part 1. Its executed 03 is the one the tests below read."""
    folder = tmp_path_factory.mktemp("default_only")
    db = folder / "mlflow.db"
    # SQLite's backup, not a file copy: the UI tests' server may be writing the shared store (WAL).
    # Artifacts stay where the runs point (absolute paths).
    with closing(sqlite3.connect(store.root / "mlflow.db")) as source, closing(sqlite3.connect(db)) as con:
        source.backup(con)
    with sqlite3.connect(db) as con:  # the store as a user has it before `make sweep SWEEP=deep_init`
        con.execute("UPDATE experiments SET name = 'backprop-lab/elsewhere' "
                    "WHERE name = 'backprop-lab/deep_init'")
    return make_notebooks([str(NOTEBOOKS / "02-initialization-study.ipynb"),
                           str(NOTEBOOKS / "03-gradient-checking.ipynb"), "--tracking-uri", f"sqlite:///{db}"],
                          folder)


# Notebook 03 reads only the default experiment, which the store and its copy in `default_only`
# hold alike: that run's executed 03 serves its tests (one kernel less).
SHARED_WITH_DEFAULT_ONLY = {"03-gradient-checking.ipynb"}


@pytest.fixture(scope="module")
def executed(store, default_only):
    """name -> (the notebook executed against the tiny store, the store URI it was given); each
    notebook executed at most once per module."""
    cache = {}

    def run(name):
        if name in SHARED_WITH_DEFAULT_ONLY:
            assert name in default_only.notebooks, default_only.stdout + default_only.stderr
            return default_only.notebooks[name], default_only.uri
        if name not in cache:
            # BPL_EXPERIMENT empty: each notebook reads its own default experiment.
            env = {"BPL_TRACKING_URI": store.uri, "BPL_EXPERIMENT": "", "BPL_SWEEP": "latest"}
            cache[name] = run_notebooks.execute(NOTEBOOKS / name, env, timeout=300)  # raises on a cell error
        return cache[name], store.uri
    return run


def _cell_text(nb, marker: str) -> str:
    """Every plain-text output (prints, tables, markdown) of the code cell whose source holds marker."""
    cell = next(c for c in nb.cells if c.cell_type == "code" and marker in c.source)
    return "".join(o.get("text", "") + o.get("data", {}).get("text/markdown", "")
                   + o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def _images(html: str) -> int:
    """Figures embedded in an HTML report (the template's own CSS holds one more data: PNG)."""
    return len(re.findall(r'<img [^>]*src="data:image/png;base64', html))


def _latest_parent(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`bpl.role` = 'parent'",
                              order_by=["attributes.start_time DESC"])[0]


def _latest_children(client: MlflowClient, experiment: str):
    """The experiment's newest parent run and its child runs."""
    parent = _latest_parent(client, experiment)
    return parent, client.search_runs([parent.info.experiment_id],
                                      f"tags.mlflow.parentRunId = '{parent.info.run_id}'")


TESTED_ELSEWHERE = {"04-search-vs-grid.ipynb"}  # tests/test_search.py (needs a search in the store)


def test_every_notebook_is_covered():
    assert sorted(p.name for p in NOTEBOOKS.glob("*.ipynb")) == sorted([*EXPECTED_FIGURES, *TESTED_ELSEWHERE])


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED_FIGURES))
def test_notebook_executes_against_the_sweep_and_draws_its_figures(executed, name, tmp_path):
    nb, uri = executed(name)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    # No kernel warning (MLflow, SQLAlchemy, pandas, matplotlib) in any cell: a reader sees them.
    assert run_notebooks.stderr_outputs(nb) == []
    n_figures = run_notebooks.count_figures(nb)
    assert n_figures >= EXPECTED_FIGURES[name]
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "from sweep " in text and uri in text  # it read the store it was given
    html = tmp_path / "report.html"
    run_notebooks.write_html(nb, html)
    body = html.read_text()
    assert _images(body) == n_figures
    # The report hides the code by default (nbconvert's exclude_input); --show-code shows it.
    assert "load_sweep" not in body and 'class="jp-InputPrompt' not in body
    run_notebooks.write_html(nb, html, show_code=True)
    shown = html.read_text()
    assert "load_sweep" in shown and 'class="jp-InputPrompt' in shown and _images(shown) == n_figures


@pytest.mark.slow
def test_sweep_overview_ranks_by_the_mean_over_seeds_and_shows_the_same_best(store, executed):
    """Notebook 01's ranking, ties, gallery and conclusion are the package's, computed from the store."""
    from backprop_lab import analysis
    from backprop_lab.analysis import summary

    runs, _ = analysis.load_sweep(store.uri, "backprop-lab/default")
    table = summary.rank(runs, summary.swept_keys(runs))
    best = table.iloc[0]
    tied = table[table["tied"]]
    nb, _ = executed("01-sweep-overview.ipynb")
    ranking = _cell_text(nb, "summary.answer(")
    label = summary.config_label(best, table.attrs["keys"])
    # Row 1 is the best configuration with its mean ± std over the seeds and their count.
    first = next(line for line in ranking.splitlines() if re.match(r"^1\b", line))
    assert label in first and summary.mean_std(best) in first, first
    assert len(re.findall(r"^\d+ =", ranking, re.M)) == (len(tied) if len(tied) > 1 else 0)
    # The gallery's first tiles are the ranking's best configurations, best first.
    gallery = next(c for c in nb.cells if c.cell_type == "code" and "gallery_picks" in c.source)
    assert any("image/png" in o.get("data", {}) for o in gallery.outputs)
    tiles = _cell_text(nb, "gallery_picks").split("tiles: ", 1)[1].split("; ")
    for k, (_, row) in enumerate(tied.iterrows()):
        assert tiles[k].startswith(f"#{k + 1} {summary.config_label(row, table.attrs['keys'])}, "
                                   f"{summary.mean_std(row)}"), (k, tiles)
    conclusion = _cell_text(nb, "note_markdown")
    assert f"Best: {label}, test acc {summary.mean_std(best)}" in conclusion
    for _, row in tied.iloc[1:].iterrows():  # every tie named with its own mean ± std
        assert f"{summary.config_label(row, table.attrs['keys'])} {summary.mean_std(row)}" in conclusion
    # One shared colour scale: the summary figure is summary.summary_figure's (one image).
    figure_cell = next(c for c in nb.cells if c.cell_type == "code" and "summary_figure" in c.source)
    assert sum("image/png" in o.get("data", {}) for o in figure_cell.outputs) == 1


@pytest.mark.slow
def test_sweep_overview_names_the_runs_that_really_diverged(store, executed):
    """The latest tiny sweep's runs at lr=DIVERGING_LR overflowed: notebook 01 must say so."""
    client = MlflowClient(store.uri)
    _, children = _latest_children(client, "backprop-lab/default")
    diverged = {r.info.run_name: int(r.data.tags["bpl.diverged_epoch"]) for r in children
                if r.data.tags["bpl.status"] == "diverged"}
    n_runs = len(children) + 1  # + the job reused from the one-job sweep (finished)
    diverged_runs = [r for r in children if r.info.run_name in diverged]
    assert len(diverged) == n_runs // 2
    assert {float(r.data.params["optim.lr"]) for r in diverged_runs} == {DIVERGING_LR}
    nb, _ = executed("01-sweep-overview.ipynb")
    counts = _cell_text(nb, "value_counts()")
    assert re.search(rf"^diverged\s+{len(diverged)}$", counts, re.M), counts

    table = _cell_text(nb, "did not finish normally")
    assert f"{len(diverged)} of {n_runs} runs did not finish normally" in table
    for name, epoch in diverged.items():  # run_name, status, diverged_epoch, final/epochs_run
        assert re.search(rf"{re.escape(name)}\s+diverged\s+{epoch}\s+{epoch}\.0\s", table), (name, epoch)
    assert len(re.findall(r"^\d+\s+lr=", table, re.M)) == len(diverged)  # no other row

    # The ranking counts the all-diverged configurations and never averages them.
    ranking = _cell_text(nb, "summary.answer(")
    from backprop_lab.analysis.summary import format_value

    lost = [line for line in ranking.splitlines() if f"lr={format_value(DIVERGING_LR)}" in line]  # lr=1e+10
    assert len(lost) == len(DEFAULT_GRID["init"]) * len(DEFAULT_GRID["model.width"])
    assert all("n/a (n=0)" in line and re.search(r"\s2\s+0$", line) for line in lost), lost
    conclusion = _cell_text(nb, "note_markdown")
    assert f"{len(diverged)} of {n_runs} runs diverged, all at lr in {{{DIVERGING_LR:g}}}." in conclusion
    # Diverged runs are left out of the averages: only the other lr remains to compare.
    (kept,) = [lr for lr in DEFAULT_GRID["optim.lr"] if lr != DIVERGING_LR]
    assert f"only lr {kept} is left to compare" in conclusion
    assert re.search(r"init \w+ \d\.\d{3} ± \d\.\d{3} \(n=\d+\).* vs \w+ \d\.\d{3}", conclusion), conclusion


@pytest.mark.slow
def test_initialization_study_verdict_is_the_real_deep_store(store, executed):
    """Notebook 02's verdict per scheme, checked against each run's training loss read from MLflow."""
    client = MlflowClient(store.uri)
    _, children = _latest_children(client, "backprop-lab/deep_init")
    assert {int(r.data.params["model.depth"]) for r in children} == {DEEP_DEPTH}
    lowest = {}
    for run in children:  # the criterion: a run trains when its loss falls below ln(2)/2 once
        losses = [m.value for m in client.get_metric_history(run.info.run_id, "train/loss")]
        lowest.setdefault(run.data.params["init.name"], []).append(min(losses))
    trains = {init: all(v < math.log(2) / 2 for v in values) for init, values in lowest.items()}
    assert trains == {"he": True, "xavier": False}  # He et al. 2015, Fig. 3, at depth 30
    assert all(v > 0.68 for v in lowest["xavier"])  # stalled at ln 2, not merely slow

    nb, _ = executed("02-initialization-study.ipynb")
    verdict = _cell_text(nb, "per_run = runs")
    n = len(DEEP_GRID["seed"])
    for init, ok in trains.items():
        row = next(line for line in verdict.splitlines() if re.search(rf"\s{init}\s+{n}\s+\d/{n}\s", line))
        assert re.search(rf"\s{n if ok else 0}/{n}\s+{'trains' if ok else 'stalls'}\s", row), row
        mean = sum(lowest[init]) / n
        assert f"{mean:.3f} ± " in row, (row, mean)
    conclusion = _cell_text(nb, "predicted = ")
    assert "**trains**: `he` (2/2 seeds trained); **stalls**: `xavier` (0/2 seeds trained)" in conclusion
    assert "The prediction of part 1 holds for 2 of 2 scheme(s)." in conclusion
    # Part 1 (no store): measured per-layer ratios agree with r = fan * Var(W) / 2.
    part1 = _cell_text(nb, "measured_ratio(std)")
    assert re.search(r"agree with theory within [0-9]%", part1), part1


@pytest.mark.slow
def test_make_notebooks_after_the_default_sweep_only_exits_0_and_names_the_missing_sweep(default_only):
    """`make sweep && make notebooks`: no deep_init sweep. 02 runs part 1 and says what fills part 2."""
    done = default_only
    assert done.status == 0, done.stdout + done.stderr
    assert "ok      03-gradient-checking.ipynb" in done.stdout
    assert "partial 02-initialization-study.ipynb" in done.stdout
    assert "experiment 'backprop-lab/deep_init' not found" in done.stdout
    assert "run `make sweep SWEEP=deep_init` first" in done.stdout
    assert "stderr" not in done.stdout and "WARNING" not in done.stderr  # no kernel warning either
    html = (done.reports / "02-initialization-study.html").read_text()
    assert "Not run: this part reads a sweep" in html and "make sweep SWEEP=deep_init" in html
    assert _images(html) == 1  # part 1's figure, drawn without a store
    assert "Part 1" in html and "ratio_per_layer" not in html  # no code by default


@pytest.mark.slow
def test_run_notebooks_names_the_missing_sweep_in_one_line(empty_store, tmp_path, capsys):
    """A store without the experiment asked for (no sweep needed); main() in this process: its
    return is the exit status (test_run_notebooks_without_a_store... runs the command line)."""
    status = run_notebooks.main([str(NOTEBOOKS / "03-gradient-checking.ipynb"), "--tracking-uri", empty_store,
                                 "--experiment", "backprop-lab/optimizers", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == 1  # nothing that reads a sweep ran
    assert "partial 03-gradient-checking.ipynb" in out
    assert "experiment 'backprop-lab/optimizers' not found" in out
    assert "run `make sweep SWEEP=optimizers` first" in out
    html = (tmp_path / "03-gradient-checking.html").read_text()
    assert "A planted bug, caught" in html and _images(html) == 1


def test_without_sweep_drops_only_the_tagged_cells():
    nb = nbformat.read(NOTEBOOKS / "02-initialization-study.ipynb", as_version=4)
    tagged = [c for c in nb.cells if "needs-sweep" in c.metadata.get("tags", [])]
    kept = [c.source for c in nb.cells if c not in tagged]
    assert tagged and any("load_sweep" in c.source for c in tagged)
    assert not any("load_sweep" in s for s in kept) and any("preactivations" in s for s in kept)
    dropped = run_notebooks.without_sweep(nb, "run `make sweep SWEEP=deep_init` first")
    assert dropped == sum(c.cell_type == "code" for c in tagged)
    assert [c.source for c in nb.cells if "missing-sweep" not in c.metadata.get("tags", [])] == kept
    (note,) = [c for c in nb.cells if "missing-sweep" in c.metadata.get("tags", [])]
    assert note.cell_type == "markdown" and note.source.endswith("run `make sweep SWEEP=deep_init` first")


def test_error_line_is_the_analysis_error_of_a_failed_cell():
    from nbclient.exceptions import CellExecutionError

    line = "no sweep (parent run) in experiment 'x': run `make sweep` first"
    traceback = ("\x1b[31m---------\x1b[0m\nAnalysisError                 Traceback\n"
                 f"\x1b[31mAnalysisError\x1b[0m: {line}\n")
    error = CellExecutionError(traceback, "AnalysisError", "no sweep")
    assert run_notebooks.error_line(error) == line


def test_each_notebook_declares_its_default_experiment():
    assert {name: run_notebooks.default_experiment(NOTEBOOKS / name) for name in EXPECTED_FIGURES} == {
        "01-sweep-overview.ipynb": "backprop-lab/default",
        "02-initialization-study.ipynb": "backprop-lab/deep_init",
        "03-gradient-checking.ipynb": "backprop-lab/default"}


def test_run_notebooks_without_a_store_fails_before_any_kernel(tmp_path):
    """The real command line (the one test of `sys.exit(main())`; the others call main())."""
    done = subprocess.run([sys.executable, "scripts/run_notebooks.py", "--tracking-uri",
                           f"sqlite:///{tmp_path / 'none.db'}", "--out", str(tmp_path / "r")],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
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


def test_strip_check_flags_outputs_and_strip_removes_them(tmp_path, capsys):
    path = tmp_path / "dirty.ipynb"
    shutil.copy(NOTEBOOKS / "03-gradient-checking.ipynb", path)
    nb = nbformat.read(path, as_version=4)
    sources = [c.source for c in nb.cells]
    code = next(c for c in nb.cells if c.cell_type == "code")
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="hello\n")]
    code.execution_count = 3
    nbformat.write(nb, path)

    # main() in this process (the test above runs the command line `make lint` runs)
    assert strip_notebooks.main(["--check", str(path)]) == 1
    assert f"{path}: 1 cell(s) stored with outputs" in capsys.readouterr().out
    assert json.loads(path.read_text())["cells"][1]["outputs"]  # --check leaves the file alone

    assert strip_notebooks.main([str(path)]) == 0
    stripped = nbformat.read(path, as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None
               for c in stripped.cells if c.cell_type == "code")
    assert [c.source for c in stripped.cells] == sources
    assert "parameters" in stripped.cells[1].metadata["tags"]
    assert strip_notebooks.main(["--check", str(path)]) == 0
