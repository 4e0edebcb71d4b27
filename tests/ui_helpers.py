"""Drive the MLflow UI (3.17) in headless Debian Chromium, the way a person browses a sweep.

Used by tests/test_ui_browser.py. Selectors are the UI's own roles, placeholders and test ids;
each step waits for a selector or a text, never for network idle (the UI polls forever).
"""

from __future__ import annotations

import importlib.util
import struct
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import urlparse

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root in a container, where the sandbox cannot start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Chromium looks up Google hosts at start; resolve nothing but loopback.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]
# The UI opens in "GenAI" mode unless this local-storage key (JSON-encoded) says otherwise.
ML_MODE_SCRIPT = "window.localStorage.setItem('mlflow.workflowType_v1', JSON.stringify('machine_learning'))"
VIEWPORT = {"width": 1440, "height": 900}


def browser_missing_reason() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    if importlib.util.find_spec("playwright") is None:
        return "playwright (Python client) is not installed in this environment"
    if not CHROMIUM.exists():
        return f"no browser at {CHROMIUM}: apt-get install chromium (Debian package) to run the UI test"
    return None


def launch(playwright, user_data_dir: Path, timeout_ms: int = 60_000):
    """A persistent Chromium context on a fresh profile, in ML mode, logging every request URL.

    Returns the context; `context.requested_urls` lists the URLs its pages asked for.
    """
    context = playwright.chromium.launch_persistent_context(
        str(user_data_dir), executable_path=str(CHROMIUM), headless=True,
        args=LAUNCH_ARGS, viewport=VIEWPORT,
    )
    context.set_default_timeout(timeout_ms)
    context.add_init_script(ML_MODE_SCRIPT)
    context.requested_urls = []
    context.on("request", lambda request: context.requested_urls.append(request.url))
    return context


def foreign_hosts(urls: list[str]) -> set[str]:
    """Hosts other than loopback among http(s)/ws(s) URLs (blob:, data: are in-page)."""
    hosts = {urlparse(u).hostname for u in urls if urlparse(u).scheme in ("http", "https", "ws", "wss")}
    return hosts - {"127.0.0.1", "localhost", None}


class Shots:
    """Numbered screenshots of each step in one folder; every path is printed (shown on failure)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count = 0

    def take(self, page, name: str, locator=None) -> Path:
        self.count += 1
        path = self.folder / f"{self.count:02d}-{name}.png"
        (locator or page).screenshot(path=str(path))
        print(f"screenshot: {path}")
        return path


def close_assistant(page) -> None:
    """Close the 'MLflow Assistant' side panel when it is open (it hides half the page)."""
    close = page.get_by_role("button", name="Close", exact=True)
    if close.count() and close.first.is_visible():
        close.first.click()


def open_runs(page, base_url: str, experiment_id: str) -> None:
    """The experiment's runs list (table view), ready once a run-name cell is drawn."""
    page.goto(f"{base_url}/#/experiments/{experiment_id}/runs")
    page.locator("[role=gridcell][col-id*='Run Name']").first.wait_for()
    close_assistant(page)


def run_row(page, run_name: str):
    """The runs-table row whose Run Name cell reads exactly `run_name`."""
    return page.locator("[role=row]").filter(has=page.get_by_text(run_name, exact=True))


def expand_parent(page, parent_name: str, a_child_name: str) -> None:
    """Click the [+] next to the parent run so that its children are listed under it.

    The UI remembers expanded parents (local storage), so click only when the child is hidden:
    the parent and its children arrive in the same search response, hence render together.
    """
    row = run_row(page, parent_name)
    row.first.wait_for()
    if run_row(page, a_child_name).count() == 0:
        row.locator("button[data-component-id*=runnamecellrenderer]").first.click()
    page.get_by_text(a_child_name, exact=True).first.wait_for()


def table_value(page, search_placeholder: str, key: str) -> str:
    """Type `key` into a run-page table's search box; return the text of its Value cell."""
    page.get_by_placeholder(search_placeholder).fill(key)
    row = page.get_by_role("row").filter(has=page.get_by_text(key, exact=True))
    row.first.wait_for()
    cells = row.first.get_by_role("cell")
    return cells.nth(cells.count() - 1).inner_text().strip()


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG file's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def chart_card(page, metric: str):
    """The chart-view card titled exactly `metric` (after filtering the charts by its name)."""
    page.get_by_placeholder("Search metric charts").fill(metric)
    card = page.get_by_test_id("experiment-view-compare-runs-card").filter(
        has=page.get_by_text(metric, exact=True)
    )
    card.first.locator(".js-plotly-plot g.trace").first.wait_for()
    return card.first


# Plotly keeps a chart's figure on its graph div: `gd.data`, one trace per run and metric, with
# the run id as `uuid` (the UI adds a second, hover-less trace per run for highlighting). The SVG
# lines cannot count runs: curves that differ by less than a pixel (the stalled runs of a sweep)
# get identical paths.
_CHART_RUNS_JS = """gd => ({
  traces: (gd.data || []).filter(t => t.visible !== false && t.visible !== 'legendonly')
    .map(t => ({uuid: t.uuid, y: Array.from(t.y || []).filter(v => v !== null)})),
  drawn: [...gd.querySelectorAll('g.trace.scatter path.js-line')].filter(p => p.getAttribute('d')).length,
})"""


class ChartRuns(NamedTuple):
    curves: dict[str, list[float]]  # run id -> the values plotted for it
    traces: int  # visible traces in the figure
    drawn: int  # SVG lines with points


def chart_runs(card) -> ChartRuns:
    """The runs a line-chart card plots, read from the figure Plotly draws."""
    shown = card.locator(".js-plotly-plot").first.evaluate(_CHART_RUNS_JS)
    curves = {t["uuid"]: t["y"] for t in shown["traces"]}
    return ChartRuns(curves, len(shown["traces"]), shown["drawn"])


def wait_for_runs(card, run_ids: set[str], timeout_s: float = 60.0) -> ChartRuns:
    """Poll `chart_runs` until the chart plots exactly `run_ids` (or the time is up); return it.

    Plotly redraws as each run's history arrives, so a single look can be early.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        shown = chart_runs(card)
        if set(shown.curves) == run_ids or time.monotonic() > deadline:
            return shown
        time.sleep(0.5)


def load_more(page, n: int, timeout_s: float = 120.0) -> None:
    """Press the run list's "Load more" (the UI fetches 100 runs a page) until "<n> matching runs".

    The button sits in AG Grid's virtualised rows: a real click waits for it to scroll into view
    and can hang while the grid re-renders on a busy machine; its click event does the same.
    """
    counter = page.get_by_text(f"{n} matching runs")
    deadline = time.monotonic() + timeout_s
    while not counter.count() and time.monotonic() < deadline:
        more = page.get_by_role("button", name="Load more")
        if more.count() and more.first.get_attribute("loading") != "true":  # not while it fetches
            more.first.dispatch_event("click")
        time.sleep(2)
    counter.wait_for()


def toggle_run_visibility(page, run_name: str) -> None:
    """Click the eye icon ("Hide run" / show) in front of a run in the run list."""
    row = run_row(page, run_name).first
    row.locator("label", has=page.locator(".is-visibility-toggle-checkbox")).click()
