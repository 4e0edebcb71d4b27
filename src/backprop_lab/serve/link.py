"""The link `make ui` prints: a sweep's runs as a table of swept params and final metrics, best first.

MLflow 3.17's experiment page reads these from its URL (checked in the UI's JS bundle and in a
browser, see docs/ui.md):
- `searchFilter`, `orderByKey`, `orderByAsc`, `startTime`, `lifecycleFilter`, ... (the search bar
  and the sort), `compareRunsMode` (TABLE / CHART / ARTIFACT: list, chart or image-grid view),
  `workflowType=machine_learning` (the "Model training" side rather than GenAI);
- nothing else. Columns, the chart view's visible runs (`runsHiddenMode`, "first 10" by default),
  chart sections live in the page's local state. The one way to set them from outside is MLflow's
  own "Share" mechanism: an experiment tag `mlflow.sharedViewState.<key>` holding the view as JSON
  (search facets + UI state) and `?viewStateShareKey=<key>` in the URL. The UI ignores the shared
  view when any search facet is also in the URL, so the link carries only the key and the view
  mode.

`sweep_view(client, experiment)` writes that tag (idempotent: the key is a hash of the view) and
returns the link's path; the only write `make ui` does to the store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from urllib.parse import urlencode

SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow's prefix (the "Share" button writes the same)
SORT_METRIC = "final/test_acc"
PARENT_FILTER = "tags.`bpl.role` = 'parent'"


@dataclass(frozen=True)
class SweepView:
    experiment_id: str
    experiment_name: str
    parent_run_id: str | None
    params: tuple[str, ...]  # swept params (more than one value among the sweep's runs)
    metrics: tuple[str, ...]  # final/* metrics
    share_key: str
    path: str  # "#/experiments/<id>/runs?viewStateShareKey=...": append to the server's URL

    def url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{self.path}"


def column(kind: str, key: str) -> str:
    """The UI's canonical column / sort key: params.`optim.lr`, metrics.`final/test_acc`."""
    return f"{kind}.`{key}`"


def newest_sweep_experiment(client) -> str | None:
    """Name of the experiment holding the most recently started sweep parent, None without one."""
    experiments = client.search_experiments()
    if not experiments:
        return None
    runs = client.search_runs([e.experiment_id for e in experiments], PARENT_FILTER,
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        return None
    return client.get_experiment(runs[0].info.experiment_id).name


def view_state(params, metrics, parent_run_id: str | None) -> dict:
    """The shared view: the sweep's runs (children of its parent), swept params and final metrics as
    columns, best final test accuracy first, and every run (not the first 10) in the charts."""
    return {
        "searchFilter": f"tags.`mlflow.parentRunId` = '{parent_run_id}'" if parent_run_id else "",
        "orderByKey": column("metrics", SORT_METRIC),
        "orderByAsc": False,
        "selectedColumns": [column("params", p) for p in params] + [column("metrics", m) for m in metrics],
        "runsHiddenMode": "SHOW_ALL",
    }


def sweep_view(client, experiment_name: str | None = None, mode: str = "TABLE") -> SweepView | None:
    """Write the shared view of `experiment_name` (default: the newest sweep's) and return it.

    None when the store holds no sweep (no parent run) and no experiment was named.
    Raises LookupError with a one-line message when a named experiment does not exist.
    """
    name = experiment_name or newest_sweep_experiment(client)
    if name is None:
        return None
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        known = sorted(e.name for e in client.search_experiments())
        raise LookupError(f"EXPERIMENT={name} is not in the store; known: {', '.join(known) or 'none'}")
    eid = experiment.experiment_id
    parents = client.search_runs([eid], PARENT_FILTER, order_by=["attributes.start_time DESC"], max_results=1)
    parent_id = parents[0].info.run_id if parents else None
    flt = f"tags.`mlflow.parentRunId` = '{parent_id}'" if parent_id else ""
    runs = client.search_runs([eid], flt, max_results=5000)
    values: dict[str, set[str]] = {}
    for r in runs:
        for k, v in r.data.params.items():
            values.setdefault(k, set()).add(v)
    params = tuple(sorted(k for k, vs in values.items() if len(vs) > 1))
    metrics = tuple(sorted({k for r in runs for k in r.data.metrics
                            if k.startswith("final/") and k != "final/epochs_run"},
                           key=lambda k: (k != SORT_METRIC, k)))
    state = view_state(params, metrics, parent_id)
    text = json.dumps(state, sort_keys=True)
    key = "bpl-" + hashlib.sha256(text.encode()).hexdigest()[:16]
    if experiment.tags.get(SHARED_VIEW_TAG + key) != text:
        client.set_experiment_tag(eid, SHARED_VIEW_TAG + key, text)
    query = urlencode({"viewStateShareKey": key, "compareRunsMode": mode, "workflowType": "machine_learning"})
    return SweepView(eid, name, parent_id, params, metrics, key, f"#/experiments/{eid}/runs?{query}")
