"""The whole dashboard (`create_app`) on a real studio home: modes, help, command palette, the quickstart offer,
navigation into the run and compare screens, and the embedded worker as a real subprocess."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlalchemy.engine import Engine
from textual.widgets import DataTable, OptionList

from tests.tui.conftest import add_run, choices_shown, settle, until
from wmtp_studio import store
from wmtp_studio.settings import Settings
from wmtp_studio.submit import QUICKSTART_ALL_ALGORITHMS
from wmtp_studio.tui.app import MODES, StudioApp, create_app
from wmtp_studio.tui.screens.queue import QueueScreen
from wmtp_studio.tui.screens.runs import RunsScreen

pytestmark = pytest.mark.anyio


def _app(settings: Settings, **kw: Any) -> StudioApp:
    kw = {"embedded_worker": False, "offer_quickstart": False, "poll_s": 0.05} | kw
    return create_app(settings=settings, **kw)


def _rows(app: StudioApp) -> int:
    return app.screen.query_one("#runs", DataTable).row_count


async def test_keys_switch_modes_and_the_palette_lists_them(settings: Settings, engine: Engine) -> None:
    app = _app(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("2")
        await until(pilot, lambda: type(app.screen).__name__ == "CompareScreen", "the compare mode")
        await pilot.press("3")
        await until(pilot, lambda: type(app.screen).__name__ == "RecipesScreen", "the recipes mode")
        await pilot.press("4")
        assert isinstance(app.screen, QueueScreen) and app.current_mode == "queue"
        await pilot.press("1")
        assert isinstance(app.screen, RunsScreen)
        await pilot.press("ctrl+p", *"Queue", "enter")
        await until(pilot, lambda: app.current_mode == "queue", "the queue mode from the palette")


async def test_help_panel_lists_the_screen_bindings(settings: Settings, engine: Engine) -> None:
    app = _app(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("f1")
        await pilot.pause()
        assert app.screen.query("HelpPanel")
        keys = app.export_screenshot()
        assert "Cancel" in keys and "Retry" in keys and "Queue" in keys
        await pilot.press("question_mark")
        await pilot.pause()
        assert not app.screen.query("HelpPanel")


async def _take_the_quickstart(settings: Settings, highlight: int | None, rows: int) -> list[str | None]:
    """An empty studio's dashboard: Enter on option `highlight` of the quickstart offer (None: on the one it
    opens with), then wait for the `rows` runs queued; the ids of the options offered."""
    app = _app(settings, offer_quickstart=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: choices_shown(app), "the quickstart offer")
        choices = app.screen.query_one(OptionList)
        offered = [choices.get_option_at_index(i).id for i in range(choices.option_count)]
        if highlight is not None:
            choices.highlighted = highlight
        await pilot.press("enter")
        await until(
            pilot, lambda: isinstance(app.screen, RunsScreen) and _rows(app) == rows, "the quickstart runs"
        )
    return offered


async def test_first_start_offers_the_quickstart_and_shows_its_runs(
    settings: Settings, engine: Engine
) -> None:
    await _take_the_quickstart(settings, None, 5)  # the first choice: fast, one seed
    runs = store.list_runs(engine=engine)
    assert sorted(r.algorithm for r in runs) == ["baseline-mtp", "critic-wmtp", "ntp", "ntp", "rho1-wmtp"]
    assert {r.seed for r in runs} == {0}


async def test_thorough_quickstart_queues_three_seeds_per_algorithm(
    settings: Settings, engine: Engine
) -> None:
    assert await _take_the_quickstart(settings, 1, 13) == ["1", "3", "all", "no"]  # 1: thorough, 3 seeds
    tunes = [r for r in store.list_runs(engine=engine) if r.comparison_set_id is not None]
    assert sorted((r.algorithm, r.seed) for r in tunes) == sorted(
        (a, s) for a in ("ntp", "baseline-mtp", "critic-wmtp", "rho1-wmtp") for s in (0, 1, 2)
    )


async def test_every_algorithm_quickstart_queues_one_fine_tune_per_algorithm(
    settings: Settings, engine: Engine
) -> None:
    await _take_the_quickstart(settings, 2, len(QUICKSTART_ALL_ALGORITHMS) + 1)  # 2: every algorithm
    tunes = [r for r in store.list_runs(engine=engine) if r.comparison_set_id is not None]
    assert sorted(r.algorithm for r in tunes) == sorted(QUICKSTART_ALL_ALGORITHMS)
    assert {"grad-wmtp", "grpo-wmtp"} <= set(QUICKSTART_ALL_ALGORITHMS) and {r.seed for r in tunes} == {0}


async def test_declined_quickstart_queues_nothing_and_is_not_offered_to_a_used_studio(
    settings: Settings, engine: Engine
) -> None:
    app = _app(settings, offer_quickstart=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: choices_shown(app), "the quickstart offer")
        app.screen.query_one(OptionList).highlighted = 3  # not now
        await pilot.press("enter")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)
    assert store.list_runs(engine=engine) == []
    add_run(engine, settings)
    app = _app(settings, offer_quickstart=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: _rows(app) == 1, "the stored run")
        await settle(pilot)
        assert isinstance(app.screen, RunsScreen)


async def test_enter_opens_the_run_and_c_compares_marked_runs(settings: Settings, engine: Engine) -> None:
    a, b = add_run(engine, settings), add_run(engine, settings, "tiny-rho1-wmtp.yaml")
    app = _app(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: _rows(app) == 2, "the runs")
        await pilot.press("enter")
        await until(pilot, lambda: type(app.screen).__name__ == "RunScreen", "the run screen")
        assert app.screen.run_id == b.id  # type: ignore[attr-defined]
        await pilot.press("escape")
        await until(pilot, lambda: isinstance(app.screen, RunsScreen), "back to the runs")
        await pilot.press("space", "down", "space", "c")
        await until(pilot, lambda: type(app.screen).__name__ == "CompareScreen", "the compare screen")
        assert sorted(app.screen.run_ids) == sorted([a.id, b.id])  # type: ignore[attr-defined]


@pytest.mark.slow
async def test_embedded_worker_starts_shows_and_stops_with_the_app(
    settings: Settings, engine: Engine
) -> None:
    app = _app(settings, embedded_worker=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: app.embedded is not None, "the embedded worker")
        worker = app.embedded
        assert worker is not None
        await until(
            pilot, lambda: bool(store.list_workers(engine=engine, alive_within_s=30)), "its registration", 60
        )
        (row,) = store.list_workers(engine=engine)
        assert row.pid == worker.pid and row.slots == ["cpu"]
        await pilot.press("4")
        table = app.screen.query_one("#workers", DataTable)
        await until(pilot, lambda: table.row_count == 1, "the workers table")
        assert str(table.get_cell(row.id, "kind")) == "embedded"
        with anyio.fail_after(60):  # quitting must not hang while the worker stops
            await pilot.press("ctrl+q")
    assert app.return_code == 0
    assert worker.proc.poll() == 0  # stopped with SIGTERM on exit, cleanly
    assert store.list_workers(engine=engine) == []
    assert f"worker {row.id} stopped" in Path(worker.log_path).read_text()


async def test_no_embedded_worker_when_a_live_worker_is_registered(
    settings: Settings, engine: Engine
) -> None:
    store.register_worker(engine=engine, worker_id="gpu:1", host="gpu", pid=1, slots=["gpu0"], version="x")
    app = _app(settings, embedded_worker=True)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await settle(pilot)
        assert app.embedded is None


async def test_c_without_marks_compares_the_selected_runs_comparison_set(
    settings: Settings, engine: Engine
) -> None:
    from tests.tui.conftest import RECIPES
    from wmtp_studio.recipe import load_recipe

    with store.submission(engine=engine, runs_dir=settings.runs_dir) as sub:
        base = load_recipe(RECIPES / "tiny-ntp.yaml", [])
        cset = sub.add_comparison_set(name="s", base=base, factor="algorithm x seed", diff={})
        sub.add_run(recipe=base, comparison_set_id=cset.id)
    app = _app(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: _rows(app) == 1, "the run")
        await pilot.press("c")
        await until(pilot, lambda: type(app.screen).__name__ == "CompareScreen", "the compare screen")
        assert app.screen.set_id == cset.id  # type: ignore[attr-defined]


async def test_palette_screenshot_lands_in_the_studio_home(settings: Settings, engine: Engine) -> None:
    app = _app(settings)
    async with app.run_test(size=(100, 30)) as pilot:
        await pilot.pause()
        await pilot.press("ctrl+p", *"Screenshot", "enter")
        folder = settings.home / "screenshots"
        await until(pilot, lambda: folder.is_dir() and any(folder.glob("*.svg")), "a screenshot file")
        svg = next(folder.glob("*.svg")).read_text()
        assert svg.startswith("<svg") and "WMTP" in svg


@pytest.mark.parametrize("screen", ["runs", "compare", "recipes", "queue", "run"])
async def test_q_quits_from_every_screen_and_the_footer_says_so(
    settings: Settings, engine: Engine, screen: str
) -> None:
    """One meaning for `q` on every screen (the run screen, opened from the runs, included): quit."""
    add_run(engine, settings)
    app = _app(settings)
    async with app.run_test(size=(120, 40)) as pilot:
        await until(pilot, lambda: _rows(app) == 1, "the run")
        if screen == "run":
            await pilot.press("enter")
            await until(pilot, lambda: type(app.screen).__name__ == "RunScreen", "the run screen")
        else:
            await pilot.press(str([m for m, _, _ in MODES].index(screen) + 1))
            await until(pilot, lambda: app.current_mode == screen, f"the {screen} mode")
        await pilot.pause()  # each screen's own first focus (a table, a list, tabs): no text field
        shown = app.screen.active_bindings.get("q")
        assert shown is not None and shown.binding.action == "quit" and shown.binding.show
        await pilot.press("q")
        await pilot.pause()
        assert app.return_code == 0 and not app.is_running
