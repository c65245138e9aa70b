"""Small pickers: one choice out of a list (e.g. an export format), and a set of runs to compare."""

from __future__ import annotations

from collections.abc import Sequence

from rich.segment import Segment
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.strip import Strip
from textual.widgets import Checkbox, Label, OptionList, SelectionList
from textual.widgets.option_list import Option

from wmtp_studio.models import Run


class ChoiceModal(ModalScreen[str | None]):
    """Dismisses with the id of the chosen option (Enter or click), or None (Escape)."""

    DEFAULT_CSS = """
    ChoiceModal { align: center middle; }
    ChoiceModal > Vertical { width: 60; max-width: 90%; height: auto; max-height: 80%;
        border: thick $accent; background: $surface; padding: 1 2; }
    ChoiceModal OptionList { height: auto; max-height: 16; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, title: str, choices: Sequence[tuple[str, str]]) -> None:
        """`choices`: (id, text) pairs."""
        super().__init__()
        self.title_text, self.choices = title, choices

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(self.title_text)
            yield OptionList(*(Option(text, id=key) for key, text in self.choices), id="choices")

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class Checklist(SelectionList[int]):
    """A SelectionList whose unticked boxes are empty. Textual draws an X in both states, told apart by its
    colour only (a dim X reads as ticked on many terminals and in screenshots); here only ticked boxes have one."""

    DEFAULT_CSS = """
    Checklist > .selection-list--button-selected, Checklist > .selection-list--button-selected-highlighted {
        color: $text-success; text-style: bold;
    }
    """

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        segments = list(strip)
        index = self.scroll_offset.y + y
        if (
            len(segments) < 3
            or segments[1].text != Checkbox.BUTTON_INNER
            or index >= self.option_count
            or self.get_option_at_index(index).value in self.selected
        ):
            return strip
        inner = segments[1]
        segments[1] = Segment(" " * len(inner.text), inner.style, inner.control)
        return Strip(segments, strip.cell_length)


class PickRunsModal(ModalScreen[list[int] | None]):
    """Tick runs (space) and confirm with Enter; Escape keeps the current selection."""

    DEFAULT_CSS = """
    PickRunsModal { align: center middle; }
    PickRunsModal > Vertical { width: 90%; max-width: 110; height: 80%;
        border: thick $accent; background: $surface; padding: 1 2; }
    PickRunsModal SelectionList { height: 1fr; }
    """
    BINDINGS = [
        Binding("enter", "confirm", "Compare these", priority=True),
        Binding("escape", "dismiss(None)", "Cancel"),
    ]

    def __init__(self, runs: Sequence[Run], selected: Sequence[int]) -> None:
        super().__init__()
        self.runs, self.selected = runs, set(selected)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Runs to compare (space ticks, Enter confirms)")
            yield Checklist(
                *(
                    (
                        f"#{r.id} {r.name}  {r.algorithm}  seed {r.seed}  {r.status}",
                        r.id or 0,
                        r.id in self.selected,
                    )
                    for r in self.runs
                ),
                id="runs",
            )

    def action_confirm(self) -> None:
        picked = sorted(self.query_one(Checklist).selected)
        if not picked:
            self.notify(
                "No run ticked: tick runs with space, then Enter (Escape cancels)", severity="warning"
            )
            return
        self.dismiss(picked)
