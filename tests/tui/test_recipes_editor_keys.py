"""The recipe editor in the whole dashboard under Pilot: Tab and Escape leave it, inside it digits and `q` are
text (outside, 1-4 switch modes and q quits), and its own indentation keys."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from textual.pilot import Pilot
from textual.widgets import OptionList, TextArea

from tests.tui.conftest import RECIPES, until
from wmtp_studio.settings import Settings
from wmtp_studio.tui.app import StudioApp, create_app


@pytest.fixture
def app(settings: Settings, engine: Engine, tmp_path: Path) -> StudioApp:
    """The whole dashboard on conftest's studio, its recipes folder holding tiny-ntp."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    shutil.copy(RECIPES / "tiny-ntp.yaml", folder)
    return create_app(
        settings=settings, embedded_worker=False, offer_quickstart=False, recipes_dir=folder, poll_s=0.05
    )


async def _open_the_editor(pilot: Pilot[Any], app: StudioApp, text: str) -> TextArea:
    """Switch to the recipes mode; its editor, focused, holding `text`."""
    await pilot.press("3")
    await until(pilot, lambda: app.current_mode == "recipes", "the recipes mode")
    editor = app.screen.query_one("#editor", TextArea)
    editor.focus()
    editor.load_text(text)
    return editor


async def test_tab_and_escape_leave_the_editor_where_digits_and_q_are_text(app: StudioApp) -> None:
    async with app.run_test(size=(120, 40)) as pilot:
        editor = await _open_the_editor(pilot, app, "name: x\n")
        editor.move_cursor((1, 0))
        await pilot.press("1", "q")
        assert editor.text == "name: x\n1q" and app.current_mode == "recipes" and app.is_running
        shown = app.screen.active_bindings  # the footer: the editor's way out, not the keys it types
        assert shown["escape"].binding.description == "Leave editor" and "q" not in shown and "1" not in shown

        await pilot.press("tab")
        assert app.focused is not editor and editor.text == "name: x\n1q"  # Tab moved on, typed nothing
        await pilot.press("shift+tab")
        assert app.focused is editor
        await pilot.press("escape")
        assert isinstance(app.focused, OptionList)  # back in the recipe list
        await pilot.press("1")
        await until(pilot, lambda: app.current_mode == "runs", "the runs mode: 1 navigates again")


async def test_enter_keeps_the_indentation_and_ctrl_t_ctrl_d_change_it(app: StudioApp) -> None:
    async with app.run_test(size=(120, 40)) as pilot:
        editor = await _open_the_editor(pilot, app, "train:")
        editor.move_cursor((0, 6))
        await pilot.press("enter", *"steps: 5", "enter", *"seed: 0")
        assert (
            editor.text == "train:\n  steps: 5\n  seed: 0"
        )  # one level (2 spaces) after `train:`, then kept
        await pilot.press("ctrl+t")
        assert editor.text == "train:\n  steps: 5\n    seed: 0"
        await pilot.press("ctrl+d", "ctrl+d", "ctrl+d")  # two levels off, the third finds no indentation
        assert editor.text == "train:\n  steps: 5\nseed: 0"
        editor.select_all()
        await pilot.press("ctrl+t")  # every selected line
        assert editor.text == "  train:\n    steps: 5\n  seed: 0"
