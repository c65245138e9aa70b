"""Snapshots of the dashboard on fixed data and a frozen clock (pytest-textual-snapshot; update them with
`pytest tests/tui/test_snapshots.py --snapshot-update` after checking the new pictures by eye)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from textual.pilot import Pilot

from tests.tui.conftest import FROZEN, ScreenApp, add_losses, add_pass1, add_run, claim, frozen, until
from wmtp_studio import store
from wmtp_studio.models import Run, Worker
from wmtp_studio.settings import Settings
from wmtp_studio.tui.app import StudioApp, create_app
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.screens.queue import QueueScreen

Snap = Callable[..., bool]


@pytest.fixture
def studio(engine: Engine, settings: Settings) -> Engine:
    """Six runs: a finished comparison set of three algorithms, one running, one queued, one failed."""
    with store.submission(engine=engine, runs_dir=settings.runs_dir) as sub:
        cset = sub.add_comparison_set(name="tiny-compare", base=_recipe(), factor="algorithm x seed", diff={})
    for recipe, loss, pass1 in (
        ("tiny-ntp.yaml", [2.0, 1.5, 1.25], 0.915),
        ("tiny-baseline-mtp.yaml", [2.5, 2.0, 1.75], 0.480),
        ("tiny-rho1-wmtp.yaml", [2.25, 1.75, 1.5], 0.625),
    ):
        run = add_run(engine, settings, recipe, "train.steps=15", comparison_set_id=cset.id)
        claimed = claim(engine, owner="gpu-host:4242")
        store.finish_run(
            engine=engine, run_id=run.id or 0, owner=claimed.lease_owner or "", token=1, status="succeeded"
        )
        add_losses(engine, run.id or 0, loss)
        add_pass1(engine, run.id or 0, pass1)
    failed = add_run(engine, settings, "tiny-critic-wmtp.yaml", "train.steps=600")
    claim(engine, owner="gpu-host:4242")
    store.finish_run(
        engine=engine, run_id=failed.id or 0, owner="gpu-host:4242", token=1, status="failed", exit_code=1
    )
    running = add_run(engine, settings, "tiny-ntp.yaml", "train.steps=600", "name=long-ntp")
    claim(engine, owner="cpu-box:77")
    add_losses(engine, running.id or 0, [3.0, 2.5, 2.25, 2.0], step0=45)  # step 180 of 600
    add_run(engine, settings, "tiny-rho1-wmtp.yaml", "name=next-rho1", priority=2)
    with engine.begin() as conn:  # fixed times, so that ages and the ETA do not depend on when the test runs
        conn.execute(sa.update(Run).values(created_at=FROZEN - timedelta(hours=1)))
        conn.execute(
            sa.update(Run).where(Run.status != "queued").values(started_at=FROZEN - timedelta(minutes=3))
        )
        conn.execute(
            sa.update(Run)
            .where(Run.finished_at.is_not(None))
            .values(finished_at=FROZEN - timedelta(minutes=1))
        )  # type: ignore[union-attr]
    return engine


def _recipe() -> Any:
    from tests.tui.conftest import RECIPES
    from wmtp_studio.recipe import load_recipe

    return load_recipe(RECIPES / "tiny-ntp.yaml", [])


def _app(settings: Settings) -> StudioApp:
    return create_app(
        settings=settings, embedded_worker=False, offer_quickstart=False, poll_s=0.05, clock=frozen
    )


def _rows(n: int) -> Callable[[Pilot[Any]], Any]:
    async def wait(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: pilot.app.screen.query_one("#runs").row_count == n, f"{n} rows")  # type: ignore[attr-defined]
        await pilot.pause()  # column widths are measured when idle

    return wait


def test_runs_screen(snap_compare: Snap, studio: Engine, settings: Settings) -> None:
    assert snap_compare(_app(settings), terminal_size=(130, 24), run_before=_rows(6))


def test_runs_screen_grouped_by_algorithm_at_80x24(
    snap_compare: Snap, studio: Engine, settings: Settings
) -> None:
    async def group(pilot: Pilot[Any]) -> None:
        await _rows(6)(pilot)
        await pilot.press("g", "g", "down", "space")

    assert snap_compare(_app(settings), terminal_size=(80, 24), run_before=group)


def test_help_panel(snap_compare: Snap, studio: Engine, settings: Settings) -> None:
    async def help_(pilot: Pilot[Any]) -> None:
        await _rows(6)(pilot)
        await pilot.press("f1")

    assert snap_compare(_app(settings), terminal_size=(130, 30), run_before=help_)


def test_queue_screen(snap_compare: Snap, studio: Engine, ctx: StudioContext) -> None:
    store.register_worker(
        engine=studio,
        worker_id="gpu-host:4242",
        host="gpu-host",
        pid=4242,
        slots=["gpu0", "gpu1"],
        version="0.1.0",
    )
    store.register_worker(
        engine=studio, worker_id="cpu-box:77", host="cpu-box", pid=77, slots=["cpu"], version="0.1.0"
    )
    stats = [
        {"index": 0, "memory_used_mib": 61440, "memory_total_mib": 81920, "utilization_pct": 97},
        {"index": 1, "memory_used_mib": 1024, "memory_total_mib": 81920, "utilization_pct": 0},
    ]
    store.heartbeat(engine=studio, worker_id="gpu-host:4242", current_run_ids=[], gpu_stats=stats)
    store.heartbeat(engine=studio, worker_id="cpu-box:77", current_run_ids=[5])
    with studio.begin() as conn:
        conn.execute(sa.update(Worker).values(heartbeat_at=FROZEN - timedelta(seconds=3)))
    app = ScreenApp(lambda: QueueScreen(ctx, embedded_pid=lambda: 77, clock=frozen))

    async def loaded(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: pilot.app.screen.query_one("#workers").row_count == 2, "the workers")  # type: ignore[attr-defined]
        await until(pilot, lambda: pilot.app.screen.query_one("#queue").row_count == 3, "the queue")  # type: ignore[attr-defined]
        await pilot.pause()

    assert snap_compare(app, terminal_size=(120, 24), run_before=loaded)


def test_quickstart_offer(snap_compare: Snap, engine: Engine, settings: Settings) -> None:
    app = create_app(
        settings=settings, embedded_worker=False, offer_quickstart=True, poll_s=0.05, clock=frozen
    )

    async def offered(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: type(pilot.app.screen).__name__ == "QuickstartOffer", "the offer")

    assert snap_compare(app, terminal_size=(100, 24), run_before=offered)
