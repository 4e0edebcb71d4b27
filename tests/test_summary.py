"""analysis.summary: "best", ties, the presets' questions, layouts and the three readers.

Hand-made run tables with known answers (no store, no sweep): every test runs in milliseconds.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle
from omegaconf import OmegaConf

from backprop_lab.analysis import summary
from backprop_lab.figures import plots

CONF = Path(__file__).resolve().parents[1] / "conf" / "sweep"


def runs_of(configs: dict, key: str = "init", **columns) -> pd.DataFrame:
    """`{config value: [(status, acc, loss), ...]}` -> one row per run, seeds 0.. per config."""
    rows = []
    for value, seeds in configs.items():
        for seed, (status, acc, loss) in enumerate(seeds):
            rows.append({key: value, "seed": seed, "status": status, "final/test_acc": acc,
                         "final/test_loss": loss, "run_id": f"{value}-{seed}",
                         "run_name": f"{key}={value} seed={seed}", **columns})
    return pd.DataFrame(rows)


def ok(*accs, loss=0.1):
    return [("finished", a, loss) for a in accs]


def by(table, key="init"):
    return table.set_index(key)


# --------------------------------------------------------------------------- ties

def test_exact_ties_are_one_group_ordered_by_the_stated_secondary():
    runs = runs_of({"a": ok(1.0, 1.0, 1.0, loss=0.2), "b": ok(1.0, 1.0, 1.0, loss=0.1),
                    "c": ok(0.9, 0.9, 0.9)})
    table = summary.rank(runs, ["init", "seed"])
    assert table["init"].tolist() == ["b", "a", "c"]  # a and b tied; lower test loss first
    assert table["tie_group"].tolist() == [1, 1, 2] and table["tied"].tolist() == [True, True, False]
    assert table["rank"].tolist() == [1, 2, 3]
    assert table["secondary"].tolist() == pytest.approx([0.1, 0.2, 0.1])
    text = summary.text_summary(runs, ["init", "seed"])
    assert "Best: init=b, test acc 1.000 +- 0.000 (n=3); tied within one SE or test point: 1 more" in text
    assert " 2= init=a " in text
    assert "ordered by lower test loss" in text


def test_within_one_combined_standard_error_is_a_tie_and_just_outside_is_not():
    a, b = [0.90, 0.94, 0.98], [0.91, 0.92, 0.93]  # means 0.94, 0.92
    bound = math.hypot(np.std(a, ddof=1) / math.sqrt(3), np.std(b, ddof=1) / math.sqrt(3))
    assert 0.02 < bound < 0.03
    c = [x - 0.02 - bound - 0.001 + 0.02 for x in b]  # mean 0.94 - bound - 0.001: just outside
    runs = runs_of({"a": ok(*a), "b": ok(*b), "c": ok(*c)})
    table = by(summary.rank(runs, ["init"]))
    assert table.loc["a", "mean"] == pytest.approx(0.94) and table.loc["a", "std"] == pytest.approx(0.04)
    assert table.loc["a", "sem"] == pytest.approx(0.04 / math.sqrt(3))
    assert table.loc["b", "tied"] and table.loc["b", "tie_group"] == 1
    assert not table.loc["c", "tied"] and table.loc["c", "tie_group"] == 2


def test_one_test_point_is_the_least_bound_even_when_seeds_agree_exactly():
    # Three seeds each, std 0: a SE alone would split 1.000 from 0.9875 (one of 80 test points).
    runs = runs_of({"a": ok(1.0, 1.0, 1.0), "b": ok(0.9875, 0.9875, 0.9875), "c": ok(0.975, 0.975, 0.975)})
    assert by(summary.rank(runs, ["init"], n_test=80))["tie_group"].to_dict() == {"a": 1, "b": 1, "c": 2}
    assert by(summary.rank(runs, ["init"]))["tie_group"].to_dict() == {"a": 1, "b": 2, "c": 3}


def test_a_tie_is_with_the_groups_leader_never_chained():
    # b is within one SE of a, c within one SE of b but not of a: c leads group 2.
    runs = runs_of({"a": ok(0.95, 0.95, 0.95), "b": ok(0.92, 0.94, 0.96), "c": ok(0.92, 0.93, 0.94)})
    table = by(summary.rank(runs, ["init"]))
    assert table["tie_group"].to_dict() == {"a": 1, "b": 1, "c": 2}


def test_single_seed_configurations_tie_within_one_test_point():
    runs = runs_of({"a": ok(0.95), "b": ok(0.9375), "c": ok(0.925)})  # 80 test points: 0.0125 each
    with_points = by(summary.rank(runs, ["init"], n_test=80))
    assert with_points["tied"].to_dict() == {"a": True, "b": True, "c": False}
    from_column = by(summary.rank(runs.assign(n_test=80), ["init"]))  # load_runs' n_test column
    assert from_column["tied"].to_dict() == with_points["tied"].to_dict()
    unknown = by(summary.rank(runs, ["init"]))  # no test size known: only equal means tie
    assert unknown["tied"].to_dict() == {"a": True, "b": False, "c": False}
    assert np.isnan(unknown["std"]).all() and np.isnan(unknown["sem"]).all()


def test_diverged_runs_never_enter_the_mean_failed_ones_are_counted():
    runs = runs_of({
        "a": ok(0.8, 0.9) + [("diverged", 0.99, 1e300)],  # a diverged run's final/* repeat a blow-up
        "b": ok(0.7) + [("failed", np.nan, np.nan), ("skipped", 0.8, 0.1)],  # skipped reused a FINISHED run
        "c": [("diverged", 0.5, 1e300), ("failed", np.nan, np.nan)],
    })
    table = by(summary.rank(runs, ["init"]))
    assert table.loc["a", ["n", "n_diverged", "n_failed"]].tolist() == [2, 1, 0]
    assert table.loc["a", "mean"] == pytest.approx(0.85) and table.loc["a", "secondary"] == pytest.approx(0.1)
    assert table.loc["a", "best_run_id"] == "a-1"  # the best seed among the scored runs
    assert table.loc["b", ["n", "n_diverged", "n_failed"]].tolist() == [2, 0, 1]
    assert table.loc["b", "mean"] == pytest.approx(0.75)
    assert table.loc["c", ["n", "n_diverged", "n_failed"]].tolist() == [0, 1, 1]
    assert pd.isna(table.loc["c", "rank"]) and pd.isna(table.loc["c", "tie_group"])
    assert not table.loc["c", "tied"]
    assert summary.rank(runs, ["init"])["init"].iloc[-1] == "c"  # unscored configurations last
    text = summary.text_summary(runs, ["init"])
    assert "diverged in 2 configurations: init=a (1/3), init=c (1/2)" in text
    assert "failed in 2 configurations" in text


def test_best_seed_breaks_its_own_ties_by_the_secondary():
    runs = runs_of({"a": [("finished", 0.9, 0.3), ("finished", 0.9, 0.2), ("finished", 0.8, 0.1)]})
    assert summary.rank(runs, ["init"])["best_run_id"].item() == "a-1"


def test_missing_column_is_one_line_naming_it():
    runs = runs_of({"a": ok(0.9)})
    with pytest.raises(summary.SummaryError, match=r"no column 'width'") as info:
        summary.rank(runs, ["init", "model.width"])
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("value", "shown"), [
    (0.01, "0.01"), (np.float64(0.5), "0.5"), (16, "16"), (np.int64(24), "24"), ("he", "he"),
    (999999.0, "999999.0"), (1e10, "1e+10"), (np.float64(1.5e7), "1.5e+07"), (-2e6, "-2e+06"),
    (float("inf"), "inf"), (float("nan"), "n/a"), (None, "n/a")])
def test_values_are_shown_as_typed_large_floats_in_powers_of_ten(value, shown):
    assert summary.format_value(value) == shown
    assert summary.config_label({"lr": value}, ["lr"]) == f"lr={shown}"


def test_keys_take_short_names_and_drop_seed():
    keys = summary.config_keys(["model.width", "+seed", "optim.lr", "init", "optim"])
    assert keys == ["lr", "width", "init", "opt"]
    runs = runs_of({"a": ok(0.9), "b": ok(0.8)}, key="init", width=4)
    assert summary.swept_keys(runs.assign(seed=[0, 1])) == ["init", "seed"]
    only_seeds = summary.rank(runs, ["seed"])  # nothing but seeds swept: one configuration
    assert len(only_seeds) == 1 and only_seeds["n"].item() == 2


# --------------------------------------------------------------------------- the presets' questions

def grid_runs(grid: dict, acc, seeds=(0, 1, 2), **fixed) -> pd.DataFrame:
    """Every combination of `grid` x seeds, test accuracy acc(config, seed)."""
    index = pd.MultiIndex.from_product([*grid.values(), seeds], names=[*grid, "seed"])
    runs = index.to_frame(index=False)
    runs["final/test_acc"] = [acc(dict(zip(runs.columns, r, strict=True)), r[-1])
                              for r in runs.itertuples(index=False)]
    runs["final/test_loss"] = 1 - runs["final/test_acc"]
    runs["status"] = "finished"
    runs["run_id"] = [f"r{i}" for i in range(len(runs))]
    runs["run_name"] = runs["run_id"]
    return runs.assign(n_test=80, **fixed)


def test_answer_per_data_ranks_inside_each_data_set():
    easy = {"blobs": 1.0, "spirals": 0.6}
    narrow_spirals = {("spirals", 4): 0.1}
    runs = grid_runs({"data": ["blobs", "spirals"], "width": [4, 32]},
                     lambda c, s: easy[c["data"]] - narrow_spirals.get((c["data"], c["width"]), 0))
    table = summary.answer(runs, ["data", "model.width", "seed"], per="data")
    assert list(table.columns[:2]) == ["data", "width"] and table.attrs["per"] == ["data"]
    firsts = table[table["rank"] == 1].set_index("data")
    assert firsts.loc["spirals", "width"] == 32 and firsts.loc["spirals", "mean"] == pytest.approx(0.6)
    blobs = table[table["data"] == "blobs"]  # both widths 1.000 +- 0: one tie, not "the easy data set"
    assert blobs["tied"].all() and len(blobs) == 2
    text = summary.text_summary(runs, ["data", "width", "seed"], per="data")
    assert "data=spirals: Best: width=32, test acc 0.600 +- 0.000 (n=3)" in text
    note = summary.note_markdown(runs, ["data", "width", "seed"], per="data")
    bullets = [line for line in note.splitlines() if line.startswith("- data=")]  # one per data set
    assert [b.split(":")[0] for b in bullets] == ["- data=blobs", "- data=spirals"]
    assert "tied within one SE or test point (1): width=" in bullets[0]
    # A command line that fixes the data set (not swept, no column): the question is the ranking.
    one = runs[runs["data"] == "spirals"].drop(columns="data")
    assert summary.answer(one, ["width", "seed"], per="data").attrs["per"] == []
    assert summary.layout(["width", "seed"], per="data") == summary.Layout(None, "width", ())
    assert "Best: width=32" in summary.text_summary(one, ["width", "seed"], per="data")
    assert summary.preset_per({"preset": "datasets", "per": "data"}) == ["data"]
    assert summary.preset_per({"per": ["init", "model.depth"]}) == ["depth", "init"]
    assert summary.preset_per(None) == []


def test_per_every_swept_key_compares_them_in_one_ranking():
    # deep_init: only the scheme (and seeds) swept, `per: init`: the answer compares the schemes.
    acc = {"he": 0.95, "xavier": 0.5, "lecun": 0.5}
    runs = grid_runs({"init": ["he", "xavier", "lecun"]}, lambda c, s: acc[c["init"]])
    table = summary.answer(runs, ["init", "seed"], per="init")
    assert table.attrs["per"] == [] and table["rank"].tolist() == [1, 2, 3]
    assert table["init"].iloc[0] == "he" and table["tie_group"].tolist() == [1, 2, 2]
    assert summary.layout(["init", "seed"], per="init") == summary.Layout(None, "init", ())


def test_seeds_preset_reports_the_spread_per_width():
    spread = {2: 0.05, 8: 0.02}
    runs = grid_runs({"width": [2, 8]}, lambda c, s: 0.8 + spread[c["width"]] * (s - 2), seeds=range(5))
    table = by(summary.answer(runs, ["width", "seed"]), "width")
    assert table["n"].tolist() == [5, 5]
    for width, step in spread.items():
        assert table.loc[width, "std"] == pytest.approx(np.std(step * (np.arange(5) - 2), ddof=1))
    text = summary.text_summary(runs, ["width", "seed"])
    assert "0.800+-0.079" in text and "0.800+-0.032" in text


# --------------------------------------------------------------------------- layouts of every preset

def preset(name: str):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    swept = list(cfg.hydra.sweeper.params)
    return swept, summary.preset_per(OmegaConf.to_container(cfg.get("sweep")))


@pytest.mark.parametrize("name, rows, cols, panels", [
    ("default", "lr", "width", ("init",)),
    ("seeds", None, "width", ()),
    ("datasets", "data", "width", ()),
    ("optimizers", "opt", "lr", ()),
])
def test_every_preset_lays_out_its_swept_keys(name, rows, cols, panels):
    swept, per = preset(name)
    assert summary.layout(swept, per) == summary.Layout(rows, cols, panels)


def test_deep_init_layout_rows_are_the_schemes():
    swept, per = preset("deep_init")
    lay = summary.layout(swept, per)
    keys = summary.config_keys(swept)
    assert "init" in (lay.rows, lay.cols, *lay.panels)
    assert {lay.rows, lay.cols, *lay.panels} - {None} == set(keys)


def test_default_sweep_has_at_least_three_seeds():
    swept, _ = preset("default")
    cfg = OmegaConf.load(CONF / "default.yaml")
    assert len(str(cfg.hydra.sweeper.params.seed).split(",")) >= 3 and "seed" in swept


# --------------------------------------------------------------------------- the readers

DEFAULT_GRID = {"lr": [0.01, 0.1, 1.0], "width": [2, 4, 16, 64], "init": ["he", "xavier", "normal"]}


def default_runs():
    def acc(c, s):
        if c["init"] == "normal" and c["lr"] == 0.01:
            return 0.45 + 0.0125 * s  # below chance
        return min(1.0, 0.7 + 0.1 * math.log10(c["lr"] / 0.01) + 0.02 * math.log2(c["width"]) + 0.0125 * s)
    runs = grid_runs(DEFAULT_GRID, acc)
    lost = (runs["init"] == "he") & (runs["lr"] == 1.0) & (runs["width"] == 2)
    runs.loc[lost, "status"] = ["diverged", "diverged", "failed"]  # a cell without a scored run
    return runs


def test_text_summary_of_the_default_sweep_is_compact_and_names_the_tie():
    runs = default_runs()
    text = summary.text_summary(runs, ["init", "optim.lr", "model.width", "seed"], title="default")
    lines = text.splitlines()
    assert len(lines) <= 25, text
    assert lines[0].startswith("default: 108 runs: 105 finished, 2 diverged, 1 failed")
    assert "init=he" in text and "n/a (2 diverged, 1 failed)" in text
    best = summary.rank(runs, ["lr", "width", "init"])
    tied = best[best["tied"]]
    assert len(tied) > 1  # several configurations reach 1.0 on every seed
    assert f"tied within one SE or test point: {len(tied) - 1} more" in text


def test_summary_figure_one_shared_scale_from_chance_with_text_in_every_cell(tmp_path):
    runs = default_runs()
    fig = summary.summary_figure(runs, ["lr", "width", "init", "seed"], title="sweep default")
    images = [im for ax in fig.axes for im in ax.get_images() if isinstance(im, AxesImage)]
    assert len(images) == 3  # one panel per init
    assert {(im.norm.vmin, im.norm.vmax) for im in images} == {(0.5, 1.0)}
    assert len({id(im.norm) for im in images}) == 1  # one norm object: one colour scale
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert [ax.get_title() for ax in panels] == ["init=he", "init=normal", "init=xavier"]
    texts = [t.get_text() for ax in panels for t in ax.texts]
    assert sum(t.startswith("± ") for t in texts) == 35  # every cell with a mean has its spread
    assert "n/a" in texts and "2 diverged, 1 failed" in texts
    he = summary.rank(runs[runs["init"] == "he"], ["lr", "width"])
    cell = he.set_index(["lr", "width"]).loc[(0.1, 4)]
    assert f"{cell['mean']:.3f}" in [t.get_text() for t in panels[0].texts]
    colourbar = fig.axes[-1]
    assert any("chance" in t.get_text() for t in colourbar.get_yticklabels())
    outlined = sum(isinstance(p, Rectangle) and p.get_edgecolor()[:3] != (0.75, 0.75, 0.75)
                   and not p.fill for ax in panels for p in ax.patches)
    assert outlined == summary.rank(runs, ["lr", "width", "init"])["tied"].sum()
    assert "grey: below chance" in fig.texts[0].get_text()
    path = tmp_path / "summary.png"
    plots.save_figure(fig, path)
    assert path.stat().st_size > 10_000


@pytest.mark.parametrize("grid, per, n_panels", [
    ({"width": [2, 8, 32]}, None, 1),
    ({"data": ["blobs", "moons"], "width": [4, 32]}, "data", 1),
    ({"opt": ["gd", "adam"], "lr": [0.01, 0.1]}, "opt", 1),
    ({"init": ["he", "xavier"], "lr": [0.01, 0.1], "depth": [10, 30]}, ["init", "depth"], 2),
])
def test_summary_figure_for_every_preset_shape(grid, per, n_panels):
    runs = grid_runs(grid, lambda c, s: 0.9 + 0.01 * s)
    fig = summary.summary_figure(runs, [*grid, "seed"], per)
    panels = [ax for ax in fig.axes if ax.get_images()]
    assert len(panels) == n_panels
    cells = sum(len(ax.get_images()[0].get_array().ravel()) for ax in panels)
    assert cells == len(runs) // 3


def test_note_markdown_answers_first_and_links_the_best_run():
    runs = default_runs()
    note = summary.note_markdown(runs, ["lr", "width", "init"], title="sweep default",
                                 link=lambda rid: f"#/experiments/7/runs/{rid}")
    best = summary.rank(runs, ["lr", "width", "init"]).iloc[0]
    label = summary.config_label(best, ["lr", "width", "init"])
    first = note.splitlines()[1]
    link = f"#/experiments/7/runs/{best['best_run_id']}"
    assert first.startswith(f"**Best: [{label}]({link}), test acc 1.000 ± 0.000 (n=3)")
    assert "tied within one SE or test point" in first
    assert "| rank | configuration | test acc mean ± std | n | test loss | best run |" in note
    assert "108 runs: 105 finished, 2 diverged, 1 failed" in note
    assert "lr=1.0 width=2 init=he (2/3)" in note
    assert "Rule: tied = means within one combined standard error" in note


def test_gallery_figure_tiles_images_with_titles():
    images = [np.full((30, 40, 3), v) for v in (0.1, 0.5, 0.9)]
    fig = plots.gallery_figure(images, ["best", "2nd", "worst"], ncols=2, title="boundaries")
    assert [ax.get_title() for ax in fig.axes] == ["best", "2nd", "worst"]
    assert all(len(ax.get_images()) == 1 for ax in fig.axes)
    fig.set_dpi(plots.DPI)
    assert all(abs(v - round(v)) < 1e-9 for v in fig.get_size_inches() * plots.DPI)  # whole pixels
    with pytest.raises(ValueError, match="one title per image"):
        plots.gallery_figure(images, ["only one"])


def test_gallery_picks_best_and_worst_configurations_with_titles():
    runs = default_runs()
    table = summary.rank(runs, ["lr", "width", "init"])
    picks = summary.gallery_picks(table, n=2)
    scored = table[table["n"] > 0]
    assert picks["rank"].tolist() == [1, 2, len(scored) - 1, len(scored)]
    best = summary.config_label(scored.iloc[0], ["lr", "width", "init"])
    assert picks["title"].iloc[0].startswith(f"#1 {best}\n")
    assert "(n=3), best seed" in picks["title"].iloc[0]
    assert len(summary.gallery_picks(table.head(3), n=2)) == 3  # few configurations: each one


def test_a_sweep_without_a_finished_run_still_summarises():
    runs = runs_of({"a": [("failed", np.nan, np.nan)], "b": [("diverged", 0.5, 1e300)]})
    text = summary.text_summary(runs, ["init"])
    assert "no configuration has a finished run to rank" in text and "top " not in text
    assert "n/a (1 failed)" in text and "n/a (1 diverged)" in text
    note = summary.note_markdown(runs, ["init"])
    assert "| rank |" not in note and "2 runs: 1 diverged, 1 failed" in note
    fig = summary.summary_figure(runs, ["init"])
    assert [t.get_text() for ax in fig.axes if ax.get_images() for t in ax.texts][::2] == ["n/a", "n/a"]
    assert summary.gallery_picks(summary.rank(runs, ["init"])).empty
