"""The end of a sweep, from the jobs' return values: one table, then analysis.summary's readers.

`frame(jobs, rows)` is the one table (a row per job, from the `RunSummary` each job returned, or
for a skipped job the earlier FINISHED run it reuses): the swept keys under their short names
(config/names.py) + seed, status, test metrics, run id and name, in the columns
`backprop_lab.analysis.summary` ranks. `Report` calls summary's functions (one definition of
best, ties and the figure) for the terminal and the parent run. No store, no Hydra here.
"""

from __future__ import annotations

import io
import math
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from backprop_lab.analysis import summary

STATUSES = ("finished", "diverged", "failed", "skipped")
GALLERY_EACH = 4  # the gallery shows every configuration up to 8, else the 4 best and 4 worst


def frame(jobs: list[Any], rows: list[Any], keys: list[str]) -> pd.DataFrame:
    """One row per job: `keys` (+ seed), status (a reused run: `skipped`, or `diverged` when the
    run it reuses diverged), final/test_acc, final/test_loss, run_id, run_name, n_test, seconds,
    gradcheck_max_rel_err, reused."""
    records = []
    for job, r in zip(jobs, rows, strict=True):
        rc = job.run_config
        values = {**job.values, **r.values}
        record = {k: values.get(k) for k in keys}
        record["seed"] = r.seed if r.seed is not None else rc.seed
        reused = r.status == "skipped"
        record.update(
            status="diverged" if reused and r.metrics.get("bpl.status") == "diverged" else r.status,
            reused=reused, run_id=r.run_id or "", run_name=r.run_name,
            n_test=int(round(rc.data.n_samples * rc.data.test_fraction)), seconds=r.seconds,
            gradcheck_max_rel_err=_num(r.gradcheck_max_rel_err))
        record[summary.METRIC] = _num(r.test_acc)
        record[summary.SECONDARY] = _num(r.test_loss)
        records.append(record)
    columns = [*keys, *([] if "seed" in keys else ["seed"]), "status", "reused", summary.METRIC,
               summary.SECONDARY, "run_id", "run_name", "n_test", "gradcheck_max_rel_err", "seconds"]
    return pd.DataFrame.from_records(records, columns=columns)


def _num(value: Any) -> float:
    return float(value) if value is not None else math.nan


@dataclass
class Report:
    """The readers of one finished sweep: `keys` = swept short names, `per` = the preset's question."""

    df: pd.DataFrame
    keys: list[str]
    per: list[str]
    title: str

    def text(self) -> str:
        return summary.text_summary(self.df, self.keys, self.per, title=self.title)

    def note(self, experiment_id: str) -> str:
        return summary.note_markdown(self.df, self.keys, self.per, title=self.title,
                                     link=lambda run_id: f"#/experiments/{experiment_id}/runs/{run_id}")

    def best(self) -> pd.Series | None:
        """The best configuration over everything (rank 1), or None when no run finished."""
        table = summary.rank(self.df, self.keys)
        scored = table[table["n"] > 0]
        return scored.iloc[0] if len(scored) else None

    def best_run_acc(self, best: pd.Series) -> float:
        hit = self.df.loc[self.df["run_id"] == best["best_run_id"], summary.METRIC]
        return float(hit.iloc[0]) if len(hit) else math.nan

    def summary_figure(self) -> Any:
        return summary.summary_figure(self.df, self.keys, self.per, title=self.title)

    def gallery_figure(self, rows: list[Any]) -> Any:
        """The returned decision boundaries of summary.gallery_picks' configurations (every one,
        or the best and the worst), each its best seed's; None when no job returned one
        (skipped jobs return none)."""
        import matplotlib.image as mpimg

        from backprop_lab.figures import plots

        pngs = {r.run_id: r.boundary_png for r in rows if r.run_id and r.boundary_png}
        if not pngs:
            return None
        picks = summary.gallery_picks(summary.rank(self.df, self.keys), n=GALLERY_EACH)
        picks = picks[picks["best_run_id"].isin(list(pngs))]
        if picks.empty:
            return None
        images = [mpimg.imread(io.BytesIO(pngs[rid]), format="png") for rid in picks["best_run_id"]]
        return plots.gallery_figure(images, list(picks["title"]),
                                    title=f"{self.title}: decision boundaries, best and worst")

    def children_csv(self) -> str:
        """sweep/children.csv: one line per job (pandas reads it as is)."""
        return self.df.to_csv(index=False)


def save_png(figure: Any, path: Path) -> bool:
    """Write a figure as PNG at its own dpi (what MlflowClient.log_figure wrote), zlib level 1
    (~25 % less time than the default level, a slightly larger file); False for no figure."""
    if figure is None:
        return False
    figure.savefig(path, format="png", pil_kwargs={"compress_level": 1})
    return True


def draw_aside(make: Callable[[], Any], path: Path) -> Callable[[], None]:
    """Draw `make()` into `path` (save_png) in a forked child while this process goes on; the
    returned `wait()` joins it. Where the child failed (or there is no os.fork) `wait()` draws
    here, so an error is raised here as it would have been without the child.

    The end of a sweep is serial (its workers have exited): the summary figure, ~100 text cells,
    is most of it and is drawn on the idle core. The child touches no store and leaves with
    os._exit (no atexit handler, no finaliser, no stdio buffer flushed twice)."""
    if not hasattr(os, "fork"):
        return lambda: _save_here(make, path)
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.SIG_DFL)  # Ctrl-C ends it at once, without a trace
            save_png(make(), path)
            code = 0
        finally:
            os._exit(code)

    def wait() -> None:
        try:
            _, status = os.waitpid(pid, 0)
        except BaseException:  # Ctrl-C while waiting: the child is not needed any more
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise
        if os.waitstatus_to_exitcode(status) != 0:
            _save_here(make, path)

    return wait


def _save_here(make: Callable[[], Any], path: Path) -> None:
    path.unlink(missing_ok=True)  # a child killed while writing
    save_png(make(), path)
