"""Snapshots of the Recipes screen (pytest-textual-snapshot; update them with `pytest
tests/tui/test_recipes_snapshots.py --snapshot-update` after checking the new pictures by eye)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Checkbox, Input, OptionList, Static

from tests.tui.conftest import RECIPES, ScreenApp, until
from wmtp_studio.settings import Settings
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.queue_form import ComparisonForm
from wmtp_studio.tui.screens.recipes import RecipesScreen

Snap = Callable[..., bool]


def test_queue_form_shows_the_problem_and_keeps_the_choices(
    snap_compare: Snap, ctx: StudioContext, settings: Settings, tmp_path: Path
) -> None:
    """tiny-ntp with rho1-wmtp ticked and seeds 0,1: the form stays open over the screen, the problem inside."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    shutil.copy(RECIPES / "tiny-ntp.yaml", folder)
    ctx = StudioContext(engine=ctx.engine, settings=settings, recipes_dir=folder, poll_s=0.05)

    async def refused(pilot: Pilot[Any]) -> None:
        screen = pilot.app.screen
        options = screen.query_one("#recipe-list", OptionList)
        await until(pilot, lambda: options.option_count == 4, "the recipe list")
        options.focus()
        await pilot.press("down", "enter")
        status = screen.query_one("#validation", Static)
        await until(pilot, lambda: str(status.render()).startswith("valid"), "tiny-ntp to open")
        await pilot.press("ctrl+g")
        await until(pilot, lambda: isinstance(pilot.app.screen, ComparisonForm), "the form")
        form = pilot.app.screen
        form.query_one("#algo-rho1-wmtp", Checkbox).value = True
        form.query_one("#seeds", Input).value = "0,1"
        form.query_one("#queue").focus()  # by key: a mouse left over the button would add its hover style
        await pilot.press("enter")
        await until(pilot, lambda: form.query_one("#form-error").display, "the problem")
        seeds = form.query_one("#seeds", Input)
        seeds.cursor_blink = False  # a blinking cursor is on or off depending on when the picture is taken
        seeds.focus()
        await pilot.pause()

    app = ScreenApp(lambda: RecipesScreen(ctx))
    assert snap_compare(app, terminal_size=(100, 36), run_before=refused)
