"""Recipes: the YAML files of the recipes directory and the recipes saved in the database, listed under a header
each; edit one with live validation, save it under a name, or queue a comparison (algorithms x seeds) of it.

Keys: ctrl+s saves, ctrl+g queues a comparison (`q` quits, as on every screen). In the editor every printable
key is text; Tab or Escape leaves it (widgets/yaml_editor.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Button, Footer, Header, Input, OptionList, Static

from wmtp_studio import store
from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import Recipe, load_recipe_text
from wmtp_studio.submit import submit_comparison, wake_workers
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.modals import ErrorModal
from wmtp_studio.tui.polling import replaced_by_same_kind
from wmtp_studio.tui.queue_form import ComparisonForm
from wmtp_studio.tui.recipe_list import Entry, list_options, list_recipes
from wmtp_studio.tui.widgets.yaml_editor import YamlEditor

VALIDATE_AFTER_S = 0.3
"""Validation waits this long after the last keystroke."""


@dataclass
class RecipesListed(Message, bubble=False):
    """The recipes directory's files and the saved recipes (a newer listing replaces it)."""

    folder: Path | None
    files: list[Entry]
    saved: list[Entry]

    can_replace = replaced_by_same_kind


@dataclass
class EntryRead(Message, bubble=False):
    """A recipe's text, read to be edited (a newer choice replaces it)."""

    entry: Entry
    text: str

    can_replace = replaced_by_same_kind


def budget(recipe: Recipe) -> str:
    return (
        f"{recipe.train.steps} steps" if recipe.train.steps is not None else f"{recipe.train.epochs} epochs"
    )


class RecipesScreen(Screen[None]):
    DEFAULT_CSS = """
    RecipesScreen #recipe-pane { width: 32; border-right: tall $panel; }
    RecipesScreen #recipe-list { height: 1fr; }
    RecipesScreen #recipe-list > .option-list--option-disabled { color: $text-accent; text-style: bold; }
    RecipesScreen #name-row { height: auto; }
    RecipesScreen #recipe-name { width: 1fr; }
    RecipesScreen #name-row Button { margin-left: 1; }
    RecipesScreen #editor { height: 1fr; }
    RecipesScreen #validation { height: auto; max-height: 8; padding: 0 1; color: $success; }
    RecipesScreen #validation.error { color: $error; }
    """
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("ctrl+g", "queue", "Queue comparison"),
        Binding("ctrl+r", "reload", "Reload list"),
    ]

    def __init__(self, ctx: StudioContext) -> None:
        super().__init__()
        self.ctx = ctx
        self.entries: dict[str, Entry] = {}
        self.current: Entry | None = None
        self.recipe: Recipe | None = None
        """The editor's text as a validated recipe; None while it is invalid."""
        self.error = "empty recipe"
        self._timer: Timer | None = None
        self.sub_title = "Recipes"

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal():
            with Vertical(id="recipe-pane"):
                yield OptionList(id="recipe-list")
            with Vertical():
                with Horizontal(id="name-row"):
                    yield Input(placeholder="name to save under", id="recipe-name", compact=True)
                    yield Button("Save", id="save", compact=True)
                    yield Button("Queue comparison", id="queue", compact=True)
                yield YamlEditor(id="editor")
                yield Static("Pick a recipe on the left, or write one.", id="validation", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.action_reload()

    # --- the list -----------------------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="recipes-list")
    def action_reload(self) -> None:
        self.post_message(RecipesListed(*list_recipes(self.ctx.recipes_dir, self.ctx.engine)))

    def on_recipes_listed(self, listed: RecipesListed) -> None:
        folder, files, saved = listed.folder, listed.files, listed.saved
        self.entries = {e.key: e for e in [*files, *saved]}
        options = self.query_one("#recipe-list", OptionList)
        highlighted = options.highlighted
        options.clear_options()
        options.add_options(list_options(folder, files, saved))
        if highlighted is not None:
            options.highlighted = min(highlighted, options.option_count - 1)

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        entry = self.entries.get(event.option.id or "")
        if entry is not None:
            self.open_entry(entry)

    @work(thread=True, exclusive=True, group="recipes-open")
    def open_entry(self, entry: Entry) -> None:
        try:
            text = entry.text if entry.path is None else entry.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:  # a worker is a process edge: a bad file is a modal
            self.app.call_from_thread(self.app.push_screen, ErrorModal(f"cannot read {entry.path}: {exc}"))
            return
        self.post_message(EntryRead(entry, text or ""))

    def on_entry_read(self, read: EntryRead) -> None:
        self.current = read.entry
        self.query_one("#recipe-name", Input).value = read.entry.name
        self.query_one("#editor", YamlEditor).load_text(read.text)
        self.validate()

    # --- live validation --------------------------------------------------------------------------------------

    def on_text_area_changed(self) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(VALIDATE_AFTER_S, self.validate)

    def validate(self) -> Recipe | None:
        """Validate the editor's text now (YAML, ${VAR} substitution, every field) and show the outcome."""
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
        source = self.current.label if self.current is not None else "editor"
        status = self.query_one("#validation", Static)
        try:
            self.recipe = load_recipe_text(self.query_one("#editor", YamlEditor).text, source)
        except StudioError as exc:
            self.recipe, self.error = None, str(exc)
            status.update(self.error)
            status.add_class("error")
            return None
        status.update(f"valid: {self.recipe.name}, {self.recipe.algorithm.name}, {budget(self.recipe)}")
        status.remove_class("error")
        return self.recipe

    # --- save and queue ----------------------------------------------------------------------------------------

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "save":
            self.action_save()
        elif event.button.id == "queue":
            self.action_queue()

    def action_save(self) -> None:
        recipe, name = self.validate(), self.query_one("#recipe-name", Input).value.strip()
        if recipe is None:
            self.app.push_screen(ErrorModal(self.error, title="Recipe not saved"))
        elif not name:
            self.app.push_screen(
                ErrorModal("give the recipe a name to save it under", title="Recipe not saved")
            )
        else:
            self.save(name, self.query_one("#editor", YamlEditor).text, recipe)

    @work(thread=True, group="recipes-save")
    def save(self, name: str, text: str, recipe: Recipe) -> None:
        try:
            store.save_recipe(engine=self.ctx.engine, name=name, yaml_text=text, recipe=recipe)
        except Exception as exc:  # a worker is a process edge: report what the database said
            self.app.call_from_thread(self.app.push_screen, ErrorModal(str(exc), title="Recipe not saved"))
            return
        self.app.call_from_thread(self.notify, f"saved recipe {name!r}", title="Recipes")
        self.app.call_from_thread(self.action_reload)

    def action_queue(self) -> None:
        recipe = self.validate()
        if recipe is None:
            self.app.push_screen(ErrorModal(self.error, title="Cannot queue this recipe"))
            return
        checked = [
            a for a in ("ntp", "baseline-mtp", "critic-wmtp", "grad-wmtp") if a != recipe.algorithm.name
        ]
        form = ComparisonForm(
            recipe.name,
            recipe.algorithm.name,
            [recipe.algorithm.name, *checked],
            submit=lambda algorithms, seeds, priority: self.submit(recipe, algorithms, seeds, priority),
        )
        self.app.push_screen(form, self._queued)

    def _queued(self, message: str | None) -> None:
        if message is not None:
            self.notify(message, title="Queued")

    def submit(self, recipe: Recipe, algorithms: list[str], seeds: list[int], priority: int) -> str:
        """Store the comparison set and wake the workers (called by the form, in its thread); StudioError when
        it is refused, which the form shows while keeping every choice."""
        ctx = self.ctx
        cset, runs = submit_comparison(
            engine=ctx.engine,
            settings=ctx.settings,
            recipe=recipe,
            algorithms=algorithms,
            seeds=seeds,
            priority=priority,
        )
        warning = wake_workers(ctx.settings, [r.id or 0 for r in runs])
        message = f"comparison set {cset.id}: {len(runs)} runs queued"
        return f"{message}\n{warning}" if warning else message
