"""The MLflow UI as a person sees it: a real tiny sweep, a real `mlflow ui`, headless Chromium.

One module-wide set-up (about a minute): `scripts/train.py --multirun` writes a parent and four
children into a temporary SQLite store, `serve.start_mlflow("ui", ...)` (what `make ui` runs)
serves it on a free 127.0.0.1 port, and Debian's Chromium browses it. Each test is one step a
user takes; screenshots of every step go to `<tmp>/ui/shots/` and their paths are printed, so a
failing test shows where to look. Without Chromium or Playwright the tests are skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from ui_helpers import (
    Shots,
    browser_missing_reason,
    chart_card,
    close_assistant,
    expand_parent,
    foreign_hosts,
    launch,
    open_runs,
    png_size,
    run_row,
    table_value,
    wait_for_lines,
)

REPO = Path(__file__).resolve().parents[1]
MISSING = browser_missing_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(MISSING is not None, reason=f"browser test skipped: {MISSING}"),
]
EPOCHS = 40
# 2 learning rates x 2 widths, one init: a parent and four children on the default preset.
SWEEP_OVERRIDES = ["+sweep=default", "init=he", "seed=0", "optim.lr=0.1,1.0", "model.width=2,16",
                   f"train.epochs={EPOCHS}"]


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
def sweep(workdir) -> Sweep:
    """Run the project's own multirun into a temp store and read back what it logged."""
    store_uri = f"sqlite:///{workdir / 'mlflow.db'}"
    artifact_root = workdir / "mlartifacts"
    cmd = [
        sys.executable, "scripts/train.py", "--multirun", *SWEEP_OVERRIDES,
        f"tracking.uri={store_uri}", f"tracking.artifact_root={artifact_root}",
        f"hydra.sweep.dir={workdir / 'multirun'}",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (f"sweep failed ({' '.join(cmd)}):\n{done.stdout[-2000:]}\n"
                                  f"{done.stderr[-3000:]}")

    from mlflow.tracking import MlflowClient

    client = MlflowClient(store_uri)
    experiment = client.get_experiment_by_name("backprop-lab/default")
    assert experiment is not None, "the sweep did not create experiment backprop-lab/default"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("bpl.role") == "parent"]
    assert len(parents) == 1, f"expected one parent run, got {[r.info.run_name for r in parents]}"
    parent = parents[0]
    children = [
        Child(r.info.run_id, r.info.run_name, r.data.params, r.data.metrics,
              Path(unquote(urlparse(r.info.artifact_uri).path)))
        for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id
    ]
    assert len(children) == 4, f"expected 4 children, got {[c.name for c in children]}"
    note = parent.data.tags.get("mlflow.note.content", "")
    return Sweep(store_uri, artifact_root, experiment.experiment_id, parent.info.run_name, note,
                 sorted(children, key=lambda c: c.name))


@pytest.fixture(scope="module")
def ui(sweep, workdir):
    """`mlflow ui` over the sweep's store on a free loopback port (the code `make ui` runs)."""
    from backprop_lab.env import free_port
    from backprop_lab.serve.server import start_mlflow

    handle = start_mlflow("ui", store_uri=sweep.store_uri, artifact_root=str(sweep.artifact_root),
                          port=free_port(), log_path=workdir / "mlflow-ui.log")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def browser(workdir):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = launch(playwright, workdir / "chromium-profile")
        yield context
        context.close()


@pytest.fixture
def page(browser, ui, shots):
    print(f"screenshots of this step go to {shots.folder}")
    page = browser.new_page()
    yield page
    page.close()
    # Every request any page made so far stayed on loopback (the hosts resolver rule backs this up).
    assert not foreign_hosts(browser.requested_urls), f"UI requested {foreign_hosts(browser.requested_urls)}"


def test_runs_list_shows_the_parent_and_its_children(page, ui, sweep, shots):
    open_runs(page, ui.url, sweep.experiment_id)
    assert run_row(page, sweep.parent_name).count() == 1, f"no row named {sweep.parent_name!r}"
    page.get_by_text(f"{1 + len(sweep.children)} matching runs").wait_for()
    shots.take(page, "runs-collapsed")

    expand_parent(page, sweep.parent_name, sweep.children[0].name)
    for child in sweep.children:
        # Readable names built from the swept keys (docs/architecture.md).
        assert re.search(r"lr=\S+ width=\d+", child.name), child.name
        assert run_row(page, child.name).count() == 1, f"child {child.name!r} is not listed"
    shots.take(page, "runs-expanded")


def test_child_run_page_shows_params_and_final_metrics(page, ui, sweep, shots):
    child = sweep.children[-1]
    open_runs(page, ui.url, sweep.experiment_id)
    expand_parent(page, sweep.parent_name, child.name)
    run_row(page, child.name).get_by_role("link", name=child.name).click()  # as a user would
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


def test_chart_view_draws_loss_curves_of_several_runs(page, ui, sweep, shots):
    open_runs(page, ui.url, sweep.experiment_id)
    expand_parent(page, sweep.parent_name, sweep.children[0].name)
    page.locator("label:has(input[value=CHART])").click()
    card = chart_card(page, "train/loss")
    lines = wait_for_lines(card, len(sweep.children))
    shots.take(page, "charts-train-loss")
    # One distinct curve per child (the parent logs no train/loss, so it draws nothing).
    assert len(lines) == len(sweep.children), f"train/loss chart draws {len(lines)} curves"
    for d in lines:
        # Plotly drops collinear points, so a vertex count says little beyond "a curve, not a dot".
        assert d.count("L") >= 2, f"a train/loss trace is not a curve: {d[:80]}"

    # Full screen, the way one reads the chart: every child is named in the legend.
    card.locator("[data-component-id=fullscreen_button_chartcard]").click()
    dialog = page.get_by_role("dialog")
    assert len(wait_for_lines(dialog, len(sweep.children))) == len(sweep.children)
    shots.take(page, "charts-train-loss-fullscreen")
    legend = dialog.inner_text()
    for child in sweep.children:
        assert f"{child.name} (train/loss)" in legend, f"{child.name!r} is missing from the chart legend"


def test_parent_run_page_describes_the_sweep(page, ui, sweep, shots):
    open_runs(page, ui.url, sweep.experiment_id)
    run_row(page, sweep.parent_name).get_by_role("link", name=sweep.parent_name).click()
    page.get_by_role("heading", name=sweep.parent_name).wait_for()
    close_assistant(page)
    # The description (markdown, so no backticks on screen) says what the sweep was.
    assert sweep.parent_note, "the parent run has no description (mlflow.note.content)"
    page.get_by_text(re.compile(r"^Best: ")).first.wait_for()  # the note's answer (markdown, rendered)
    for child in sweep.children:  # "Child runs" in About this run links every child
        page.get_by_role("link", name=child.name).first.wait_for()
    shots.take(page, "parent-overview")

    page.get_by_role("tab", name="Artifacts").click()
    page.get_by_text("sweep", exact=True).first.click()
    heatmap = page.get_by_text("summary.png", exact=True).first
    heatmap.click()
    image = page.locator("img[src^='blob:']").first
    image.wait_for()
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
    shots.take(page, "parent-heatmap")
