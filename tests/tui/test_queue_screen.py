"""The queue and workers screen on a real studio database: claim order, pause/resume, priority, cancel, retry,
and the workers table."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from textual.widgets import DataTable, Label

from tests.tui.conftest import ScreenApp, add_run, claim, until
from wmtp_studio import store
from wmtp_studio.models import utcnow
from wmtp_studio.settings import Settings
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.screens.queue import QueueScreen

pytestmark = pytest.mark.anyio


def _column(app: ScreenApp, table_id: str, key: str) -> list[str]:
    table: DataTable[Any] = app.screen.query_one(table_id, DataTable)
    return [str(table.get_cell(row, key)) for row in table.rows]


def _ids(app: ScreenApp) -> list[int]:
    return [int(x) for x in _column(app, "#queue", "id")]


async def test_queue_in_claim_order_and_priority_keys_reorder_it(
    ctx: StudioContext, engine: Engine, settings: Settings
) -> None:
    a, b, c = (add_run(engine, settings) for _ in range(3))
    waiting = add_run(engine, settings, depends_on_run_id=a.id)
    running = claim(engine)  # run a: the oldest at equal priority
    store.set_priority(engine=engine, run_id=c.id or 0, priority=5)
    app = ScreenApp(lambda: QueueScreen(ctx))
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: len(_ids(app)) == 4, "the queue")
        assert _ids(app) == [running.id, c.id, b.id, waiting.id]
        assert _column(app, "#queue", "status") == ["running", "queued", "queued", "waiting"]
        await pilot.press("down", "down")  # run b
        await pilot.press("plus", "plus", "plus", "plus", "plus", "plus")  # 6 > 5: b now goes before c
        await until(pilot, lambda: _ids(app) == [running.id, b.id, c.id, waiting.id], "the new order")
        nxt = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=60)
        assert nxt is not None and nxt.id == b.id  # what the screen shows is what workers do


async def test_pause_and_resume_the_queue(ctx: StudioContext, engine: Engine, settings: Settings) -> None:
    run = add_run(engine, settings)
    app = ScreenApp(lambda: QueueScreen(ctx))
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: len(_ids(app)) == 1, "the queue")
        state = app.screen.query_one("#queue-state", Label)
        await pilot.press("p")
        await until(pilot, lambda: state.has_class("paused"), "the paused banner")
        assert store.queue_paused(engine=engine)
        assert store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=60) is None
        await pilot.press("p")
        await until(pilot, lambda: not state.has_class("paused"), "the running banner")
        assert not store.queue_paused(engine=engine)
        claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=60)
        assert claimed is not None and claimed.id == run.id


async def test_cancel_a_running_run_and_retry_a_cancelled_one(
    ctx: StudioContext, engine: Engine, settings: Settings
) -> None:
    run = add_run(engine, settings)
    claim(engine)
    app = ScreenApp(lambda: QueueScreen(ctx))
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: _column(app, "#queue", "status") == ["running"], "the running run")
        await pilot.press("x", "y")
        await until(pilot, lambda: _column(app, "#queue", "status") == ["cancelling"], "the cancel request")
        stored = store.get_run(engine=engine, run_id=run.id or 0)
        assert stored is not None and stored.cancel_requested and stored.status == "running"
        # the worker stops it and records the end; the screen then lists it among the retryable runs
        assert store.finish_run(
            engine=engine, run_id=run.id or 0, owner="host:1", token=1, status="cancelled"
        )
        await until(pilot, lambda: _column(app, "#queue", "status") == ["cancelled"], "the cancelled run")
        await pilot.press("r")
        await until(pilot, lambda: _column(app, "#queue", "status") == ["queued"], "the retried run")


async def test_workers_table_shows_gpus_heartbeat_and_the_embedded_worker(
    ctx: StudioContext, engine: Engine
) -> None:
    store.register_worker(
        engine=engine, worker_id="gpu-host:11", host="gpu-host", pid=11, slots=["gpu0"], version="x"
    )
    store.register_worker(engine=engine, worker_id="here:22", host="here", pid=22, slots=["cpu"], version="x")
    stats = [{"index": 0, "memory_used_mib": 40960, "memory_total_mib": 81920, "utilization_pct": 87}]
    store.heartbeat(engine=engine, worker_id="gpu-host:11", current_run_ids=[3], gpu_stats=stats)
    store.heartbeat(engine=engine, worker_id="here:22", current_run_ids=[])
    app = ScreenApp(lambda: QueueScreen(ctx, embedded_pid=lambda: 22))
    async with app.run_test(size=(140, 40)) as pilot:
        await until(pilot, lambda: len(_column(app, "#workers", "worker")) == 2, "the workers")
        assert _column(app, "#workers", "kind") == ["external", "embedded"]
        assert _column(app, "#workers", "gpu memory") == ["40/80G", "-"]
        assert _column(app, "#workers", "gpu util") == ["87%", "-"]
        assert _column(app, "#workers", "slots") == ["1 (gpu0)", "1 (cpu)"]
        assert _column(app, "#workers", "busy") == ["1/1", "0/1"]
        assert _column(app, "#workers", "running") == ["run 3", "-"]
        assert all(age.endswith("s ago") for age in _column(app, "#workers", "heartbeat"))
        assert not any("dead" in age for age in _column(app, "#workers", "heartbeat"))
        screen = app.screen
        assert isinstance(screen, QueueScreen)
        screen.clock = lambda: utcnow() + timedelta(minutes=5)  # five silent minutes later
        await until(
            pilot,
            lambda: all(age.endswith("ago (dead)") for age in _column(app, "#workers", "heartbeat")),
            "both workers shown dead",
        )


async def test_workers_show_how_many_slots_they_have_and_which_runs_fill_them(
    ctx: StudioContext, engine: Engine
) -> None:
    """A 2-GPU worker holding one run and a CPU worker started with `--slots 3` (its row holds ["cpu"] x 3,
    as workers/daemon.py registers it) holding two."""
    store.register_worker(
        engine=engine, worker_id="gpus:1", host="gpus", pid=1, slots=["gpu0", "gpu1"], version="x"
    )
    store.register_worker(
        engine=engine, worker_id="cpus:2", host="cpus", pid=2, slots=["cpu"] * 3, version="x"
    )
    store.heartbeat(engine=engine, worker_id="gpus:1", current_run_ids=[7])
    store.heartbeat(engine=engine, worker_id="cpus:2", current_run_ids=[4, 9])
    app = ScreenApp(lambda: QueueScreen(ctx))
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: len(_column(app, "#workers", "worker")) == 2, "the workers")
        rows = dict(
            zip(
                _column(app, "#workers", "worker"),
                zip(
                    _column(app, "#workers", "slots"),
                    _column(app, "#workers", "busy"),
                    _column(app, "#workers", "running"),
                    strict=True,
                ),
                strict=True,
            )
        )
        assert rows == {
            "gpus:1": ("2 (gpu0,gpu1)", "1/2", "run 7"),
            "cpus:2": ("3 (cpu)", "2/3", "run 4, run 9"),
        }
