"""The MLflow UI as a person sees it: a real sweep, a real `mlflow ui`, headless Chromium.

One module-wide set-up: the session's shared store (tests/analysis_store.py) holds, as its newest
sweep, `scripts/train.py --multirun +sweep=default` (every configuration and seed of `make sweep`,
108 children, shrunk to 10 epochs without the gradient check) in its own experiment;
`scripts/serve.py ui` (what `make ui` runs) serves the store on a free 127.0.0.1 port, and
Debian's Chromium browses it. The UI only reads the store (and writes its shared-view tag). Each
test is one step a user takes; screenshots of every step go to `<tmp>/ui/shots/` and their paths
are printed, so a failing test shows where to look. Without Chromium or Playwright the tests are skipped.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from analysis_store import UI_EPOCHS, UI_EXPERIMENT, UI_RUNS, tiny_store
from ui_helpers import (
    Shots,
    browser_missing_reason,
    chart_card,
    close_assistant,
    foreign_hosts,
    launch,
    load_more,
    png_size,
    table_value,
    toggle_run_visibility,
    wait_for_runs,
)

REPO = Path(__file__).resolve().parents[1]
MISSING = browser_missing_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(MISSING is not None, reason=f"browser test skipped: {MISSING}"),
]


@dataclass
class Child:
    run_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    artifact_dir: Path


@dataclass
class Sweep:
    store_uri: str
    artifact_root: Path
    experiment_id: str
    parent_id: str
    parent_name: str
    parent_note: str
    children: list[Child]


def significant_digits(shown: str) -> int:
    """Significant digits of a number as the UI prints it ('0.975' -> 3, '1e-07' -> 1)."""
    mantissa = shown.lower().split("e")[0].lstrip("-").replace(".", "").lstrip("0")
    return len(mantissa.rstrip("0")) or 1


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui")


@pytest.fixture(scope="module")
def shots(workdir) -> Shots:
    return Shots(workdir / "shots")


@pytest.fixture(scope="module")
def sweep(request, tmp_path_factory) -> Sweep:
    """The store's 108-run sweep (analysis_store.UI_OVERRIDES), read back as MLflow holds it."""
    store = tiny_store(tmp_path_factory, request.session, "ui")
    store_uri, artifact_root = store.uri, store.root / "art"

    from mlflow.tracking import MlflowClient

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name(UI_EXPERIMENT)
    assert experiment is not None, f"the sweep did not create experiment {UI_EXPERIMENT}"
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("bpl.role") == "parent"]
    assert len(parents) == 1, f"expected one parent run, got {[r.info.run_name for r in parents]}"
    parent = parents[0]
    children = [
        Child(r.info.run_id, r.info.run_name, r.data.params, r.data.metrics,
              Path(unquote(urlparse(r.info.artifact_uri).path)))
        for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert len(children) == UI_RUNS, f"expected {UI_RUNS} children, got {len(children)}"
    note = parent.data.tags.get("mlflow.note.content", "")
    return Sweep(store_uri, artifact_root, experiment.experiment_id, parent.info.run_id,
                 parent.info.run_name, note,
                 sorted(children, key=lambda c: c.name))


@dataclass
class Ui:
    url: str  # the server
    link: str  # the sweep link `make ui` printed


@pytest.fixture(scope="module")
def ui(sweep, workdir):
    """`scripts/serve.py ui` (what `make ui` runs) on a free loopback port; its printed link."""
    from backprop_lab.env import free_port

    cmd = [sys.executable, "scripts/serve.py", "ui", "--store-uri", sweep.store_uri,
           "--artifact-root", str(sweep.artifact_root), "--port", str(free_port()),
           "--log", str(workdir / "mlflow-ui.log")]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "EXPERIMENT")}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if "viewStateShareKey=" in line:
                break
        printed = "".join(lines)
        server = re.search(r"ready in [\d.]+ s: (http://127\.0\.0\.1:\d+)", printed)
        assert server and "viewStateShareKey=" in printed, f"make ui printed no sweep link:\n{printed}"
        yield Ui(server.group(1), lines[-1].strip())
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        proc.wait(timeout=60)


@pytest.fixture(scope="module")
def browser(workdir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # A generous wait per step: on a shared 2-core machine under load the UI takes a minute to
        # list 100 runs; a test that fails still fails, only later.
        context = launch(playwright, workdir / "chromium-profile", timeout_ms=150_000)
        yield context
        context.close()


@pytest.fixture(scope="module")
def tab(browser, ui):
    """One tab for the module, as a person keeps one open: the UI's app (a single-page app whose
    routes are the URL's #fragment) loads and starts once, not once per step (~3-5 s of
    Chromium's CPU each); each step goes to its own URL in it. A failed step leaves the tab on
    about:blank: the next one loads the app afresh."""
    tab = browser.new_page()
    yield tab
    tab.close()


@pytest.fixture
def page(request, browser, tab, shots):
    print(f"screenshots of this step go to {shots.folder}")
    before, failures = set(browser.pages), request.session.testsfailed
    yield tab
    for opened in set(browser.pages) - before:  # a link the step followed into a new tab
        opened.close()
    if request.session.testsfailed > failures:  # the next step starts from a fresh load
        tab.goto("about:blank")
    # Every request any page made so far stayed on loopback (the hosts resolver rule backs this up).
    assert not foreign_hosts(browser.requested_urls), f"UI requested {foreign_hosts(browser.requested_urls)}"


def test_child_run_page_shows_params_and_final_metrics(page, ui, sweep, shots):
    child = sweep.children[-1]
    page.goto(f"{ui.url}/#/experiments/{sweep.experiment_id}/runs/{child.run_id}")
    page.get_by_role("heading", name=child.name).wait_for()
    page.get_by_role("link", name=sweep.parent_name).wait_for()  # "Parent run" in About this run
    close_assistant(page)

    for key in ("optim.lr", "model.width"):
        assert table_value(page, "Search parameters", key) == child.params[key]
    for key in ("final/test_acc", "final/train_loss"):
        shown = table_value(page, "Search metrics", key)
        assert float(shown) == pytest.approx(child.metrics[key], rel=1e-12)
        # The UI prints floats raw; the pipeline rounds what it logs so that they read well.
        assert significant_digits(shown) <= 6, f"{key} shows as {shown}: round it before logging"
    page.get_by_placeholder("Search metrics").fill("final/")
    shots.take(page, "run-overview")


def test_artifacts_tab_renders_the_decision_boundary(page, ui, sweep, shots):
    child = sweep.children[0]
    png = child.artifact_dir / "plots" / "decision_boundary.png"
    page.goto(f"{ui.url}/#/experiments/{sweep.experiment_id}/runs/{child.run_id}")
    page.get_by_role("heading", name=child.name).wait_for()
    close_assistant(page)
    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("plots", exact=True).first.click()
    with page.expect_response(lambda r: "decision_boundary.png" in unquote(r.url)) as fetched:
        page.get_by_text("decision_boundary.png", exact=True).first.click()
    assert fetched.value.ok, f"artifact download answered {fetched.value.status}"

    image = page.locator("img[src^='blob:']").first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    shots.take(page, "artifact-decision-boundary")
    shown_size = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert tuple(shown_size) == png_size(png), "the UI shows a different image than the logged PNG"


def test_make_ui_link_opens_the_sweep_table_sorted_by_test_accuracy(page, ui, sweep, shots):
    page.goto(ui.link)
    page.locator("[role=gridcell][col-id*='Run Name']").first.wait_for()
    close_assistant(page)
    page.get_by_text("Sort: final/test_acc").wait_for()
    shots.take(page, "link-table")
    headers = set(page.locator("[role=columnheader]").all_inner_texts())
    swept = {k for k in sweep.children[0].params
             if len({c.params[k] for c in sweep.children}) > 1}
    assert {"init.name", "optim.lr", "model.width", "seed"} <= swept
    missing = (swept | {"final/test_acc", "final/test_loss", "final/train_loss"}) - headers
    assert not missing, f"the link's table lacks columns {missing}"
    cells = page.locator("[role=gridcell][col-id='metrics.`final/test_acc`']")
    shown = [float(t) for t in cells.all_inner_texts()]
    assert len(shown) >= 10 and shown == sorted(shown, reverse=True), f"not sorted best first: {shown[:12]}"
    assert shown[0] == pytest.approx(max(c.metrics["final/test_acc"] for c in sweep.children))


def test_parent_note_names_the_best_run_and_its_link_opens_it(page, ui, sweep, shots):
    page.goto(f"{ui.url}/#/experiments/{sweep.experiment_id}/runs/{sweep.parent_id}")
    page.get_by_role("heading", name=sweep.parent_name).wait_for()
    close_assistant(page)
    by_id = {c.run_id: c for c in sweep.children}
    # The note's answer, "Best: <configuration>, test acc mean ± std (n)", links that configuration's
    # best run (markdown rendered: a relative #/experiments/<id>/runs/<run id> link).
    link = page.locator("p:has-text('Best:') a[href*='/runs/']").first
    link.wait_for()
    best = by_id.get(link.get_attribute("href").rstrip("/").split("/")[-1])
    assert best is not None, f"the note's best link {link.get_attribute('href')!r} is no child run"
    assert best.name.startswith(link.inner_text().strip()), f"{link.inner_text()!r} links {best.name!r}"
    top = max(c.metrics.get("final/test_acc", 0.0) for c in sweep.children
              if c.name.startswith(link.inner_text().strip()))
    assert best.metrics["final/test_acc"] == top, "the link goes to another seed than the best"
    shots.take(page, "parent-note")
    # MLflow's note renderer may open links in a new tab (target=_blank): follow whichever page
    # the click shows the run in.
    if link.get_attribute("target") == "_blank":
        with page.context.expect_page() as opened:
            link.click()
        shown = opened.value
    else:
        link.click()
        shown = page
    shown.get_by_role("heading", name=best.name).wait_for()
    assert best.run_id in shown.url
    shown.get_by_role("link", name=sweep.parent_name).wait_for()  # the child page, with its Parent run


def test_chart_view_plots_every_run_of_the_sweep(page, ui, sweep, shots):
    """Every child of the sweep is a curve of train/loss, after "Load more" (100 runs a page).

    Counted per run, by run id, in the figure Plotly draws (not by distinct SVG paths: stalled
    runs draw pixel-identical lines). The shared view of the link shows all runs (SHOW_ALL), not
    the UI's first 10; hiding one run with its eye icon must take exactly that curve away.
    """
    page.goto(ui.link.replace("compareRunsMode=TABLE", "compareRunsMode=CHART"))
    page.get_by_text(re.compile(r"^[1-9]\d* matching runs$")).wait_for()
    close_assistant(page)
    card = chart_card(page, "train/loss")  # one chart left to redraw as runs arrive
    load_more(page, len(sweep.children))
    by_id = {c.run_id: c for c in sweep.children}
    curves, traces, drawn = wait_for_runs(card, set(by_id))
    shots.take(page, "charts-all-runs")
    missing = sorted(by_id[i].name for i in set(by_id) - set(curves))
    assert not missing, f"train/loss plots {len(curves)} of {len(by_id)} runs; missing {missing[:5]}"
    assert set(curves) == set(by_id), f"train/loss plots runs outside the sweep: {set(curves) - set(by_id)}"
    assert drawn == traces, f"{traces} traces but {drawn} SVG lines drawn"
    for run_id, values in curves.items():  # each curve is that run's own history
        last = by_id[run_id].metrics["train/loss"]
        assert len(values) == UI_EPOCHS and values[-1] == pytest.approx(last), \
            f"{by_id[run_id].name}: the curve is not its train/loss history"

    hidden = max(sweep.children, key=lambda c: c.metrics["final/test_acc"])  # on the list's first screen
    toggle_run_visibility(page, hidden.name)
    curves, _, _ = wait_for_runs(card, set(by_id) - {hidden.run_id}, timeout_s=30)
    shots.take(page, "charts-one-run-hidden")
    assert set(by_id) - set(curves) == {hidden.run_id}, "hiding one run did not take exactly its curve away"


def test_image_grid_compares_decision_boundaries_across_runs(page, ui, sweep, shots):
    page.goto(ui.link.replace("compareRunsMode=TABLE", "compareRunsMode=CHART"))
    close_assistant(page)
    page.get_by_placeholder("Search metric charts").fill("decision_boundary")
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
        has=page.get_by_text("decision_boundary", exact=True)).first
    card.wait_for()
    images = card.locator("img")
    images.first.wait_for()
    deadline = time.monotonic() + 60
    while images.count() < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    shots.take(page, "image-grid")
    assert images.count() > 1, "the image grid shows the decision boundary of one run or none"
    loaded = images.evaluate_all("imgs => imgs.filter(i => i.complete && i.naturalWidth > 0).length")
    assert loaded > 1, f"only {loaded} boundary images loaded"
