"""The recipes screen under Pilot on a real studio database and a recipes directory: list, live validation,
save, and queueing a comparison through submit.py. `engine` and `settings` come from conftest.py."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from textual.pilot import Pilot
from textual.widgets import Checkbox, Input, OptionList, Static, TextArea

from tests.evaluations import first_solved, greedy_pass1
from tests.tui.conftest import ScreenApp, until
from wmtp_studio import store
from wmtp_studio.recipe import load_recipe
from wmtp_studio.settings import Settings
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.modals import ErrorModal
from wmtp_studio.tui.queue_form import ComparisonForm
from wmtp_studio.tui.screens.recipes import RecipesScreen

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TINY = sorted(p.name for p in RECIPES.glob("tiny-*.yaml"))


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
    await until(pilot, lambda: options.option_count > 0, "the recipe list")
    options.focus()
    options.highlighted = next(
        i for i in range(options.option_count) if options.get_option_at_index(i).prompt == label
    )
    await pilot.press("enter")
    await until(pilot, lambda: status(screen).startswith("valid"), f"{label} to load and validate")


def replace_line(editor: TextArea, old: str, new: str) -> None:
    """Edit the editor's text as a user would: replace one line (the widget posts Changed)."""
    row = editor.text.splitlines().index(old)
    editor.replace(new, (row, 0), (row, len(old)))


async def test_list_shows_recipe_files_and_saved_recipes_under_their_own_headers(ctx: StudioContext) -> None:
    recipe = load_recipe(RECIPES / "tiny-ntp.yaml")
    store.save_recipe(engine=ctx.engine, name="mine", yaml_text="name: mine\n", recipe=recipe)
    screen = RecipesScreen(ctx)
    async with ScreenApp(lambda: screen).run_test(size=(80, 24)) as pilot:
        options = screen.query_one("#recipe-list", OptionList)
        await until(pilot, lambda: options.option_count > 0, "the recipe list")
        rows = [options.get_option_at_index(i) for i in range(options.option_count)]
        assert [str(o.prompt) for o in rows] == ["Files in recipes/", *TINY, "Saved in the studio", "mine"]
        assert [i for i, o in enumerate(rows) if o.disabled] == [0, len(TINY) + 1]  # headers cannot be opened
        assert screen.sub_title == "Recipes" and screen.query("Header")  # the title bar of every mode
        options.focus()
        await pilot.press("end", "enter")
        name = screen.query_one("#recipe-name", Input)
        await until(pilot, lambda: name.value == "mine", "the saved recipe to open")
        assert screen.query_one("#editor", TextArea).text == "name: mine\n"


async def test_an_empty_group_says_so(engine: Engine, settings: Settings) -> None:
    ctx = StudioContext(engine=engine, settings=settings, recipes_dir=None, poll_s=0.05)
    screen = RecipesScreen(ctx)
    async with ScreenApp(lambda: screen).run_test(size=(80, 24)) as pilot:
        options = screen.query_one("#recipe-list", OptionList)
        await until(pilot, lambda: options.option_count > 0, "the recipe list")
        labels = [str(options.get_option_at_index(i).prompt) for i in range(options.option_count)]
        assert labels == [
            "Files in recipes/",
            "  no recipes/ folder here",
            "Saved in the studio",
            "  none yet (ctrl+s saves)",
        ]


async def test_live_validation_names_the_field_and_only_valid_recipes_are_saved(ctx: StudioContext) -> None:
    screen = RecipesScreen(ctx)
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        await open_recipe(pilot, screen, "tiny-ntp.yaml")
        assert status(screen).startswith("valid: tiny-ntp, ntp, ")
        editor = screen.query_one("#editor", TextArea)
        steps_line = next(line for line in editor.text.splitlines() if line.startswith("  steps:"))

        replace_line(editor, steps_line, "  steps: -1")
        await until(pilot, lambda: "invalid" in status(screen), "the error to show")
        assert "train.steps" in status(screen) and screen.query_one("#validation").has_class("error")

        replace_line(editor, "  steps: -1", "  stepz: 10")
        await until(pilot, lambda: "train.stepz" in status(screen), "the unknown key to be named")

        screen.query_one("#recipe-name", Input).value = "broken"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: isinstance(pilot.app.screen, ErrorModal), "the refusal")
        assert "train.stepz" in str(pilot.app.screen.query_one("#error-message", Static).render())
        assert store.list_saved_recipes(engine=ctx.engine) == []
        await pilot.press("escape")

        replace_line(editor, "  stepz: 10", "  steps: 12")
        await until(pilot, lambda: status(screen).startswith("valid"), "the fix to validate")
        assert "12 steps" in status(screen)
        screen.query_one("#recipe-name", Input).value = "tiny-ntp-12"
        await pilot.press("ctrl+s")
        await until(pilot, lambda: len(store.list_saved_recipes(engine=ctx.engine)) == 1, "the save")
        (saved,) = store.list_saved_recipes(engine=ctx.engine)
        assert saved.name == "tiny-ntp-12" and "steps: 12" in saved.yaml_text
        options = screen.query_one("#recipe-list", OptionList)
        await until(pilot, lambda: options.option_count == len(TINY) + 3, "the saved recipe in the list")
        assert str(options.get_option_at_index(len(TINY) + 2).prompt) == "tiny-ntp-12"


async def queue(pilot: Pilot[Any], checked: set[str], seeds: str, *, key: bool = False) -> ComparisonForm:
    """Open the form (ctrl+g, or the screen's button), tick `checked`, type the seeds and priority 3, press Enter
    in the seeds field."""
    if not isinstance(pilot.app.screen, ComparisonForm):
        await (pilot.press("ctrl+g") if key else pilot.click("#queue"))
    await until(pilot, lambda: isinstance(pilot.app.screen, ComparisonForm), "the comparison form")
    form = pilot.app.screen
    assert isinstance(form, ComparisonForm)
    for box in form.query(Checkbox):
        box.value = str(box.label) in checked
    form.query_one("#priority", Input).value = "3"
    form.query_one("#seeds", Input).focus()
    form.query_one("#seeds", Input).value = seeds
    await pilot.press("enter")
    return form


def form_state(form: ComparisonForm) -> tuple[set[str], str, str]:
    ticked = {str(b.label) for b in form.query(Checkbox) if b.value}
    return ticked, form.query_one("#seeds", Input).value, form.query_one("#priority", Input).value


def form_error(form: ComparisonForm) -> str:
    error = form.query_one("#form-error", Static)
    return str(error.render()) if error.display else ""


async def test_queue_comparison_stores_algorithms_x_seeds(ctx: StudioContext) -> None:
    screen = RecipesScreen(ctx)
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        await open_recipe(pilot, screen, "tiny-ntp.yaml")
        await queue(pilot, {"ntp", "baseline-mtp"}, "0, 1", key=True)
        await until(pilot, lambda: len(store.list_runs(engine=ctx.engine)) == 4, "the runs")
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


async def test_a_refused_comparison_keeps_the_form_open_with_every_choice(ctx: StudioContext) -> None:
    """Bad seeds, no seed, rho1-wmtp on an ntp recipe: the form says why in its own words (no CLI flags) and
    keeps what was typed; fixing the one field queues the set and closes the form."""
    screen = RecipesScreen(ctx)
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        await open_recipe(pilot, screen, "tiny-ntp.yaml")
        screen.query_one("#recipe-list").focus()
        for checked, seeds, named in [
            ({"ntp", "critic-wmtp"}, "0,x", "seeds '0,x': expected comma-separated integers"),
            ({"ntp", "critic-wmtp"}, " ", "seeds: type at least one"),
            (
                {"ntp", "rho1-wmtp"},
                "0,1",
                "rho1-wmtp needs a reference model, and this recipe is ntp: untick",
            ),
        ]:
            form = await queue(pilot, checked, seeds)
            await until(pilot, lambda f=form: bool(form_error(f)), "the problem in the form")
            assert pilot.app.screen is form and not pilot.app.query(ErrorModal)
            assert named in form_error(form) and "--" not in form_error(form)
            assert form_state(form) == (checked, seeds, "3")
            assert store.list_runs(engine=ctx.engine) == []
        form.query_one("#algo-rho1-wmtp", Checkbox).value = False  # the fix: untick rho1-wmtp, queue again
        await pilot.click("#queue")
        await until(pilot, lambda: pilot.app.screen is screen, "the form to close")
        runs = store.list_runs(engine=ctx.engine)
        assert sorted((r.algorithm, r.seed, r.priority) for r in runs) == [("ntp", 0, 3), ("ntp", 1, 3)]


async def test_a_comparison_the_store_refuses_shows_why_in_the_form(
    ctx: StudioContext, tmp_path: Path
) -> None:
    """A rho1 recipe whose reference does not exist: the store refuses the whole set; the form shows the store's
    reason, stays open with its choices, and Cancel closes it."""
    screen = RecipesScreen(ctx)
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        await open_recipe(pilot, screen, "tiny-rho1-wmtp.yaml")
        editor = screen.query_one("#editor", TextArea)
        line = next(x for x in editor.text.splitlines() if x.startswith("  reference:"))
        replace_line(editor, line, f"  reference: {tmp_path}/no-model")
        await until(pilot, lambda: status(screen).startswith("valid"), "the edit to validate")
        form = await queue(pilot, {"ntp", "rho1-wmtp"}, "0")
        await until(pilot, lambda: bool(form_error(form)), "the store's refusal in the form")
        assert f"algorithm.reference: {tmp_path}/no-model does not exist" in form_error(form)
        assert pilot.app.screen is form and form_state(form) == ({"ntp", "rho1-wmtp"}, "0", "3")
        assert not form.query_one("#queue").disabled  # it can be tried again
        assert store.list_runs(engine=ctx.engine) == []
        await pilot.click("#cancel")
        await until(pilot, lambda: pilot.app.screen is screen, "the form to close")
        assert store.list_runs(engine=ctx.engine) == []


async def test_three_seeds_queued_from_the_form_compare_per_algorithm_with_seed_columns(
    ctx: StudioContext,
) -> None:
    from wmtp_studio.compare.tables import compare_tables

    screen = RecipesScreen(ctx)
    async with ScreenApp(lambda: screen).run_test(size=(120, 40)) as pilot:
        await open_recipe(pilot, screen, "tiny-ntp.yaml")
        await queue(pilot, {"ntp", "baseline-mtp"}, "0,1,2")
        await until(pilot, lambda: len(store.list_runs(engine=ctx.engine)) == 6, "the runs")
    runs = store.list_runs(engine=ctx.engine)
    assert sorted((r.algorithm, r.seed) for r in runs) == [
        (a, s) for a in ("baseline-mtp", "ntp") for s in (0, 1, 2)
    ]
    for run in runs:  # each seed's evaluation, as a worker stores it: baseline-mtp solves one problem more
        solved = run.seed + (2 if run.algorithm == "baseline-mtp" else 0)
        store.record_evaluation(
            engine=ctx.engine,
            evaluation=greedy_pass1(run.id or 0, first_solved(solved, 8)),
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
