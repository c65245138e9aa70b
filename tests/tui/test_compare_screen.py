"""The compare screen under Pilot on a real studio database: curves, pass@k with paired tests, config diff, exports.
The `settings` and `ctx` fixtures (a temp studio home and database) come from conftest.py."""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from textual.app import App
from textual.widgets import DataTable, OptionList, Select, SelectionList, Static, TabbedContent

from tests.evaluations import first_solved, greedy_pass1
from tests.tui.conftest import ScreenApp, choices_shown, until
from wmtp_studio import store
from wmtp_studio.compare import FACTOR, expand
from wmtp_studio.models import Run
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.metrics import MetricLine
from wmtp_studio.settings import Settings
from wmtp_studio.tui.compare_feed import CompareFeed
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.pickers import PickRunsModal
from wmtp_studio.tui.screens.compare import CompareScreen

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# Greedy pass@1 on four problems, one sample each (1 = solved), per (algorithm, seed).
SOLVED = {
    ("ntp", 0): [1, 0, 0, 0],
    ("ntp", 1): [1, 1, 0, 0],
    ("baseline-mtp", 0): [1, 1, 1, 1],
    ("baseline-mtp", 1): [1, 1, 0, 1],
}


def store_set(
    engine: Engine, settings: Settings, algorithms: list[str], seeds: list[int], name: str | None = None
) -> list[Run]:
    """A comparison set of the tiny recipe (10 steps) over algorithms x seeds, stored as the CLI stores one."""
    base = load_recipe(RECIPES / "tiny-ntp.yaml", ["train.steps=10"])
    with store.submission(engine=engine, runs_dir=settings.runs_dir) as sub:
        cset = sub.add_comparison_set(
            name=name or base.name, base=base, factor=FACTOR, diff={"algorithm": algorithms, "seed": seeds}
        )
        return [
            sub.add_run(recipe=recipe, comparison_set_id=cset.id, diff=diff)
            for recipe, diff in expand(base, algorithms, seeds)
        ]


def make_set(engine: Engine, settings: Settings, name: str | None = None) -> tuple[int, list[Run]]:
    """A comparison set ntp, baseline-mtp x seeds 0, 1 with losses (named as the trainer writes them: the total
    and head 0's CE in training, their val_ counterparts on the held-out slice) and pass@1 per problem."""
    runs = []
    for run in store_set(engine, settings, ["ntp", "baseline-mtp"], [0, 1], name):
        rid = run.id or 0
        lines = [
            MetricLine(seq=0, step=5, time=0.0, kind="train", metrics={"loss": 4.0 + rid, "head0/ce": 2.0}),
            MetricLine(seq=1, step=10, time=0.0, kind="train", metrics={"loss": 3.0 + rid, "head0/ce": 1.5}),
            MetricLine(
                seq=2, step=10, time=0.0, kind="val", metrics={"val_loss": 3.5 + rid, "head0/val_ce": 1.8}
            ),
        ]
        store.ingest_metric_lines(engine=engine, run_id=rid, lines=lines)
        solved = SOLVED[(run.algorithm, run.seed)]
        store.record_evaluation(
            engine=engine,
            evaluation=greedy_pass1(rid, solved),
        )
        runs.append(run)
    return runs[0].comparison_set_id or 0, runs


def rows(table: DataTable[Any]) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def test_comparison_set_rows_per_algorithm_with_paired_tests(
    ctx: StudioContext, settings: Settings
) -> None:
    set_id, runs = make_set(ctx.engine, settings)
    screen = CompareScreen(ctx, comparison_set_id=set_id)
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        table = screen.query_one("#results-table", DataTable)
        await until(pilot, lambda: table.row_count == 2, "the results table")
        ntp, mtp = rows(table)
        # ntp is the default baseline. Pooled pass@1 = mean over problems of c/n over both seeds:
        # ntp (2/2 + 1/2 + 0 + 0)/4 = 0.375, baseline-mtp (2/2 + 2/2 + 1/2 + 2/2)/4 = 0.875.
        assert (
            ntp[:2] == ["ntp", "0,1"] and ntp[2].startswith("0.375 [") and ntp[4:] == ["baseline"] + ["–"] * 4
        )
        assert mtp[:2] == ["baseline-mtp", "0,1"] and mtp[2].startswith("0.875 [")
        # Seed-averaged per problem: ntp [1, .5, 0, 0], mtp [1, 1, .5, 1] → differences [0, .5, .5, 1], mean
        # 0.5; exact signed-rank over the three non-zero ones, all positive: p = 2 x 1/8 = 0.25.
        assert mtp[4].startswith("0.500 [") and mtp[5] == "0.25 (exact Wilcoxon signed-rank)"
        assert "exact sign test" in str(screen.query_one("#results-note", Static).render())

        # the other algorithm as baseline: the difference changes sign
        await pilot.press("b")
        screen.query_one("#baseline", Select).value = 1
        await until(pilot, lambda: rows(table)[0][4].startswith("-0.500"), "the new baseline")
        assert rows(table)[1][4] == "baseline"

        # config diff: the baseline (first baseline-mtp run, seed 0) against every other run
        await pilot.press("d")  # the focused baseline selector leaves letters to the screen's bindings
        assert screen.query_one(TabbedContent).active == "config"
        diff = rows(screen.query_one("#config-table", DataTable))
        assert diff == [
            ["algorithm.name", "baseline-mtp", "ntp", "ntp", "="],
            ["name", "tiny-baseline-mtp-s0", "tiny-ntp-s0", "tiny-ntp-s1", "tiny-baseline-mtp-s1"],
            ["train.seed", "0", "=", "1", "1"],
        ]

        # curves: every run's points are read; the metric selector offers what all runs share
        rid = runs[0].id or 0
        loss = screen.series[rid].get("train/loss")
        assert loss is not None and (loss.steps, loss.values) == ([5, 10], [4.0 + rid, 3.0 + rid])
        await pilot.press("m")
        options = screen._metric_options
        assert options == [
            "train/head0/ce+val/head0/val_ce",
            "train/loss+val/val_loss",
            "train/head0/ce",
            "train/loss",
            "val/head0/val_ce",
            "val/val_loss",
        ]


async def test_exports_write_table_and_chart_files(ctx: StudioContext, settings: Settings) -> None:
    set_id, _ = make_set(ctx.engine, settings)
    screen = CompareScreen(ctx, comparison_set_id=set_id)
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        table = screen.query_one("#results-table", DataTable)
        await until(pilot, lambda: table.row_count == 2, "the results table")
        exports = settings.home / "exports"
        for index, ext in enumerate(["md", "tex", "csv", "png", "svg"]):
            await pilot.press("e")
            await until(pilot, lambda: choices_shown(pilot.app), "the export picker")
            pilot.app.screen.query_one(OptionList).highlighted = index
            await pilot.press("enter")
            await until(pilot, lambda ext=ext: any(exports.glob(f"compare-set{set_id}-*.{ext}")), ext)
        (csv_path,) = exports.glob("*.csv")
        parsed = list(csv.DictReader(csv_path.open()))
        assert [r["algorithm"] for r in parsed] == ["ntp", "baseline-mtp"]
        assert float(parsed[1]["generated pass@1"]) == 0.875
        assert (
            float(parsed[1]["Δ generated pass@1"]) == 0.5 and float(parsed[1]["p generated pass@1"]) == 0.25
        )
        assert parsed[1]["p generated pass@1 test"] == "exact Wilcoxon signed-rank"
        # two seeds: per-seed Δ .75 and .25 (t-interval ± 3.18 contains 0), p = 0.5, the smallest with 2 seeds
        assert (parsed[1]["p seeds generated pass@1"], parsed[1]["p seeds generated pass@1 min"]) == (
            "0.5",
            "0.5",
        )
        assert parsed[1]["seed noise generated pass@1"] == "within seed noise"
        markdown = next(exports.glob("*.md")).read_text()
        assert "| ntp | 0,1 | 0.375 [" in markdown and "| 0.25 (exact Wilcoxon signed-rank) |" in markdown
        assert "| 0.5 (exact Wilcoxon signed-rank; min 0.5) | within seed noise |" in markdown
        latex = next(exports.glob("*.tex")).read_text()
        assert (
            "\\toprule" in latex and "0.5 (exact Wilcoxon signed-rank; min 0.5) & within seed noise" in latex
        )
        assert next(exports.glob("*.png")).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        svg = next(exports.glob("*.svg")).read_bytes()
        assert (
            ET.fromstring(svg).tag == "{http://www.w3.org/2000/svg}svg"
            and b"tiny-ntp-s0 val/head0/val_ce" in svg
        )


async def test_picked_runs_get_one_row_each(ctx: StudioContext, settings: Settings) -> None:
    _, runs = make_set(ctx.engine, settings)
    screen = CompareScreen(ctx)
    async with ScreenApp(lambda: screen).run_test(size=(80, 24)) as pilot:
        title = screen.query_one("#compare-title", Static)
        await until(pilot, lambda: "set" in str(title.render()), "the latest set")
        await pilot.press("p")
        await until(pilot, lambda: isinstance(pilot.app.screen, PickRunsModal), "the run picker")
        picker = pilot.app.screen.query_one(SelectionList)
        assert sorted(picker.selected) == sorted(r.id for r in runs)  # the set's runs, ticked
        picker.deselect_all()
        picker.select(runs[0].id or 0)  # ntp seed 0
        picker.select(runs[2].id or 0)  # baseline-mtp seed 0
        await pilot.press("enter")
        table = screen.query_one("#results-table", DataTable)
        await until(pilot, lambda: table.row_count == 2, "one row per picked run")
        ntp, mtp = rows(table)
        assert ntp[0] == f"#{runs[0].id} tiny-ntp-s0" and ntp[2] == "0.250 [0.000, 1.000]"  # as stored
        # per-problem differences [1,1,1,1] − [1,0,0,0] = [0, 1, 1, 1]: mean 0.75; greedy pass@1, three
        # discordant problems all one way: exact sign test, p = 2 x (1/2)^3 = 0.25
        assert mtp[3].startswith("0.750 [") and mtp[4] == "0.25 (exact sign test)"
        await pilot.press("escape")  # opened over another screen: back to it
        assert pilot.app.screen is not screen


def test_feed_stops_reading_a_finished_run_until_it_is_retried(
    ctx: StudioContext, settings: Settings
) -> None:
    set_id, runs = make_set(ctx.engine, settings)
    feed = CompareFeed(engine=ctx.engine, comparison_set_id=set_id, run_ids=[])
    first = runs[0].id or 0
    assert len(feed.read().batches[first][0].points) == 6
    claimed = store.claim_next_run(engine=ctx.engine, owner="test", gpus_free=0, lease_s=60)
    assert claimed is not None and claimed.id == first
    store.finish_run(
        engine=ctx.engine, run_id=first, owner="test", token=claimed.fencing_token, status="failed"
    )
    assert feed.read().batches[first][0].points == []  # read once more after it finished
    late = MetricLine(seq=3, step=15, time=0.0, kind="train", metrics={"loss": 1.0})
    store.ingest_metric_lines(engine=ctx.engine, run_id=first, lines=[late])
    snap = feed.read()
    assert first not in snap.batches and len(snap.evaluations[first]) == 1  # settled: evaluations kept
    store.retry_run(engine=ctx.engine, run_id=first)
    assert [p[1:] for p in feed.read().batches[first][0].points] == [("train/loss", 15, 1.0)]


# Greedy pass@1 on eight problems; each seed solves the first c of them (as in tests/unit/test_results.py).
SOLVED_FIRST = {"ntp": (2, 3, 2), "baseline-mtp": (5, 7, 5), "critic-wmtp": (4, 2, 3)}


def make_three_seed_set(engine: Engine, settings: Settings) -> int:
    """A stored comparison set ntp, baseline-mtp, critic-wmtp x seeds 0, 1, 2 with per-problem pass@1."""
    stored = store_set(engine, settings, list(SOLVED_FIRST), [0, 1, 2])
    for run in stored:
        c = SOLVED_FIRST[run.algorithm][run.seed]
        store.record_evaluation(
            engine=engine,
            evaluation=greedy_pass1(run.id or 0, first_solved(c, 8)),
        )
    return stored[0].comparison_set_id or 0


async def test_three_seeds_show_the_test_used_and_which_differences_are_within_seed_noise(
    ctx: StudioContext, settings: Settings
) -> None:
    set_id = make_three_seed_set(ctx.engine, settings)
    screen = CompareScreen(ctx, comparison_set_id=set_id)
    async with ScreenApp(lambda: screen).run_test(size=(160, 40)) as pilot:
        table = screen.query_one("#results-table", DataTable)
        await until(pilot, lambda: table.row_count == 3, "the results table")
        ntp, mtp, critic = rows(table)
        assert [c.label.plain for c in table.columns.values()][2:9] == [
            "generated pass@1",
            "generated pass@1 seed mean",
            "Δ generated pass@1",
            "p generated pass@1",
            "Δ seeds generated pass@1",
            "p seeds generated pass@1",
            "seed noise generated pass@1",
        ]
        # ntp: seeds solve 2, 3, 2 of 8: pooled per problem (1 + 1 + 1/3)/8 = 7/24 with a bootstrap CI over
        # problems; seed mean 7/24 = 0.292 with t-interval ± 4.302653·(√3/24)/√3 = ± 0.179
        assert ntp[:2] == ["ntp", "0,1,2"] and ntp[2].startswith("0.292 [")
        assert ntp[3] == "0.292 [0.112, 0.471]"
        assert ntp[4:] == ["baseline", "–", "–", "–", "–"]
        # baseline-mtp: per-seed Δ 3/8, 4/8, 3/8 → 0.417 ± 0.179 = [0.237, 0.596]: beyond seed noise; the
        # seed-level p is 2/2^3 = 0.25, the smallest three seeds allow; over problems five positive Δ: 2/2^5
        assert mtp[4].startswith("0.417 [") and mtp[5] == "0.0625 (exact Wilcoxon signed-rank)"
        assert mtp[6:] == [
            "0.417 [0.237, 0.596]",
            "0.25 (exact Wilcoxon signed-rank; min 0.25)",
            "beyond seed noise",
        ]
        # critic-wmtp: two discordant-by-1/3 problems (exact sign test, 2·(1/2)^2 = 0.5); per-seed Δ 2/8, −1/8,
        # 1/8 → 1/12 ± 4.302653·√7/24 = 0.083 ± 0.474: within seed noise
        assert critic[5] == "0.5 (exact sign test)"
        assert critic[6:] == [
            "0.083 [-0.391, 0.558]",
            "0.75 (exact Wilcoxon signed-rank; min 0.25)",
            "within seed noise",
        ]
        note = str(screen.query_one("#results-note", Static).render())
        assert "2/2^S with S seeds (3 seeds: 0.25)" in note and "t-interval" in note


def finish_next(engine: Engine, n: int, status: str = "succeeded") -> list[int]:
    """Claim the next `n` queued runs (oldest first) as a worker would and finish them."""
    done = []
    for _ in range(n):
        run = store.claim_next_run(engine=engine, owner="test", gpus_free=0, lease_s=60)
        assert run is not None and run.id is not None
        store.finish_run(engine=engine, run_id=run.id, owner="test", token=run.fencing_token, status=status)
        done.append(run.id)
    return done


# make_set's answer, by hand: pooled pass@1 ntp 0.375, baseline-mtp 0.875 → Δ +0.500, exact Wilcoxon p 0.25,
# per-seed Δ .75 and .25 whose t-interval contains 0 (see the tests above).
ANSWER = "generated pass@1: ntp 0.375; Δ vs ntp: baseline-mtp +0.500 (p 0.25, within seed noise)"


async def test_compare_mode_opens_on_the_latest_finished_set_else_the_latest(
    ctx: StudioContext, settings: Settings
) -> None:
    first, runs_a = make_set(ctx.engine, settings, name="quickstart")
    second, runs_b = make_set(ctx.engine, settings)
    screen = CompareScreen(ctx)  # as the Compare mode opens it: nothing picked
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        title = screen.query_one("#compare-title", Static)
        summary = screen.query_one("#summary", Static)
        table = screen.query_one("#results-table", DataTable)
        # nothing finished: the latest set, with how far it is
        await until(pilot, lambda: f"set {second} (tiny-ntp)" in str(title.render()), "the latest set")
        await until(pilot, lambda: table.row_count == 2, "its results")
        assert rows(table)[0][0] == "ntp" and rows(table)[0][4] == "baseline"
        await until(pilot, lambda: "0 of 4 runs finished" in str(summary.render()), "its progress")

        finish_next(ctx.engine, 4)  # the older set (the quickstart) finishes: it is the one to show now
        await until(pilot, lambda: f"quickstart (set {first})" in str(title.render()), "the finished set")
        await until(pilot, lambda: "finished\n" in str(summary.render()), "its answer")
        assert str(summary.render()) == f"quickstart (set {first}) finished\n{ANSWER}"
        assert sorted(screen.series) == sorted(r.id for r in runs_a)  # the other set's curves are gone
        await until(pilot, lambda: table.row_count == 2, "its results")
        ntp, mtp = rows(table)
        assert ntp[0] == "ntp" and ntp[4] == "baseline" and mtp[4].startswith("0.500 [")

        finish_next(ctx.engine, 3)
        finish_next(ctx.engine, 1, status="failed")  # the newer set finishes too, one run failed
        await until(pilot, lambda: f"set {second} (tiny-ntp)" in str(title.render()), "the newer set")
        news = f"set {second} (tiny-ntp) finished (1 of 4 runs did not succeed)\n{ANSWER}"
        await until(pilot, lambda: str(summary.render()) == news, "its answer")
        assert sorted(screen.series) == sorted(r.id for r in runs_b)


async def test_the_dashboard_announces_a_set_when_its_last_run_finishes(
    ctx: StudioContext, settings: Settings
) -> None:
    from wmtp_studio.tui.app import create_app

    make_set(ctx.engine, settings, name="older")
    finish_next(ctx.engine, 4)  # finished before the dashboard opened: not announced
    set_id, _ = make_set(ctx.engine, settings, name="quickstart")
    finish_next(ctx.engine, 3)
    app = create_app(settings=settings, embedded_worker=False, offer_quickstart=False, poll_s=0.05)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app._sets is not None and app._sets._done is not None, "the first look")
        finish_next(ctx.engine, 1)
        await until(pilot, lambda: any("finished" in n.message for n in app._notifications), "the news")
        (news,) = [n.message for n in app._notifications if "finished" in n.message]
        assert news == f"quickstart (set {set_id}) finished\n{ANSWER}\nCompare (2) shows the table."


class PickerApp(App[None]):
    def __init__(self, modal: PickRunsModal) -> None:
        super().__init__()
        self.modal = modal
        self.picked: list[list[int] | None] = []

    def on_mount(self) -> None:
        self.push_screen(self.modal, self.picked.append)


async def test_run_picker_draws_unticked_boxes_empty_and_enter_with_none_ticked_says_so(
    ctx: StudioContext, settings: Settings
) -> None:
    _, runs = make_set(ctx.engine, settings)
    app = PickerApp(PickRunsModal(runs, [runs[0].id or 0]))
    async with app.run_test(size=(100, 30)) as pilot:
        picker = app.modal.query_one(SelectionList)
        await pilot.pause()
        boxes = [picker.render_line(y).text[:3] for y in range(4)]
        assert boxes == ["▐X▌", "▐ ▌", "▐ ▌", "▐ ▌"]  # Textual's own draws ▐X▌ in both states
        picker.deselect_all()
        await pilot.press("enter")
        await until(pilot, lambda: len(app._notifications) > 0, "a notification")
        assert [n.message for n in app._notifications] == [
            "No run ticked: tick runs with space, then Enter (Escape cancels)"
        ]
        assert app.screen is app.modal and app.picked == []  # still picking
        await pilot.press("down", "space", "enter")  # the second run
        assert app.picked == [[runs[1].id]]


# Okabe & Ito's colours, from their hex codes #E69F00, #56B4E9, #009E73, #CC79A7.
ORANGE, SKY_BLUE, BLUISH_GREEN, REDDISH_PURPLE = (230, 159, 0), (86, 180, 233), (0, 158, 115), (204, 121, 167)


async def test_default_chart_is_head0_ce_train_solid_and_val_dotted_in_colour_blind_safe_colours(
    ctx: StudioContext, settings: Settings
) -> None:
    set_id, runs = make_set(ctx.engine, settings)
    screen = CompareScreen(ctx, comparison_set_id=set_id)
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(screen.drawn) == 8, "the curves")
        names = [r.name for r in runs]
        colours = [ORANGE, SKY_BLUE, BLUISH_GREEN, REDDISH_PURPLE]
        # the val bullets first, under the solid training lines; one colour per run
        assert screen.drawn == [
            *((n, "val/head0/val_ce", c, "dot") for n, c in zip(names, colours, strict=True)),
            *((n, "train/head0/ce", c, "hd") for n, c in zip(names, colours, strict=True)),
        ]
        # the total loss (a sum over heads) stays one choice away
        screen.query_one("#metric", Select).value = "train/loss+val/val_loss"
        await until(pilot, lambda: screen.drawn[0][1] == "val/val_loss", "the total loss")
        assert {(d[1], d[3]) for d in screen.drawn} == {("val/val_loss", "dot"), ("train/loss", "hd")}
