"""The runs screen on a real studio database: rows, live updates, filter, sort, group and the run intents."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from textual.widgets import DataTable

from tests.tui.conftest import FROZEN, ScreenApp, add_losses, add_pass1, add_run, claim, settle, until
from wmtp_studio import store
from wmtp_studio.models import Run
from wmtp_studio.settings import Settings
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.embedded import EmbeddedWorker
from wmtp_studio.tui.runcells import duration, eta_seconds, progress_bar
from wmtp_studio.tui.screens.runs import RunsScreen
from workers.supervise import session_pids

pytestmark = pytest.mark.anyio


def _table(app: ScreenApp) -> DataTable[Any]:
    return app.screen.query_one("#runs", DataTable)


def _column(app: ScreenApp, key: str) -> list[str]:
    table = _table(app)
    return [str(table.get_cell(row, key)) for row in table.rows]


def _cell(app: ScreenApp, run_id: int, key: str) -> str:
    return str(_table(app).get_cell(str(run_id), key))


def _app(ctx: StudioContext) -> ScreenApp:
    return ScreenApp(lambda: RunsScreen(ctx))


async def test_shows_every_stored_run_with_loss_progress_and_pass_at_1(
    ctx: StudioContext, engine: Engine, settings: Settings
) -> None:
    a = add_run(engine, settings, "tiny-ntp.yaml", "train.steps=100")
    b = add_run(engine, settings, "tiny-rho1-wmtp.yaml")
    add_losses(engine, a.id or 0, [2.5, 2.0, 1.25])  # last_step becomes 15 of 100
    add_pass1(engine, a.id or 0, 0.42)
    app = _app(ctx)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: _table(app).row_count == 2, "two rows")
        assert _column(app, "id") == [str(b.id), str(a.id)]  # newest first
        assert _cell(app, a.id or 0, "loss") == "1.2500"  # the latest point, not the smallest or the first
        assert _cell(app, a.id or 0, "pass1") == "0.420"
        assert _cell(app, a.id or 0, "step") == "15/100"
        assert _cell(app, a.id or 0, "progress").endswith("15%")
        assert _cell(app, b.id or 0, "loss") == "-"
        assert _cell(app, b.id or 0, "algorithm") == "rho1-wmtp"
        assert _cell(app, b.id or 0, "status") == "queued"


async def test_table_follows_the_database_live(
    ctx: StudioContext, engine: Engine, settings: Settings
) -> None:
    run = add_run(engine, settings)
    app = _app(ctx)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: _table(app).row_count == 1, "the run")
        claim(engine, owner="host-a:7")
        add_losses(engine, run.id or 0, [3.0, 2.75])
        await until(pilot, lambda: _cell(app, run.id or 0, "loss") == "2.7500", "the new loss")
        assert _cell(app, run.id or 0, "status") == "running"
        assert _cell(app, run.id or 0, "worker") == "host-a:7"
        added = add_run(engine, settings, "tiny-baseline-mtp.yaml")
        await until(pilot, lambda: _table(app).row_count == 2, "the new run")
        assert _column(app, "id")[0] == str(added.id)


async def test_only_changed_cells_are_written(ctx: StudioContext, engine: Engine, settings: Settings) -> None:
    run = add_run(engine, settings)
    add_run(engine, settings)
    app = _app(ctx)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: _table(app).row_count == 2, "the runs")
        screen = app.screen
        assert isinstance(screen, RunsScreen)
        table = _table(app)
        before = {key: table.get_row(key) for key in table.rows}
        add_losses(engine, run.id or 0, [1.5])
        await until(pilot, lambda: _cell(app, run.id or 0, "loss") == "1.5000", "the loss")
        after = {key: table.get_row(key) for key in table.rows}
        changed = {
            (k.value, i)
            for k in before
            for i, (x, y) in enumerate(zip(before[k], after[k], strict=True))
            if x != y
        }
        columns = [c.value for c in table.columns]
        assert {(k, columns[i]) for k, i in changed} == {
            (str(run.id), "loss"),
            (str(run.id), "step"),
            (str(run.id), "progress"),
        }


async def test_filter_sort_and_group(ctx: StudioContext, engine: Engine, settings: Settings) -> None:
    runs = [
        add_run(engine, settings, "tiny-ntp.yaml"),
        add_run(engine, settings, "tiny-rho1-wmtp.yaml"),
        add_run(engine, settings, "tiny-ntp.yaml", "name=zeta"),
    ]
    for run, loss in zip(runs, (2.0, 1.0, 3.0), strict=True):
        add_losses(engine, run.id or 0, [loss])
    store.request_cancel(engine=engine, run_id=runs[1].id or 0)
    app = _app(ctx)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: _table(app).row_count == 3, "the runs")
        await pilot.press("slash", *"rho1")
        await until(pilot, lambda: _table(app).row_count == 1, "the filtered row")
        assert _column(app, "algorithm") == ["rho1-wmtp"]
        await pilot.press(*["backspace"] * 4, *"cancel")  # status matches too
        assert _column(app, "id") == [str(runs[1].id)]
        await pilot.press(*["backspace"] * 6, "enter")  # empty filter, back to the table
        assert _table(app).row_count == 3 and _table(app).has_focus
        await pilot.press("s")  # id -> name
        assert _column(app, "name") == ["tiny-ntp", "tiny-rho1-wmtp", "zeta"]
        for _ in range(4):  # name -> status -> progress -> ETA -> loss
            await pilot.press("s")
        assert app.screen.sort_column == "loss"  # type: ignore[attr-defined]
        assert _column(app, "loss") == ["1.0000", "2.0000", "3.0000"]
        await pilot.press("g", "g", "g")  # set -> algorithm -> status
        assert _column(app, "group") == ["cancelled", "queued", "queued"]
        assert _column(app, "id") == [str(runs[1].id), str(runs[0].id), str(runs[2].id)]  # by loss within
        await pilot.press("g")
        assert "group" not in [c.value for c in _table(app).columns]


def _status(engine: Engine, run_id: int) -> str:
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None
    return run.status


async def test_cancel_retry_and_priority_keys(ctx: StudioContext, engine: Engine, settings: Settings) -> None:
    run = add_run(engine, settings)
    app = _app(ctx)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: _table(app).row_count == 1, "the run")
        await pilot.press("x")
        await pilot.press("n")  # declined: nothing changes
        await settle(pilot)
        assert _status(engine, run.id or 0) == "queued"
        await pilot.press("x", "y")
        await until(pilot, lambda: _cell(app, run.id or 0, "status") == "cancelled", "the cancel")
        assert _status(engine, run.id or 0) == "cancelled"
        await pilot.press("r")
        await until(pilot, lambda: _cell(app, run.id or 0, "status") == "queued", "the retry")
        await pilot.press("plus", "plus", "plus", "minus")
        await until(pilot, lambda: _cell(app, run.id or 0, "prio") == "2", "priority 2")
        await settle(pilot)
        stored = store.get_run(engine=engine, run_id=run.id or 0)
        assert stored is not None and stored.priority == 2


async def test_a_refused_retry_shows_a_modal(ctx: StudioContext, engine: Engine, settings: Settings) -> None:
    run = add_run(engine, settings)
    app = _app(ctx)
    async with app.run_test(size=(160, 40)) as pilot:
        await until(pilot, lambda: _table(app).row_count == 1, "the run")
        await pilot.press("r")  # a queued run cannot be retried
        await until(pilot, lambda: app.screen.__class__.__name__ == "ErrorModal", "the error modal")
        assert "only failed or cancelled runs can be retried" in str(
            app.screen.query_one("#error-message").render()
        )
        await pilot.press("escape")
        assert isinstance(app.screen, RunsScreen)
        assert _status(engine, run.id or 0) == "queued"


async def test_renders_at_80x24(ctx: StudioContext, engine: Engine, settings: Settings) -> None:
    for _ in range(30):
        add_run(engine, settings)
    app = _app(ctx)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: _table(app).row_count == 30, "the runs")
        await pilot.press("g", "s", "down", "down", "space")
        assert "●" in _column(app, "mark")
        assert app.screen.query_one("#runs").region.height > 10


def _child_sessions(pid: int) -> list[int]:
    """Children of `pid` that lead their own session (the trainers a worker started)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        _state, ppid, _pgrp, session = stat[stat.rfind(")") + 2 :].split()[:4]
        if int(ppid) == pid and int(session) == int(entry):
            found.append(int(entry))
    return found


@pytest.mark.slow
async def test_cancel_from_the_ui_stops_a_real_running_job(
    ctx: StudioContext, engine: Engine, settings: Settings
) -> None:
    run = add_run(
        engine,
        settings,
        "tiny-ntp.yaml",
        "train.steps=2000",
        "train.log_every=1",
        "eval.benchmarks=[]",
        "data.generated.num_train=600",
        "train.batch_size=16",
    )
    worker = EmbeddedWorker(settings, poll_s=0.2)  # `wmtp-worker --cpu --poll-s 0.2` on the same studio home
    try:
        app = _app(ctx)
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: _table(app).row_count == 1, "the run's row")
            await until(pilot, lambda: _cell(app, run.id or 0, "loss") != "-", "training steps", timeout=180)
            assert _cell(app, run.id or 0, "status") == "running"
            (sid,) = _child_sessions(worker.pid)
            assert session_pids(sid)
            await pilot.press("x", "y")
            await until(
                pilot, lambda: _cell(app, run.id or 0, "status") == "cancelled", "the cancel", timeout=90
            )
        assert _status(engine, run.id or 0) == "cancelled"
        assert session_pids(sid) == []  # the trainer and everything it started are gone
        assert worker.proc.poll() is None  # the worker itself goes on
    finally:
        assert worker.stop() == 0, worker.log_path.read_text()[-3000:]


def test_progress_eta_and_durations_by_hand() -> None:
    started = FROZEN - timedelta(seconds=100)
    run = Run(recipe_json="", recipe_sha256="", algorithm="ntp", seed=0, status="running", total_steps=600)
    run.last_step, run.started_at = 150, started
    # 150 steps in 100 s -> 1.5 steps/s; 450 steps left -> 300 s
    assert eta_seconds(run, FROZEN) == 300.0
    assert progress_bar(run) == "██░░░░░░  25%"  # 0.25 * 8 = 2 cells
    assert duration(59) == "59s" and duration(300) == "5m00s" and duration(3 * 3600 + 65) == "3h01m"
    run.status = "succeeded"
    assert eta_seconds(run, FROZEN) is None  # only running runs have an ETA
    run.last_step = 700  # past the budget (a resumed run): capped at 100 %
    assert progress_bar(run) == "████████ 100%"
