"""The end of a sweep, read back from the store: one row per job, table, children.csv, heatmaps.

Used by `backprop_lab.sweep.owner` in the driver process; no Hydra here. A row is the run this sweep
made for the job or, for a skipped job, the FINISHED run of the same config key it reused.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from backprop_lab.figures import plots
from backprop_lab.tracking.run import run_name

STATUSES = ("finished", "diverged", "failed", "skipped")
# Keys whose values a heatmap may average or lay out; any other swept key makes cells meaningless.
_HEATMAP_KEYS = {"optim.lr", "model.width", "init", "seed"}


@dataclass
class Job:
    """One job of the sweep: its overrides (as Hydra passes them) and its validated config."""

    overrides: list[str]
    run_config: Any  # backprop_lab.config.schema.RunConfig
    config_key: str


@dataclass
class Row:
    job: Job
    status: str  # one of STATUSES
    run: Any = None  # mlflow Run, None when the job never created one

    def metric(self, key: str) -> float:
        return float(self.run.data.metrics.get(key, math.nan)) if self.run else math.nan

    @property
    def name(self) -> str:
        return self.run.info.run_name if self.run else run_name(self.job.overrides)

    @property
    def run_id(self) -> str:
        return self.run.info.run_id if self.run else ""

    @property
    def gradcheck_err(self) -> float:
        trained = self.metric("gradcheck/trained/max_rel_err")
        return trained if math.isfinite(trained) else self.metric("gradcheck/init/max_rel_err")

    @property
    def seconds(self) -> float:
        wall = self.metric("time/wall_s")
        return wall if math.isfinite(wall) else self.metric("time/total_s")


def task_overrides(overrides: list[str]) -> list[str]:
    """The job's overrides minus the preset selection itself (`+sweep=<name>`)."""
    return [o for o in overrides if not o.lstrip("+~").startswith("sweep=")]


def swept_values(jobs: list[Job]) -> dict[str, list[str]]:
    """Override key -> its distinct values in job order, for the keys that vary across jobs."""
    values: dict[str, list[str]] = {}
    for job in jobs:
        for override in task_overrides(job.overrides):
            key, _, value = override.lstrip("+~").partition("=")
            seen = values.setdefault(key, [])
            if value not in seen:
                seen.append(value)
    return {k: v for k, v in values.items() if len(v) > 1}


def all_runs(client: Any, experiment_id: str, flt: str) -> list[Any]:
    """Every run of the experiment matching flt (pages through search_runs)."""
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=flt, max_results=1000,
                                  page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out


def collect_rows(client: Any, experiment_id: str, parent_id: str, jobs: list[Job],
                 started_ms: int) -> list[Row]:
    """One row per job, from the store (the driver never sees the jobs' return values)."""
    by_key: dict[str, list[Any]] = {}
    runs = all_runs(client, experiment_id, "tags.`bpl.role` != 'parent'")
    for run in sorted(runs, key=lambda r: r.info.start_time, reverse=True):  # newest first
        by_key.setdefault(run.data.tags.get("bpl.config_key"), []).append(run)
    rows = []
    for job in jobs:
        candidates = by_key.get(job.config_key, [])
        mine = [r for r in candidates if r.data.tags.get("mlflow.parentRunId") == parent_id
                and r.info.start_time >= started_ms]
        done = [r for r in candidates if r.info.status == "FINISHED"]
        if mine:
            run = mine[0]
            status = run.data.tags.get("bpl.status", "")
            if run.info.status != "FINISHED" or status not in STATUSES:
                status = "failed"  # FAILED, KILLED, or a run that never ended
            rows.append(Row(job, status, run))
        elif done:
            rows.append(Row(job, "skipped", done[0]))
        else:  # the job failed before it created a run (its line says why)
            rows.append(Row(job, "failed"))
    return rows


def best_row(rows: list[Row]) -> Row | None:
    """Highest final test accuracy among runs that finished (diverged ones excluded)."""
    ok = [r for r in rows if r.status in ("finished", "skipped") and r.run is not None
          and r.run.data.tags.get("bpl.status") == "finished"
          and math.isfinite(r.metric("final/test_acc"))]
    return max(ok, key=lambda r: r.metric("final/test_acc"), default=None)


def table(rows: list[Row]) -> str:
    width = max([len(r.name) for r in rows] + [3])
    lines = [f"{'run':<{width}}  test_acc  gc_max_err  status         s"]
    for r in rows:
        acc, err, secs = r.metric("final/test_acc"), r.gradcheck_err, r.seconds
        lines.append(f"{r.name:<{width}}  {acc:8.4f}  {err:10.2e}  {r.status:<9} {secs:6.2f}")
    return "\n".join(lines)


def seed_lines(rows: list[Row]) -> list[str]:
    """Test accuracy mean +- sample std (ddof=1) over seeds, per setting, if seeds are swept."""
    swept = swept_values([r.job for r in rows])
    if "seed" not in swept:
        return []
    groups: dict[str, list[float]] = {}
    for r in rows:
        setting = " ".join(o for o in task_overrides(r.job.overrides)
                           if o.split("=")[0] in swept and not o.startswith("seed=")) or "all"
        groups.setdefault(setting, []).append(r.metric("final/test_acc"))
    out = []
    for setting, accs in groups.items():
        a = np.array([x for x in accs if math.isfinite(x)])
        mean = a.mean() if a.size else math.nan
        std = a.std(ddof=1) if a.size > 1 else math.nan
        out.append(f"  {setting}: test acc {mean:.4f} +- {std:.4f} over {a.size} seeds")
    return out


def children_csv(rows: list[Row]) -> str:
    """sweep/children.csv: one line per job, the swept keys as columns (pandas reads it as is)."""
    swept = list(swept_values([r.job for r in rows]))
    metric_keys = ["final/test_acc", "final/train_acc", "final/test_loss", "final/train_loss"]
    header = ["run_id", "run_name", "status", *swept, *metric_keys, "gradcheck_max_rel_err",
              "seconds", "config_key"]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        values = dict(o.lstrip("+~").split("=", 1) for o in task_overrides(r.job.overrides))
        writer.writerow([r.run_id, r.name, r.status, *(values.get(k, "") for k in swept),
                         *(r.metric(k) for k in metric_keys), r.gradcheck_err, r.seconds,
                         r.job.config_key])
    return buf.getvalue()


def heatmaps(rows: list[Row]) -> list[tuple[str, Any]]:
    """(init scheme, figure): mean final test accuracy, rows = learning rate, columns = width.

    Only when the sweep varies nothing but lr, width, init and seed (seeds are averaged);
    a cell mixing datasets or optimizers would mean nothing. Missing/failed cells show n/a.
    """
    swept = set(swept_values([r.job for r in rows]))
    if not swept & {"optim.lr", "model.width"} or swept - _HEATMAP_KEYS:
        return []
    cells: dict[tuple[str, float, int], list[float]] = {}
    for r in rows:
        rc = r.job.run_config
        acc = r.metric("final/test_acc")
        cells.setdefault((rc.init.name, rc.optim.lr, rc.model.width), []).append(acc)
    lrs = sorted({k[1] for k in cells})
    widths = sorted({k[2] for k in cells})
    out = []
    for init in dict.fromkeys(k[0] for k in cells):
        values = np.full((len(lrs), len(widths)), np.nan)  # (n_lr, n_width)
        for (scheme, lr, width), accs in cells.items():
            finite = [a for a in accs if math.isfinite(a)]
            if scheme == init and finite:
                values[lrs.index(lr), widths.index(width)] = np.mean(finite)
        figure = plots.heatmap_figure(values, lrs, widths, title=f"final test accuracy, init={init}",
                                      cbar_label="test accuracy", fmt="{:.3f}",
                                      xlabel="hidden width", ylabel="learning rate")
        out.append((init, figure))
    return out
