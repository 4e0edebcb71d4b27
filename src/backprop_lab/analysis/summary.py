"""One definition of "best", of "ties" and of the comparison figure, for every reader of a sweep.

The terminal and the parent run (`sweep/owner.py`) and the notebooks call these functions; nothing
else ranks configurations. pandas + numpy here (no mlflow, no hydra); the figures are drawn by
`figures/plots.py` from the arrays that :func:`grid` hands over.

Input `runs`: one row per run, with a column per key under its short name (config/names.py:
`lr`, `width`, `depth`, `init`, `opt`, `data`, `act`, `epochs`), `seed`, `status`
(finished|diverged|failed|skipped), the metrics under their MLflow names (`final/test_acc`,
`final/test_loss`), `run_id`, `run_name` and optionally `n_test` (test points of the run's data
set). `analysis.load_runs` returns exactly these columns.

API
- :func:`rank` (runs, keys) -> one row per configuration, best first (columns below).
- :func:`answer` (runs, keys, per) -> the preset's question: one ranking per value of `per`
  (`per: data` best configuration per data set, `per: opt` per optimizer, `per: init` per
  scheme); without `per`, :func:`rank` (with only `width` + `seed` swept: the spread per width).
- :func:`layout` (keys, per) -> which keys make the figure's rows, columns and panels.
- :func:`grid` (ranking, layout) -> the arrays of the summary figure and of the text heatmap.
- :func:`summary_figure`, :func:`text_summary`, :func:`note_markdown`: the figure, the terminal's
  summary and the parent run's description (markdown), all from the same ranking.
- :func:`swept_keys` (runs) -> the short-name columns that vary (for the notebooks).
- :func:`gallery_picks` (ranking) -> the configurations (best and worst) whose decision boundaries
  `figures.plots.gallery_figure` tiles, with their titles.

The rules (:data:`RULE` says them in one sentence)
- A configuration is one combination of `keys`; `seed` is never a key (a mean is over seeds).
- Scored runs: status finished or skipped (a job that reused an earlier FINISHED run: pass that
  run's own status when it diverged) with a finite metric. Diverged runs never enter a mean (their
  final/* repeat the last epoch before the overflow) nor do failed ones; both are counted.
- `mean`, `std` (ddof=1; NaN for one run), `sem` = std / sqrt(n) of the metric over scored runs.
- Ties: configurations a and b are tied when |mean_a - mean_b| <= max(sqrt(sem_a^2 + sem_b^2),
  1 / n_test): one combined standard error, never less than one test point. Accuracy is counted
  in test points (80 on the default data: 1.25 % each), so three seeds often have std 0 and a SE
  alone would split 1.000 from 0.988 ("one point better"); a single seed has no SE at all (the
  test-point bound alone; without n_test only equal means tie). Groups form top-down:
  the highest mean leads group 1 and takes every configuration tied with it; the highest mean not
  yet placed leads group 2; and so on (a tie is with the group's leader, never chained).
- Order: by tie group; inside a group by the secondary criterion, the mean final test loss
  (lowest first), which every summary states; rank 1 is "best", `tied` marks its whole group.

`rank` columns: keys..., n (scored runs), n_diverged, n_failed, mean, std, sem, secondary (mean
of the secondary metric), best_run_id, best_run_name (the configuration's best seed: highest
metric, then lowest secondary), rank (1.. for scored configurations, <NA> otherwise), tie_group
(same), tied (bool: in the best's group). Configurations without a scored run come last.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from backprop_lab.config.names import SHORT_NAMES, order, short_name

METRIC = "final/test_acc"
SECONDARY = "final/test_loss"
SCORED_STATUSES = ("finished", "skipped")
RULE = ("tied = means within one combined standard error sqrt(se_a^2 + se_b^2), never less than one "
        "test point (1/n_test; a single seed has no SE); within a tie, lower final test loss first; "
        "diverged and failed runs are counted, never averaged")
RULE_SHORT = "tie = within one combined SE, at least one test point; in a tie, lower test loss first"
TIED = "tied within one SE or test point"
# Human names of the metrics in sentences and labels.
METRIC_LABELS = {"final/test_acc": "test acc", "final/test_loss": "test loss",
                 "final/train_acc": "train acc", "final/train_loss": "train loss"}
_SHORT = tuple(SHORT_NAMES.values())


class SummaryError(ValueError):
    """A ranking asked of columns the runs do not have: one line naming them."""


# --------------------------------------------------------------------------- keys and labels

def config_keys(keys: Sequence[str]) -> list[str]:
    """The configuration keys among `keys`: short names, `seed` dropped, in config/names.py order."""
    out = []
    for key in keys:
        name = short_name(key)
        if name != "seed" and name not in out:
            out.append(name)
    return sorted(out, key=order)


def swept_keys(runs: pd.DataFrame) -> list[str]:
    """The short-name columns of `runs` holding more than one value (seed included), names order."""
    return [k for k in _SHORT if k in runs.columns and runs[k].nunique(dropna=False) > 1]


def format_value(value) -> str:
    """A key's value as a run name shows it: 0.01 -> '0.01', 16 -> '16', NaN -> 'n/a', and from a
    million up in powers of ten, as one types it: 1e10 -> '1e+10' (not '10000000000.0')."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (float, np.floating)):
        value = float(value)
        if math.isfinite(value) and abs(value) >= 1e6:
            return np.format_float_scientific(value, unique=True, trim="-")
        return str(value)
    if isinstance(value, (np.integer,)):
        return str(int(value))
    return str(value)


def config_label(row, keys: Sequence[str]) -> str:
    """`lr=1.0 width=16 init=he` (config/names.py order); 'all runs' without keys."""
    return " ".join(f"{k}={format_value(row[k])}" for k in keys) or "all runs"


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric)


def mean_std(row, digits: int = 3, pm: str = "±") -> str:
    """'0.963 ± 0.010 (n=3)'; '0.963 (n=1)'; 'n/a (n=0)'."""
    n = int(row["n"])
    if n == 0:
        return "n/a (n=0)"
    text = f"{row['mean']:.{digits}f}"
    if n > 1:
        text += f" {pm} {row['std']:.{digits}f}"
    return f"{text} (n={n})"


# --------------------------------------------------------------------------- ranking

def _require(runs: pd.DataFrame, columns: Sequence[str]) -> None:
    missing = [c for c in columns if c not in runs.columns]
    if missing:
        raise SummaryError(f"runs have no column {', '.join(map(repr, missing))}; present: "
                           f"{', '.join(map(str, runs.columns))}")


def _tie_bound(a: pd.Series, b: pd.Series) -> float:
    """max(one combined SE, one test point); a single seed's SE is unknown (left out)."""
    defined = [s * s for s in (a["sem"], b["sem"]) if pd.notna(s)]
    n_test = min((t for t in (a["n_test"], b["n_test"]) if t > 0), default=math.nan)
    return max(math.sqrt(sum(defined)), 1.0 / n_test if math.isfinite(n_test) else 0.0)


def _tie_groups(table: pd.DataFrame) -> pd.Series:
    """Group ids (1 = the best's group) of the scored rows of `table`, sorted best mean first."""
    groups = pd.Series(pd.NA, index=table.index, dtype="Int64")
    scored = table.index[table["n"] > 0]
    group = 0
    for i, leader in enumerate(scored):
        if pd.notna(groups[leader]):
            continue
        group += 1
        groups[leader] = group
        lead = table.loc[leader]
        for other in scored[i + 1:]:
            if pd.isna(groups[other]):
                row = table.loc[other]
                if abs(lead["mean"] - row["mean"]) <= _tie_bound(lead, row) + 1e-12:
                    groups[other] = group
    return groups


def rank(runs: pd.DataFrame, keys: Sequence[str], *, metric: str = METRIC,
         secondary: str = SECONDARY, n_test: int | None = None) -> pd.DataFrame:
    """One row per configuration of `keys`, best first, ties named (see the module's rules).

    n_test: test points of the data set (one point = 1/n_test of accuracy); default: the
    `n_test` column of `runs` when present, else unknown (single-seed configurations then tie
    only on equal means).
    """
    keys = config_keys(keys)
    _require(runs, [*keys, "status", metric])
    status = runs["status"].astype(str)
    value = pd.to_numeric(runs[metric], errors="coerce").astype(float)
    if n_test:
        tests = pd.Series(float(n_test), index=runs.index)
    elif "n_test" in runs.columns:
        tests = pd.to_numeric(runs["n_test"], errors="coerce").astype(float)
    else:
        tests = pd.Series(np.nan, index=runs.index)
    scored = status.isin(SCORED_STATUSES) & np.isfinite(value)
    diverged = status.eq("diverged") & ~scored
    work = pd.DataFrame({
        "_value": value.where(scored),
        "_secondary": (pd.to_numeric(runs[secondary], errors="coerce").astype(float).where(scored)
                       if secondary in runs.columns else np.nan),
        "_diverged": diverged.astype(int), "_failed": (~scored & ~diverged).astype(int),
        "_n_test": tests,
        "_run_id": runs["run_id"] if "run_id" in runs.columns else "",
        "_run_name": runs["run_name"] if "run_name" in runs.columns else "",
    }, index=runs.index)
    by = keys or ["_all"]
    work = pd.concat([runs[keys], work], axis=1).assign(_all=0)
    # Best seed first in every group: highest metric, then lowest secondary; unscored last.
    work = work.sort_values(["_value", "_secondary"], ascending=[False, True], na_position="last",
                            kind="stable")
    grouped = work.groupby(by, dropna=False, sort=True, observed=True)
    table = pd.DataFrame({
        "n": grouped["_value"].count(), "n_diverged": grouped["_diverged"].sum(),
        "n_failed": grouped["_failed"].sum(), "mean": grouped["_value"].mean(),
        "std": grouped["_value"].std(ddof=1), "secondary": grouped["_secondary"].mean(),
        "best_run_id": grouped["_run_id"].first(), "best_run_name": grouped["_run_name"].first(),
        "n_test": grouped["_n_test"].min(),
    })
    table["sem"] = table["std"] / np.sqrt(table["n"].where(table["n"] > 1))
    table = table.reset_index()
    if not keys:
        table = table.drop(columns="_all")
    table = table.sort_values(["mean", "secondary"], ascending=[False, True], na_position="last",
                              kind="stable", ignore_index=True)
    table["tie_group"] = _tie_groups(table)
    order_by = table.assign(_g=table["tie_group"].astype(float))
    table = table.loc[order_by.sort_values(["_g", "secondary", "mean"], ascending=[True, True, False],
                                           na_position="last", kind="stable").index]
    table = table.reset_index(drop=True)
    table["rank"] = pd.array([i + 1 if n > 0 else pd.NA for i, n in enumerate(table["n"])], dtype="Int64")
    table["tied"] = table["tie_group"].eq(1).fillna(False).astype(bool)
    columns = [*keys, "n", "n_diverged", "n_failed", "mean", "std", "sem", "secondary",
               "best_run_id", "best_run_name", "rank", "tie_group", "tied", "n_test"]
    table = table[columns]
    table.attrs.update(keys=keys, metric=metric, secondary=secondary, per=[])
    return table


def _per_keys(per: str | Sequence[str] | None, keys: Sequence[str]) -> list[str]:
    """The `per` keys (short names, names order) that are among the configuration `keys`; none
    when they are all of them (`per: init` with only init swept: nothing to choose per scheme,
    so the question is the comparison of the schemes, one ranking)."""
    per = [k for k in config_keys([per] if isinstance(per, str) else per or []) if k in keys]
    return per if set(keys) - set(per) else []


def answer(runs: pd.DataFrame, keys: Sequence[str], per: str | Sequence[str] | None = None, *,
           metric: str = METRIC, secondary: str = SECONDARY, n_test: int | None = None) -> pd.DataFrame:
    """The preset's own question: :func:`rank` within each value of `per` (its columns first).

    `per` (a key or several, e.g. `data`, `opt`, `["init", "depth"]`) comes from the preset's yaml
    (`sweep: {per: data}`); None ranks every configuration together. Ranks, tie groups and `tied`
    are those inside each `per` group. A `per` key that is not among `keys` (not swept, e.g. a
    command line that fixed `data=moons`) has one value: it is left out; `per` covering every key
    (nothing left to choose within a group) ranks everything together.
    """
    keys = config_keys(keys)
    per = _per_keys(per, keys)
    if not per:
        return rank(runs, keys, metric=metric, secondary=secondary, n_test=n_test)
    _require(runs, per)
    rest = [k for k in keys if k not in per]
    parts = []
    for values, part in runs.groupby(per, dropna=False, sort=True, observed=True):
        ranked = rank(part, rest, metric=metric, secondary=secondary, n_test=n_test)
        for k, v in zip(per, values, strict=True):
            ranked.insert(per.index(k), k, v)
        parts.append(ranked)
    table = pd.concat(parts, ignore_index=True)
    table.attrs.update(keys=[*per, *rest], metric=metric, secondary=secondary, per=per)
    return table


def preset_per(sweep: dict | None) -> list[str]:
    """The `per` keys of a preset's `sweep:` block (conf/sweep/*.yaml): `per: data` -> ['data']."""
    per = (sweep or {}).get("per")
    return config_keys([per] if isinstance(per, str) else per or [])


def _groups(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(label like 'data=moons' or '', its rows) for each `per` group of an answer table."""
    per = table.attrs.get("per") or []
    if not per:
        return [("", table)]
    return [(config_label(dict(zip(per, values, strict=True)), per), part)
            for values, part in table.groupby(per, dropna=False, sort=False, observed=True)]


# --------------------------------------------------------------------------- layout and grid

@dataclass(frozen=True)
class Layout:
    """Keys of the summary figure: rows, columns (either may be None), one panel per combination of
    `panels`."""

    rows: str | None
    cols: str | None
    panels: tuple[str, ...]


def layout(keys: Sequence[str], per: str | Sequence[str] | None = None) -> Layout:
    """Rows: the preset's `per` key, else the first key (config/names.py order); columns: the next;
    panels: the rest. default (lr, width, init) -> lr x width per init; seeds (width) -> one row of
    widths; datasets per data -> data x width; optimizers per opt -> opt x lr; deep_init per init
    -> init x lr (panels per depth when depth is swept)."""
    keys = config_keys(keys)
    per = _per_keys(per, keys)
    ordered = per[:1] + [k for k in keys if k not in per[:1]]
    if len(ordered) == 1:
        return Layout(rows=None, cols=ordered[0], panels=())
    if not ordered:
        return Layout(rows=None, cols=None, panels=())
    return Layout(rows=ordered[0], cols=ordered[1], panels=tuple(ordered[2:]))


@dataclass
class Grid:
    """Arrays (P panels, R rows, C columns) of a ranking laid out; NaN/0 where no configuration."""

    layout: Layout
    row_values: list
    col_values: list
    panel_values: list[tuple]
    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray
    n_diverged: np.ndarray
    n_failed: np.ndarray
    tied: np.ndarray  # bool: tied with the best (of its `per` group)

    @property
    def panel_titles(self) -> list[str]:
        """'init=he' per panel; [''] when there are no panel keys."""
        if not self.layout.panels:
            return [""] * len(self.panel_values)
        return [config_label(dict(zip(self.layout.panels, v, strict=True)), self.layout.panels)
                for v in self.panel_values]

    def cell_note(self, p: int, i: int, j: int, n_full: int) -> str:
        """'n=2, 1 diverged' when a cell holds fewer scored runs than the fullest; '' otherwise."""
        n, d, f = int(self.n[p, i, j]), int(self.n_diverged[p, i, j]), int(self.n_failed[p, i, j])
        parts = [f"n={n}"] if 0 < n and (n < n_full or n == 1) else []
        parts += [f"{d} diverged"] * bool(d) + [f"{f} failed"] * bool(f)
        return ", ".join(parts)


def _values(table: pd.DataFrame, key: str | None) -> list:
    if key is None:
        return [None]
    return sorted(table[key].dropna().unique().tolist()) + ([pd.NA] if table[key].isna().any() else [])


def grid(table: pd.DataFrame, lay: Layout) -> Grid:
    """Lay a :func:`rank`/:func:`answer` table out as arrays (panels, rows, columns)."""
    rows, cols = _values(table, lay.rows), _values(table, lay.cols)
    if lay.panels:
        panel_values = list(dict.fromkeys(
            tuple(r) for r in table[list(lay.panels)].sort_values(list(lay.panels)).itertuples(index=False)))
    else:
        panel_values = [()]
    shape = (len(panel_values), len(rows), len(cols))
    arrays = {name: np.full(shape, np.nan) for name in ("mean", "std")}
    counts = {name: np.zeros(shape, int) for name in ("n", "n_diverged", "n_failed")}
    tied = np.zeros(shape, bool)

    def index(values, v):
        for i, x in enumerate(values):
            if (x is None) or (pd.isna(x) and pd.isna(v)) or (not pd.isna(x) and x == v):
                return i
        raise KeyError(v)

    for row in table.to_dict("records"):
        p = panel_values.index(tuple(row[k] for k in lay.panels)) if lay.panels else 0
        i = index(rows, row[lay.rows]) if lay.rows else 0
        j = index(cols, row[lay.cols]) if lay.cols else 0
        arrays["mean"][p, i, j], arrays["std"][p, i, j] = row["mean"], row["std"]
        for name in counts:
            counts[name][p, i, j] = row[name]
        tied[p, i, j] = bool(row["tied"])
    return Grid(lay, rows, cols, panel_values, tied=tied, **arrays, **counts)


def gallery_picks(table: pd.DataFrame, n: int = 3) -> pd.DataFrame:
    """The configurations a boundary gallery shows: every ranked one when there are at most 2n, else
    the n best and the n worst. Rows of `table` (a :func:`rank`/:func:`answer` result) plus `title`
    ('#1 lr=1.0 width=64 init=he' / '0.992 ± 0.007 (n=3), best seed'); the image of a row is its
    `best_run_id`'s `plots/decision_boundary.png` (tiled by `figures.plots.gallery_figure`)."""
    scored = table[table["n"] > 0]
    picks = scored if len(scored) <= 2 * n else pd.concat([scored.head(n), scored.tail(n)])
    keys = table.attrs.get("keys") or [c for c in table.columns if c in _SHORT]
    titles = [f"#{int(r['rank'])} {config_label(r, keys)}\n{mean_std(r)}, best seed"
              for _, r in picks.iterrows()]
    return picks.assign(title=titles)


# --------------------------------------------------------------------------- the three readers

def summary_figure(runs: pd.DataFrame, keys: Sequence[str], per=None, *, metric: str = METRIC,
                   n_test: int | None = None, title: str = "", chance: float = 0.5):
    """The sweep's one comparison figure (figures.plots.summary_figure) from the swept keys."""
    from backprop_lab.figures import plots

    table = answer(runs, keys, per, metric=metric, n_test=n_test)
    g = grid(table, layout(keys, per))
    n_full = int(g.n.max()) if g.n.size else 0
    notes = np.array([[[g.cell_note(p, i, j, n_full) for j in range(g.n.shape[2])]
                       for i in range(g.n.shape[1])] for p in range(g.n.shape[0])], dtype=object)
    n_runs = int(g.n.sum() + g.n_diverged.sum() + g.n_failed.sum())
    seeds = "one run" if n_full <= 1 else "mean ± std over seeds"
    below = " grey: below chance;" if (g.mean < chance).any() else ""
    hatched = " hatched: no finished run;" if (g.n == 0).any() else ""
    per_keys = table.attrs.get("per") or []
    best = f"the best of each {', '.join(per_keys)}" if per_keys else "the best"
    subtitle = (f"{metric_label(metric)}, {seeds} ({n_runs} runs); outlined: {best} and its ties "
                f"(within one SE or test point);"
                f"{below}{hatched}").rstrip(";")
    return plots.summary_figure(
        g.mean, g.std, [format_value(v) for v in g.row_values if v is not None] or [""],
        [format_value(v) for v in g.col_values if v is not None] or [""],
        panel_titles=g.panel_titles, notes=notes, highlight=g.tied, row_name=g.layout.rows or "",
        col_name=g.layout.cols or "", title="\n".join(t for t in (title, subtitle) if t),
        cbar_label=metric_label(metric), chance=chance)


def _counts_line(runs: pd.DataFrame) -> str:
    status = runs["status"].astype(str).value_counts()
    parts = [f"{int(status.get(s, 0))} {s}" for s in ("finished", "skipped", "diverged", "failed")
             if status.get(s, 0) or s in ("diverged", "failed")]
    other = int(len(runs) - sum(status.get(s, 0) for s in ("finished", "skipped", "diverged", "failed")))
    return f"{len(runs)} runs: " + ", ".join(parts + ([f"{other} other"] if other else []))


def _trouble(table: pd.DataFrame, keys: Sequence[str], limit: int = 4) -> str:
    """'diverged: lr=1.0 width=2 init=normal (3/3), ...' naming the configurations with losses."""
    out = []
    for what in ("n_diverged", "n_failed"):
        hit = table[table[what] > 0]
        if len(hit):
            total = hit["n"] + hit["n_diverged"] + hit["n_failed"]
            names = [f"{config_label(r, keys)} ({int(r[what])}/{int(t)})"
                     for (_, r), t in zip(hit.iterrows(), total, strict=True)]
            more = f", +{len(names) - limit} more" if len(names) > limit else ""
            where = f"{len(hit)} configuration" + "s" * (len(hit) > 1)
            out.append(f"{what[2:]} in {where}: {', '.join(names[:limit])}{more}")
    return "; ".join(out)


def _best_sentence(part: pd.DataFrame, keys: Sequence[str], metric: str, secondary: str, pm: str,
                   link: Callable[[str], str] | None = None, list_ties: bool = True) -> tuple[str, str]:
    """('Best: lr=1.0 width=16 init=he, test acc 0.963 ± 0.010 (n=3)', '; tied within one SE or
    test point (2): ... (ordered by lower test loss)'); the second is '' without a tie and only
    counts the tied configurations when not `list_ties` (a table below lists them)."""
    scored = part[part["n"] > 0]
    if scored.empty:
        return "no configuration has a finished run to rank", ""

    def name(row):
        label = config_label(row, keys)
        if link and row["best_run_id"]:
            return f"[{label}]({link(row['best_run_id'])})"
        return label

    best = scored.iloc[0]
    text = f"Best: {name(best)}, {metric_label(metric)} {mean_std(best, pm=pm)}"
    others = scored[scored["tied"]].iloc[1:]
    if not len(others):
        return text, ""
    order = f"ordered by lower {metric_label(secondary)}"
    if not list_ties:
        return text, f"; {TIED}: {len(others)} more, marked = below ({order})"
    listed = ", ".join(f"{name(r)} {mean_std(r, pm=pm)}" for _, r in others.iterrows())
    return text, f"; {TIED} ({len(others)}): {listed} ({order})"


def text_summary(runs: pd.DataFrame, keys: Sequence[str], per=None, *, metric: str = METRIC,
                 n_test: int | None = None, top: int = 5, title: str = "") -> str:
    """The terminal's end of a sweep: the heatmap as text (mean +- std per cell), the answer line(s),
    the top configurations, divergences and failures (~25 lines for the default sweep)."""
    table = answer(runs, keys, per, metric=metric, n_test=n_test)
    keys_all = table.attrs["keys"]
    g = grid(table, layout(keys, per))
    lines = [f"{title + ': ' if title else ''}{_counts_line(runs)}; cells: {metric_label(metric)} "
             f"mean +- std over seeds, * = best or tied with it"]
    n_full = int(g.n.max()) if g.n.size else 0

    def cell(p, i, j):
        n, m, s = int(g.n[p, i, j]), g.mean[p, i, j], g.std[p, i, j]
        d, f = int(g.n_diverged[p, i, j]), int(g.n_failed[p, i, j])
        if n == 0:
            lost = [f"{d} diverged"] * (d > 0) + [f"{f} failed"] * (f > 0)
            return f"n/a ({', '.join(lost)})" if lost else "-"
        text = f"{m:.3f}" + (f"+-{s:.3f}" if n > 1 else "") + ("*" if g.tied[p, i, j] else "")
        return text + (f" n={n}" if n < n_full else "")

    lay = g.layout
    row_names = [f"{lay.rows}={format_value(v)}" if lay.rows else "" for v in g.row_values]
    col_names = [f"{lay.cols}={format_value(v)}" if lay.cols else "" for v in g.col_values]
    panels = [[[cell(p, i, j) for j in range(len(col_names))] for i in range(len(row_names))]
              for p in range(len(g.panel_values))]
    lw = max(len(t) for t in row_names + g.panel_titles)
    cw = max([len(c) for c in col_names] + [len(c) for cells in panels for r in cells for c in r])
    for ptitle, cells in zip(g.panel_titles, panels, strict=True):
        lines.append(f"{ptitle:<{lw}}  " + "  ".join(f"{c:>{cw}}" for c in col_names))
        lines += [f"{rn:<{lw}}  " + "  ".join(f"{c:>{cw}}" for c in r)
                  for rn, r in zip(row_names, cells, strict=True)]
    groups = _groups(table)
    for label, part in groups:
        rest = [k for k in keys_all if k not in (table.attrs.get("per") or [])]
        best, tie = _best_sentence(part, rest, metric, table.attrs["secondary"], "+-",
                                   list_ties=len(groups) > 1)
        lines.append((f"{label}: " if label else "") + best + tie)
    if len(groups) == 1 and (table["n"] > 0).any():
        scored = table[table["n"] > 0].head(max(top, int(table["tied"].sum())))
        lines.append(f"top {len(scored)} (rank, configuration, {metric_label(metric)}, "
                     f"{metric_label(table.attrs['secondary'])}):")
        for _, r in scored.iterrows():
            mark = "=" if r["tied"] and table["tied"].sum() > 1 else " "
            lines.append(f"  {int(r['rank']):>2}{mark} {config_label(r, keys_all):<30} "
                         f"{mean_std(r, pm='+-'):<24} {r['secondary']:.3f}")
    trouble = _trouble(table, keys_all)
    if trouble:
        lines.append(trouble)
    lines.append(f"rule: {RULE_SHORT}")
    return "\n".join(lines)


def note_markdown(runs: pd.DataFrame, keys: Sequence[str], per=None, *, metric: str = METRIC,
                  n_test: int | None = None, link: Callable[[str], str] | None = None,
                  top: int = 5, title: str = "") -> str:
    """The parent run's description (MLflow renders it as markdown on the run's overview page).

    One-sentence answer first (per `per` group), then a table of the top configurations with mean
    ± std (n), their tie, failures and divergences, and links to the best child runs:
    `link(run_id) -> url`, e.g. `lambda rid: f"#/experiments/{eid}/runs/{rid}"` (the MLflow UI's
    relative links).
    """
    table = answer(runs, keys, per, metric=metric, n_test=n_test)
    per_keys = table.attrs.get("per") or []
    rest = [k for k in table.attrs["keys"] if k not in per_keys]
    secondary = metric_label(table.attrs["secondary"])
    out = [f"### {title}" if title else ""]
    for label, part in _groups(table):  # one bullet per `per` group (lines alone would join)
        best, tie = _best_sentence(part, rest, metric, table.attrs["secondary"], "±", link)
        out.append((f"- {label}: " if label else "") + f"**{best}**{tie}")
    out.append("")
    header = ["rank", *per_keys, "configuration", f"{metric_label(metric)} mean ± std", "n",
              secondary, "best run"]
    if (table["n"] > 0).any():
        out += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for _, part in _groups(table):
        scored = part[part["n"] > 0]
        for _, r in scored.head(max(top if not per_keys else 3, int(scored["tied"].sum()))).iterrows():
            run = (f"[{r['best_run_name'] or r['best_run_id'][:8]}]({link(r['best_run_id'])})"
                   if link and r["best_run_id"] else str(r["best_run_name"]))
            spread = f"{r['mean']:.3f}" + (f" ± {r['std']:.3f}" if r["n"] > 1 else "")
            cells = [f"{int(r['rank'])}{' (tied)' if r['tied'] and len(part[part['tied']]) > 1 else ''}",
                     *(format_value(r[k]) for k in per_keys), config_label(r, rest) or "all",
                     spread, str(int(r["n"])), f"{r['secondary']:.3f}", run]
            out.append("| " + " | ".join(cells) + " |")
    out.append("")
    out.append(_counts_line(runs) + ". " + (_trouble(table, table.attrs["keys"]) or
                                            "No run diverged or failed."))
    out.append("")
    out.append(f"Rule: {RULE}.")
    return "\n".join(line for i, line in enumerate(out) if line or i)
