"""The recipes screen under Pilot on a real studio database and a recipes directory: list, live validation,
save, and queueing a comparison through submit.py. `engine` and `settings` come from conftest.py."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from textual.app import App
from textual.pilot import Pilot
from textual.widgets import Checkbox, Input, OptionList, Static, TextArea

from wmtp_studio import store
from wmtp_studio.recipe import load_recipe
from wmtp_studio.settings import Settings
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.modals import ErrorModal
from wmtp_studio.tui.queue_form import ComparisonForm
from wmtp_studio.tui.screens.recipes import RecipesScreen

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY = sorted(p.name for p in RECIPES.glob("tiny-*.yaml"))


class RecipesApp(App[None]):
    def __init__(self, screen: RecipesScreen) -> None:
        super().__init__()
        self.recipes = screen

    def on_mount(self) -> None:
        self.push_screen(self.recipes)


async def wait_for(pilot: Pilot[Any], cond: Callable[[], bool], what: str) -> None:
    """Let the screen's timers and workers run until `cond` holds."""
    deadline = time.monotonic() + 20
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await pilot.app.workers.wait_for_complete()
        await pilot.pause(0.02)


@pytest.fixture
def ctx(engine: Engine, settings: Settings, tmp_path: Path) -> StudioContext:
    """conftest's studio (`engine`, `settings`), with a recipes directory holding copies of the tiny recipes."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    for name in TINY:
        shutil.copy(RECIPES / name, folder / name)
    return StudioContext(engine=engine, settings=settings, recipes_dir=folder, poll_s=0.05)


def status(screen: RecipesScreen) -> str:
    return str(screen.query_one("#validation", Static).render())


async def open_recipe(pilot: Pilot[Any], screen: RecipesScreen, label: str) -> None:
    options = screen.query_one("#recipe-list", OptionList)
    await wait_for(pilot, lambda: options.option_count > 0, "the recipe list")
    options.focus()
    options.highlighted = next(
        i for i in range(options.option_count) if options.get_option_at_index(i).prompt == label
    )
    await pilot.press("enter")
    await wait_for(pilot, lambda: status(screen).startswith("valid"), f"{label} to load and validate")


def replace_line(editor: TextArea, old: str, new: str) -> None:
    """Edit the editor's text as a user would: replace one line (the widget posts Changed)."""
    row = editor.text.splitlines().index(old)
    editor.replace(new, (row, 0), (row, len(old)))


async def test_list_shows_recipe_files_and_saved_recipes(ctx: StudioContext) -> None:
    recipe = load_recipe(RECIPES / "tiny-ntp.yaml")
    store.save_recipe(engine=ctx.engine, name="mine", yaml_text="name: mine\n", recipe=recipe)
    screen = RecipesScreen(ctx)
    async with RecipesApp(screen).run_test(size=(80, 24)) as pilot:
        options = screen.query_one("#recipe-list", OptionList)
        await wait_for(pilot, lambda: options.option_count > 0, "the recipe list")
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert labels == [*TINY, "saved: mine"]


async def test_live_validation_names_the_field_and_only_valid_recipes_are_saved(ctx: StudioContext) -> None:
    screen = RecipesScreen(ctx)
    async with RecipesApp(screen).run_test(size=(120, 40)) as pilot:
        await open_recipe(pilot, screen, "tiny-ntp.yaml")
        assert status(screen).startswith("valid: tiny-ntp, ntp, ")
        editor = screen.query_one("#editor", TextArea)
        steps_line = next(line for line in editor.text.splitlines() if line.startswith("  steps:"))

        replace_line(editor, steps_line, "  steps: -1")
        await wait_for(pilot, lambda: "invalid" in status(screen), "the error to show")
        assert "train.steps" in status(screen) and screen.query_one("#validation").has_class("error")

        replace_line(editor, "  steps: -1", "  stepz: 10")
        await wait_for(pilot, lambda: "train.stepz" in status(screen), "the unknown key to be named")

        screen.query_one("#recipe-name", Input).value = "broken"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, ErrorModal), "the refusal")
        assert "train.stepz" in str(pilot.app.screen.query_one("#error-message", Static).render())
        assert store.list_saved_recipes(engine=ctx.engine) == []
        await pilot.press("escape")

        replace_line(editor, "  stepz: 10", "  steps: 12")
        await wait_for(pilot, lambda: status(screen).startswith("valid"), "the fix to validate")
        assert "12 steps" in status(screen)
        screen.query_one("#recipe-name", Input).value = "tiny-ntp-12"
        await pilot.press("ctrl+s")
        await wait_for(pilot, lambda: len(store.list_saved_recipes(engine=ctx.engine)) == 1, "the save")
        (saved,) = store.list_saved_recipes(engine=ctx.engine)
        assert saved.name == "tiny-ntp-12" and "steps: 12" in saved.yaml_text
        options = screen.query_one("#recipe-list", OptionList)
        await wait_for(pilot, lambda: options.option_count == len(TINY) + 1, "the saved recipe in the list")


async def queue(pilot: Pilot[Any], checked: set[str], seeds: str) -> None:
    await pilot.press("q")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ComparisonForm), "the comparison form")
    form = pilot.app.screen
    for box in form.query(Checkbox):
        box.value = str(box.label) in checked
    form.query_one("#seeds", Input).value = seeds
    form.query_one("#priority", Input).value = "3"
    form.query_one("#seeds", Input).focus()
    await pilot.press("enter")


async def test_queue_comparison_stores_algorithms_x_seeds(ctx: StudioContext) -> None:
    screen = RecipesScreen(ctx)
    async with RecipesApp(screen).run_test(size=(120, 40)) as pilot:
        await open_recipe(pilot, screen, "tiny-ntp.yaml")
        await queue(pilot, {"ntp", "baseline-mtp"}, "0, 1")
        await wait_for(pilot, lambda: len(store.list_runs(engine=ctx.engine)) == 4, "the runs")
        runs = store.list_runs(engine=ctx.engine)
        assert sorted((r.algorithm, r.seed) for r in runs) == [
            ("baseline-mtp", 0),
            ("baseline-mtp", 1),
            ("ntp", 0),
            ("ntp", 1),
        ]
        assert {r.priority for r in runs} == {3} and len({r.comparison_set_id for r in runs}) == 1
        cset = store.get_comparison_set(engine=ctx.engine, comparison_set_id=runs[0].comparison_set_id or 0)
        assert cset is not None and cset.diff == {"algorithm": ["ntp", "baseline-mtp"], "seed": [0, 1]}


async def test_bad_seeds_or_rho1_without_a_reference_store_nothing(ctx: StudioContext) -> None:
    screen = RecipesScreen(ctx)
    async with RecipesApp(screen).run_test(size=(120, 40)) as pilot:
        await open_recipe(pilot, screen, "tiny-ntp.yaml")
        screen.query_one("#recipe-list").focus()
        for checked, seeds, named in [
            ({"ntp"}, "0,x", "seeds '0,x'"),
            ({"ntp", "rho1-wmtp"}, "0", "rho1-wmtp needs a reference model"),
        ]:
            await queue(pilot, checked, seeds)
            await wait_for(pilot, lambda: isinstance(pilot.app.screen, ErrorModal), "the refusal")
            assert named in str(pilot.app.screen.query_one("#error-message", Static).render())
            await pilot.press("escape")
            await wait_for(pilot, lambda: pilot.app.screen is screen, "the modal to close")
            assert store.list_runs(engine=ctx.engine) == []


async def test_three_seeds_queued_from_the_form_compare_per_algorithm_with_seed_columns(
    ctx: StudioContext,
) -> None:
    from wmtp_studio.models import Evaluation
    from wmtp_studio.tui.results import compare_tables

    screen = RecipesScreen(ctx)
    async with RecipesApp(screen).run_test(size=(120, 40)) as pilot:
        await open_recipe(pilot, screen, "tiny-ntp.yaml")
        await queue(pilot, {"ntp", "baseline-mtp"}, "0,1,2")
        await wait_for(pilot, lambda: len(store.list_runs(engine=ctx.engine)) == 6, "the runs")
    runs = store.list_runs(engine=ctx.engine)
    assert sorted((r.algorithm, r.seed) for r in runs) == [
        (a, s) for a in ("baseline-mtp", "ntp") for s in (0, 1, 2)
    ]
    for run in runs:  # each seed's evaluation, as a worker stores it: baseline-mtp solves one problem more
        solved = run.seed + (2 if run.algorithm == "baseline-mtp" else 0)
        store.record_evaluation(
            engine=ctx.engine,
            evaluation=Evaluation(
                run_id=run.id or 0,
                benchmark="generated",
                k=1,
                pass_at_k=solved / 8,
                ci_low=0.0,
                ci_high=1.0,
                n_problems=8,
                per_problem={f"t{j}": {"n": 1, "c": int(j < solved)} for j in range(8)},
            ),
        )
    evaluations = {r.id or 0: store.list_evaluations(engine=ctx.engine, run_id=r.id or 0) for r in runs}
    tables = compare_tables(runs, evaluations, None, is_set=True)
    assert tables.labels == ["ntp", "baseline-mtp"] and tables.baseline == 0
    mtp = dict(zip(tables.results.columns, tables.results.rows[1], strict=True))
    assert mtp["seeds"] == "0,1,2"
    # per-seed Δ 2/8 on every seed: a zero-width t-interval at 0.25, beyond seed noise; p over seeds 2/2^3
    assert mtp["seed noise generated pass@1"] == "beyond seed noise"
    p = mtp["p seeds generated pass@1"]
    assert p is not None and getattr(p, "value", None) == 0.25 and getattr(p, "floor", None) == 0.25
