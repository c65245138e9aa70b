"""Hostile text in the recipes screen under Pilot: a deeply nested recipe pasted into the editor (a
RecursionError crashed the dashboard) and a recipe file that is not UTF-8 show their error; the app lives on."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.engine import Engine
from textual import events
from textual.widgets import Input, OptionList, Static, TextArea

from tests.tui.conftest import ScreenApp, until
from wmtp_studio import store
from wmtp_studio.settings import Settings
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.modals import ErrorModal
from wmtp_studio.tui.screens.recipes import RecipesScreen

RECIPE = """\
name: pasted
model:
  tiny: {hidden_size: 32, num_layers: 2, num_attention_heads: 4}
train: {steps: 5}
algorithm: {name: ntp}
"""
DEEP = RECIPE + "x: " + "[" * 1000 + "]" * 1000 + "\n"


def status(screen: RecipesScreen) -> str:
    return str(screen.query_one("#validation", Static).render())


async def test_pasting_a_deeply_nested_recipe_shows_the_error(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    ctx = StudioContext(engine=engine, settings=settings, recipes_dir=tmp_path, poll_s=0.05)
    screen = RecipesScreen(ctx)
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        editor = screen.query_one("#editor", TextArea)
        editor.focus()
        pilot.app.post_message(events.Paste(DEEP))  # what the driver posts when the terminal pastes
        await until(pilot, lambda: "nested deeper than 32 levels" in status(screen), "the error")
        assert editor.text == DEEP and screen.query_one("#validation").has_class("error")
        screen.query_one("#recipe-name", Input).value = "deep"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, ErrorModal), "the refusal")
        assert "nested deeper than 32 levels" in str(
            pilot.app.screen.query_one("#error-message", Static).render()
        )
        await pilot.press("escape")
        assert store.list_saved_recipes(engine=engine) == []
        editor.load_text("")
        pilot.app.post_message(events.Paste(RECIPE))  # the app is alive and validates the next paste
        await until(pilot, lambda: status(screen).startswith("valid: pasted"), "the valid recipe")


async def test_a_recipe_file_that_is_not_utf8_is_a_modal(
    engine: Engine, settings: Settings, tmp_path: Path
) -> None:
    (tmp_path / "latin1.yaml").write_bytes(RECIPE.replace("pasted", "caf\xe9").encode("latin-1"))
    ctx = StudioContext(engine=engine, settings=settings, recipes_dir=tmp_path, poll_s=0.05)
    screen = RecipesScreen(ctx)
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        options = screen.query_one("#recipe-list", OptionList)
        await until(pilot, lambda: options.option_count > 0, "the recipe list")
        options.focus()
        options.highlighted = options.get_option_index("file:latin1.yaml")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(pilot.app.screen, ErrorModal), "the error")
        message = str(pilot.app.screen.query_one("#error-message", Static).render())
        assert "latin1.yaml" in message and "utf-8" in message.lower()
