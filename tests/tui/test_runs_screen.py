"""The runs screen on a real studio database: rows, live updates, filter, sort, group and the run intents."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.engine import Engine
from textual.widgets import DataTable

from tests.integration.jobs import child_sessions
from tests.tui.conftest import ScreenApp, add_losses, add_pass1, add_run, ago, claim, settle, until
from wmtp_studio import store
from wmtp_studio.models import Run
from wmtp_studio.rundir.metrics import MetricLine
from wmtp_studio.settings import Settings
from wmtp_studio.submit import submit_quickstart
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.embedded import EmbeddedWorker
from wmtp_studio.tui.runcells import (
    duration,
    eta_seconds,
    failure_reason,
    progress_bar,
    seconds_per_step,
    set_progress,
)
from wmtp_studio.tui.screens.runs import RunsScreen
from wmtp_studio.workers.supervise import session_pids

pytestmark = pytest.mark.anyio


def _table(app: ScreenApp) -> DataTable[Any]:
    return app.screen.query_one("#runs", DataTable)


def _column(app: ScreenApp, key: str) -> list[str]:
    table = _table(app)
    return [str(table.get_cell(row, key)) for row in table.rows]


def _cell(app: ScreenApp, run_id: int | str, key: str) -> str:
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
        await pilot.press("S")  # reversed
        assert (
            _column(app, "loss") == ["3.0000", "2.0000", "1.0000"]
            and "loss, descending" in app.screen.sub_title
        )
        await pilot.press("S", "g", "g", "g")  # set -> algorithm -> status: a header row above each group
        keys = [k.value for k in _table(app).rows]
        assert keys == ["group:cancelled", str(runs[1].id), "group:queued", str(runs[0].id), str(runs[2].id)]
        assert _cell(app, "group:queued", "name") == "▾ queued · 2 runs"  # type: ignore[arg-type]
        await pilot.press("g")
        assert not any(str(k.value).startswith("group:") for k in _table(app).rows)
        await pilot.press("slash", *"zeta")
        await until(pilot, lambda: _table(app).row_count == 1, "the filtered row")
        await pilot.press("escape")  # clears the filter and goes back to the table
        assert _table(app).row_count == 3 and _table(app).has_focus


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
        assert any(cell.startswith("●") for cell in _column(app, "id"))
        assert app.screen.query_one("#runs").region.height > 10


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
            (sid,) = child_sessions(worker.pid)
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
    run = Run(recipe_json="", recipe_sha256="", algorithm="ntp", seed=0, status="running", total_steps=600)
    run.last_step = 150
    # Train lines at steps 130, 140, 150: 2000 tokens per 10 steps at 1000 tok/s, then at 500 tok/s:
    # 2 s + 4 s for 20 steps = 0.3 s/step; 450 steps left -> 135 s. (The run's start time plays no part.)
    per_step = seconds_per_step([130, 140, 150], [10_000, 12_000, 14_000], [9999.0, 1000.0, 500.0])
    assert per_step == pytest.approx(0.3)
    assert eta_seconds(run, per_step) == pytest.approx(135.0)
    # a resume rewinds the stream (step 150 -> 100): that pair is skipped, the others count
    assert seconds_per_step([150, 100, 110], [14_000, 4_000, 6_000], [1.0, 1.0, 2000.0]) == pytest.approx(0.1)
    assert seconds_per_step([150], [14_000], [1000.0]) is None  # one line: no interval yet
    assert eta_seconds(run, None) is None
    assert progress_bar(run) == "█░░░░  25%"  # 0.25 * 5 = 1.25 -> 1 cell
    assert duration(59) == "59s" and duration(300) == "5m00s" and duration(3 * 3600 + 65) == "3h01m"
    run.status = "succeeded"
    assert eta_seconds(run, 0.3) is None  # only running runs have an ETA
    run.last_step = 700  # past the budget (a resumed run): capped at 100 %
    assert progress_bar(run) == "█████ 100%"


def _run(rid: int, status: str, steps: int, **kw: Any) -> Run:
    return Run(
        id=rid,
        recipe_json="",
        recipe_sha256="",
        algorithm="ntp",
        seed=0,
        status=status,
        total_steps=steps,
        **kw,
    )


def test_set_progress_and_failure_reason_by_hand() -> None:
    base = _run(1, "succeeded", 700, started_at=ago(400), finished_at=ago(260))
    tunes = [
        _run(
            2,
            "succeeded",
            300,
            comparison_set_id=1,
            depends_on_run_id=1,
            started_at=ago(260),
            finished_at=ago(140),
        ),
        _run(3, "running", 300, comparison_set_id=1, depends_on_run_id=1, last_step=100),
        _run(4, "queued", 300, comparison_set_id=1, depends_on_run_id=1),
        _run(5, "queued", 300, comparison_set_id=1, depends_on_run_id=1),
    ]
    # run 2 took 120 s for 300 steps = 0.4 s/step; run 3 runs at 0.5 s/step with 200 steps left = 100 s;
    # runs 4 and 5: 300 steps x 0.4 s = 120 s each; 100 + 240 = 340 s = 5.7 -> ~6 min. Base done, run 2 done,
    # run 3 running: run 3 of 5.
    assert set_progress([base, *tunes], {3: 0.5}) == "run 3 of 5, ~6 min left"
    # nothing finished in the set yet: the running run's rate stands for the others
    first = [base, _run(2, "running", 300, comparison_set_id=1, depends_on_run_id=1, last_step=0)]
    assert set_progress(first, {2: 1.0}) == "run 2 of 2, ~5 min left"
    assert set_progress(first, {}) == "run 2 of 2"
    assert set_progress([base], {}) is None  # no set going
    failed = _run(
        6, "failed", 10, exit_code=1, error_tail="Traceback:\n  x\nOSError: no such directory: /ref\n\n"
    )
    assert failure_reason(failed) == "OSError: no such directory: /ref"
    assert failure_reason(_run(7, "failed", 10, exit_code=137)) == "exit code 137"
    assert failure_reason(base) is None


def _timed_lines(first_seq: int, steps: list[int], tokens_per_s: float) -> list[MetricLine]:
    """Train lines with the trainer's timing: 1000 tokens per step at `tokens_per_s`."""
    return [
        MetricLine(
            seq=first_seq + i,
            step=step,
            time=0.0,
            kind="train",
            metrics={"loss": 2.0, "tokens_seen": 1000.0 * step, "tokens_per_s": tokens_per_s},
        )
        for i, step in enumerate(steps)
    ]


async def test_eta_follows_the_recent_step_rate_and_the_title_the_sets_progress(
    ctx: StudioContext, engine: Engine, settings: Settings
) -> None:
    _, runs = submit_quickstart(engine=engine, settings=settings)
    base = claim(engine)
    assert base.id == runs[0].id and base.total_steps == 700
    # steps 5..100 at 1000 tok/s (1 s/step), then 105..120 at 5000 tok/s (0.2 s/step): the last 5 intervals
    # (steps 95..120, 25 steps) took 1 x 5 + 0.2 x 20 = 9 s -> 0.36 s/step; 580 steps left -> 208.8 s = 3m28s.
    # (The old ETA from the run's start would not move when the pace changes.)
    store.ingest_metric_lines(
        engine=engine, run_id=base.id or 0, lines=_timed_lines(0, list(range(5, 101, 5)), 1000.0)
    )
    store.ingest_metric_lines(
        engine=engine, run_id=base.id or 0, lines=_timed_lines(20, [105, 110, 115, 120], 5000.0)
    )
    app = _app(ctx)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: _table(app).row_count == 5, "the quickstart's runs")
        await until(pilot, lambda: _cell(app, base.id or 0, "eta") == "3m28s", "the ETA at the recent rate")
        # quickstart: the base runs (1 of 5); nothing finished yet, so the others are estimated at 0.36 s/step:
        # 208.8 s + 4 x 300 x 0.36 s = 640.8 s -> ~11 min
        assert "quickstart: run 1 of 5, ~11 min left" in app.screen.sub_title


async def test_table_fits_120_columns_and_shows_why_a_run_failed(
    ctx: StudioContext, engine: Engine, settings: Settings
) -> None:
    failed = add_run(engine, settings, "tiny-rho1-wmtp.yaml", "train.steps=700")
    claimed = claim(engine, owner="a-rather-long-hostname:123456")
    tail = "Traceback (most recent call last):\nOSError: Repo id must be in the form 'repo_name': '/nope/ref'"
    store.finish_run(
        engine=engine,
        run_id=failed.id or 0,
        owner=claimed.lease_owner or "",
        token=1,
        status="failed",
        exit_code=1,
        error_tail=tail,
    )
    running = add_run(
        engine, settings, "tiny-ntp.yaml", "train.steps=700", "name=quickstart-baseline-mtp-s0-long"
    )
    claim(engine, owner="a-rather-long-hostname:123456")
    add_run(engine, settings, "tiny-ntp.yaml")
    add_losses(engine, running.id or 0, [2.0] * 43)  # step 215 of 700
    app = _app(ctx)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(pilot, lambda: _table(app).row_count == 3, "the runs")
        await pilot.pause()
        table = _table(app)
        columns = [c.key.value for c in table.columns.values()]
        assert {"prio", "worker", "status", "progress"} <= set(columns)
        widths = sum(c.get_render_width(table) for c in table.columns.values())
        assert widths <= table.scrollable_content_region.width  # nothing off-screen to the right
        assert not app.screen.query_one("#detail").display
        await pilot.press("down", "down")  # the failed run: its reason under the table, whole
        detail = str(app.screen.query_one("#detail").render())
        assert detail == f"#{failed.id} failed: OSError: Repo id must be in the form 'repo_name': '/nope/ref'"
    app = _app(ctx)  # wide: the reason and the step get columns
    async with app.run_test(size=(200, 30)) as pilot:
        await until(pilot, lambda: _table(app).row_count == 3, "the runs")
        assert _cell(app, failed.id or 0, "reason").startswith("OSError: Repo id must be")
        assert _cell(app, running.id or 0, "step") == "215/700"
