"""What a user sees on the run screen at 120x40, read off the screen itself: the header of a failed and of a finished
run, the head the Weights tab opens on, chart axes (whole-step ticks, one x range, a flat line that stays put, the
legend clear of the lines), and paging to the charts and recipe lines below the fold.

Real SQLite stores (conftest's `ctx`) fed with the real metric streams of 60-step runs in tests/data/metrics/."""

from __future__ import annotations

import json

import pytest
import yaml
from textual.app import App
from textual.widgets import Static

from tests.tui.conftest import until
from tests.tui.test_run_screen import chart, new_run, plain, points, run_app, stream
from wmtp_studio import store
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.screens.run import RunScreen
from wmtp_studio.tui.widgets.heatmap import Heatmap

pytestmark = pytest.mark.anyio
BRAILLE = range(0x2801, 0x2900)
"""Plotext's line pixels (U+2800, the blank braille cell, excluded)."""


def screen_lines(app: App[None]) -> list[str]:
    """The terminal's rows as shown now (the compositor's output: what a screenshot would show)."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def chart_rows(app: App[None], chart_id: str) -> list[str]:
    return chart(app, chart_id).render().plain.splitlines()  # type: ignore[union-attr]


async def test_header_says_why_a_failed_run_failed(ctx: StudioContext) -> None:
    run = new_run(ctx, "ntp", stream("ntp")[:9])
    claimed = store.claim_next_run(engine=ctx.engine, owner="host:1", gpus_free=0, lease_s=60)
    assert claimed is not None and claimed.id == run.id
    tail = "loading model\nerror: reference model recipes/ref does not exist\nexiting"
    store.finish_run(
        engine=ctx.engine, run_id=run.id or 0, owner="host:1", token=claimed.fencing_token, status="failed",
        exit_code=2, error_tail=tail,
    )  # fmt: skip
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        header = app.screen.query_one("#run-header", Static)
        reason = "failed: reference model recipes/ref does not exist"
        # the screen is redrawn after the header is: wait for both (a loaded machine draws late)
        await until(pilot, lambda: reason in screen_lines(app)[1], "the reason on screen")
        # store.failure_reason: the last `error:` line of the stored tail, without its prefix
        assert plain(header).splitlines()[1] == reason


async def test_finished_header_reads_100_percent(ctx: StudioContext) -> None:
    run = new_run(ctx, "rho1-wmtp", stream("rho1-wmtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(
            pilot, lambda: "step 60/60" in plain(app.screen.query_one("#run-header", Static)), "step 60"
        )
        # the last train line's loss, step 60, beside 100% (waited for: a loaded machine draws late)
        await until(pilot, lambda: "100% loss 3.9611" in screen_lines(app)[1], "100% on the progress line")


async def test_weights_tab_opens_on_the_first_head_whose_weights_vary(ctx: StudioContext) -> None:
    # rho1-wmtp with keep_head0: head 0's weights are all 1 (w_std 0 at every step), heads 1-3 select tokens
    run = new_run(ctx, "rho1-wmtp", stream("rho1-wmtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        heatmap = app.screen.query_one(Heatmap)
        # the heatmap shares the run's histograms, so it can show all 6 steps one redraw before the head is chosen
        await until(pilot, lambda: len(heatmap.steps) == 6 and heatmap.head == 1, "the heatmap on head 1")
        assert "head 1:" in heatmap.render().plain  # type: ignore[union-attr]
        # head 1's step-60 histogram: 60 % of the tokens selected (weight 1/0.6 ~ 1.67), the rest 0
        bars = app.screen.query_one("#bars")
        assert bars.counts[0] > 0 and sum(c > 0 for c in bars.counts) == 2  # type: ignore[attr-defined]
        await pilot.press("left_square_bracket")  # the user's pick wins over the default from then on
        await until(pilot, lambda: heatmap.head == 0, "head 0")
        await pilot.pause(0.3)  # several polls and redraws later
        assert heatmap.head == 0


async def test_x_ticks_are_whole_steps_and_validation_shares_the_training_range(ctx: StudioContext) -> None:
    run = new_run(ctx, "rho1-wmtp", stream("rho1-wmtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(points(app, "chart-val", "val loss")) == 3, "the validation curve")
        for chart_id in ("chart-loss", "chart-val", "chart-lr", "chart-grad"):
            ticks = chart(app, chart_id).xticks
            assert ticks == [10, 20, 30, 40, 50, 60], chart_id  # train lines at 5..60 (val at 20, 40, 60)
            tick_row = chart_rows(app, chart_id)[-1].split()
            assert tick_row == ["10", "20", "30", "40", "50", "60"], chart_id  # no 18.8 nor 66.2
        # validation's first point (step 20) sits (20 - 5) / (60 - 5) = 27 % along the shared axis, not at its left
        val = chart_rows(app, "chart-val")
        plot = [row for row in val[2:-2] if not any(c.isalpha() for c in row)]  # not the legend's rows
        first_col = min(row.index(c) for row in plot for c in row if ord(c) in BRAILLE)
        left, right = val[1].index("┌") + 1, val[1].index("┐")
        assert first_col - left == pytest.approx(15 / 55 * (right - left), abs=1.5)

        assert chart(app, "chart-val").x_range == chart(app, "chart-loss").x_range == (5, 60)


async def test_a_flat_series_is_one_row_and_its_axis_stays_put(ctx: StudioContext) -> None:
    # ntp's weight entropy is 1 up to float noise: 0.99999994 at steps 10 and 20, then 1.0, then 1.0000001
    lines = stream("ntp")
    run = new_run(ctx, "ntp", lines[:7])  # up to the step-20 train line
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        screen = app.screen
        assert isinstance(screen, RunScreen)
        screen.min_redraw_s = 0.0
        await pilot.press("2")
        entropy = chart(app, "chart-entropy")
        await until(pilot, lambda: len(points(app, "chart-entropy", "head0")) == 2, "two entropy points")
        first = entropy.limits
        assert first == (pytest.approx(0.95), pytest.approx(1.05))  # 1 +/- 5 %, one line: no legend rows
        store.ingest_metric_lines(engine=ctx.engine, run_id=run.id or 0, lines=lines[7:])
        await until(pilot, lambda: len(points(app, "chart-entropy", "head0")) == 6, "six entropy points")
        assert entropy.limits == first
        rows = [r for r in chart_rows(app, "chart-entropy") if any(ord(c) in BRAILLE for c in r)]
        assert len(rows) == 1 and float(rows[0].split("┤")[0]) == 1.0  # one row, at the tick of 1
        std = chart_rows(app, "chart-std")  # exactly 0 everywhere: +/- 1 around it, with short tick labels
        assert any(r.startswith(" 0.0┤") for r in std) and any(r.startswith("-1.0┤") for r in std)


async def test_coinciding_head_lines_are_named_and_the_legend_is_clear_of_them(ctx: StudioContext) -> None:
    run = new_run(ctx, "rho1-wmtp", stream("rho1-wmtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: bool(chart(app, "chart-loss").lines), "the loss chart")
        loss_rows = chart_rows(app, "chart-loss")
        await pilot.press("2")
        await until(pilot, lambda: bool(chart(app, "chart-selected").drawn), "the rho-1 chart")
        # heads 1-3 share one selection (fraction 0.600446 at step 5 for all three); head 0 keeps every token
        for chart_id in ("chart-selected", "chart-entropy", "chart-std"):
            assert list(chart(app, chart_id).lines) == ["head0", "heads 1-3 identical"], chart_id
            assert set(chart(app, chart_id).drawn) == {"head0", "head1", "head2", "head3"}
        shown = {"chart-loss": loss_rows, "chart-entropy": chart_rows(app, "chart-entropy")}
        for chart_id, rows in shown.items():
            legend = [i for i, r in enumerate(rows) if " ⢕⢕ " in r]  # plotext's legend markers
            n = len(chart(app, chart_id).lines)
            # the legend's rows and the one below hold no line pixel besides the legend's own marker
            assert legend == list(range(2, 2 + n))  # the canvas's top rows, under the frame
            for row in rows[2 : 2 + n + 1]:
                marker = row.find(" ⢕⢕ ")
                rest = row[:marker] + row[marker + 4 :] if marker >= 0 else row
                assert not any(ord(c) in BRAILLE for c in rest), (chart_id, row)


async def test_keyboard_pages_to_the_critic_charts_and_the_end_of_the_recipe(ctx: StudioContext) -> None:
    run = new_run(ctx, "critic-wmtp", stream("critic-wmtp-stage2"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: len(points(app, "chart-ev2", "held-out")) == 4, "the stage 2 charts")
        title = "critic stage 2: explained variance (held-out)"
        assert not any(title in row for row in screen_lines(app))  # below the fold at 40 rows
        for _ in range(3):
            await pilot.press("pagedown")
            await pilot.pause(0.1)
        shown = screen_lines(app)
        assert any(title in row for row in shown) and any(
            "critic stage 2: value loss" in row for row in shown
        )
        await pilot.press("6")
        recipe_lines = yaml.safe_dump(json.loads(run.recipe_json), sort_keys=False).splitlines()
        last = recipe_lines[-1].strip()
        assert [ln.strip() for ln in recipe_lines].count(last) == 1
        await until(pilot, lambda: "frozen recipe" in "".join(screen_lines(app)), "the recipe")
        assert not any(last in row for row in screen_lines(app))
        for _ in range(4):
            await pilot.press("pagedown")
            await pilot.pause(0.1)
        assert any(last in row for row in screen_lines(app))
        await pilot.press("pageup")
        await pilot.pause(0.1)
        assert not any(last in row for row in screen_lines(app))
