"""The dashboard's one polling pattern (tui/polling.py): replaceable reads lose no rows, a failed read is reported
and the next one recovers."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from textual.widgets import DataTable

from tests.tui.conftest import ScreenApp, add_run, until
from wmtp_studio.series import FeedBatch
from wmtp_studio.settings import Settings
from wmtp_studio.store import Point
from wmtp_studio.tui.compare_feed import CompareFeed, CompareRead
from wmtp_studio.tui.compare_messages import ComparePolled
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.run_feed import RunPolled
from wmtp_studio.tui.screens.runs import RunsPolled, RunsScreen


def _batch(step: int, loss: float) -> FeedBatch:
    return FeedBatch(reset=False, points=[Point(step // 5, "train/loss", step, loss)], blobs=[])


def test_a_newer_run_read_takes_over_the_rows_and_log_lines_of_the_read_it_replaces(
    engine: Engine, settings: Settings
) -> None:
    run = add_run(engine, settings)
    older = RunPolled(run, [_batch(5, 3.0)], [], False, ["step 5"], True, None)
    newer = RunPolled(run, [_batch(10, 2.5)], [], False, ["step 10"], True, None)
    assert older.can_replace(newer)
    assert [p.step for b in newer.batches for p in b.points] == [5, 10]
    assert newer.log_lines == ["step 5", "step 10"] and not newer.log_reset
    # the log was replaced after the older read: its lines are gone from the file, and from what is shown
    after_reset = RunPolled(run, [], [], True, ["new log"], True, None)
    assert newer.can_replace(after_reset)
    assert after_reset.log_lines == ["new log"] and after_reset.log_reset
    assert [p.step for b in after_reset.batches for p in b.points] == [5, 10]
    assert not older.can_replace(RunsPolled([], {}))


def test_a_newer_compare_read_takes_over_the_rows_of_the_same_feed_only(ctx: StudioContext) -> None:
    feed = CompareFeed(engine=ctx.engine, comparison_set_id=None, run_ids=[1, 2])
    older = ComparePolled(feed, CompareRead([], batches={1: [_batch(5, 3.0)], 2: [_batch(5, 4.0)]}))
    newer = ComparePolled(feed, CompareRead([], batches={1: [_batch(10, 2.5)]}))  # run 2 settled since
    assert older.can_replace(newer)
    steps = {rid: [p.step for b in batches for p in b.points] for rid, batches in newer.read.batches.items()}
    assert steps == {1: [5, 10], 2: [5]}
    other_runs = ComparePolled(
        CompareFeed(engine=ctx.engine, comparison_set_id=None, run_ids=[3]), CompareRead([])
    )
    assert newer.can_replace(other_runs) and other_runs.read.batches == {}  # read before the pick: dropped


async def test_the_runs_screen_reports_an_unreadable_store_once_and_recovers(
    ctx: StudioContext, engine: Engine, settings: Settings
) -> None:
    first = add_run(engine, settings)
    app = ScreenApp(lambda: RunsScreen(ctx))
    async with app.run_test(size=(160, 40)) as pilot:
        table: DataTable[Any] = app.screen.query_one("#runs", DataTable)
        await until(pilot, lambda: table.row_count == 1, "the run")
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE run RENAME TO run_elsewhere"))
        failures = lambda: [n.message for n in app._notifications if "cannot read the store" in n.message]  # noqa: E731
        await until(pilot, lambda: bool(failures()), "the failure reported")
        await pilot.pause(0.3)  # several more polls (every 0.05 s) fail meanwhile
        assert len(failures()) == 1 and "no such table: run" in failures()[0]
        assert table.row_count == 1  # what was shown stays
        with engine.begin() as conn:
            conn.execute(sa.text("ALTER TABLE run_elsewhere RENAME TO run"))
        second = add_run(engine, settings)
        await until(pilot, lambda: table.row_count == 2, "the next read")
        assert {str(first.id), str(second.id)} == {str(k.value) for k in table.rows}
