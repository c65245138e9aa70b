"""The "queue comparison" form: which algorithms, which seeds, what priority. It returns what was typed; the
recipes screen parses it (`ComparisonRequest.parse`) and shows any problem in an error modal."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label

from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import ALGORITHMS


@dataclass(frozen=True)
class ComparisonRequest:
    algorithms: tuple[str, ...]
    seeds: str
    priority: str

    def parse(self) -> tuple[list[str], list[int], int]:
        """(algorithms, seeds, priority); StudioError naming the field that is not understood."""
        try:
            seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise StudioError(
                f"seeds {self.seeds!r}: expected comma-separated integers such as 0,1,2"
            ) from None
        try:
            priority = int(self.priority.strip() or "0")
        except ValueError:
            raise StudioError(
                f"priority {self.priority!r}: expected an integer (higher runs first)"
            ) from None
        return list(self.algorithms), seeds, priority


class ComparisonForm(ModalScreen[ComparisonRequest | None]):
    """Algorithm checkboxes, a seeds and a priority input; Enter or the button queues, Escape cancels."""

    DEFAULT_CSS = """
    ComparisonForm { align: center middle; }
    ComparisonForm > Vertical { width: 64; max-width: 95%; height: auto; max-height: 95%;
        border: thick $accent; background: $surface; padding: 0 1; }
    ComparisonForm Label { margin-top: 1; }
    ComparisonForm Horizontal { margin-top: 1; }
    ComparisonForm Horizontal { height: auto; }
    ComparisonForm Checkbox { margin-left: 2; }
    ComparisonForm Button { margin-right: 2; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(self, recipe_name: str, checked: Sequence[str]) -> None:
        super().__init__()
        self.recipe_name, self.checked = recipe_name, set(checked)

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Queue a comparison of {self.recipe_name}: algorithms x seeds")
            for algorithm in ALGORITHMS:
                yield Checkbox(algorithm, algorithm in self.checked, id=f"algo-{algorithm}", compact=True)
            yield Label("Seeds (comma-separated)")
            yield Input("0", id="seeds", compact=True)
            yield Label("Priority (higher runs first)")
            yield Input("0", id="priority", compact=True)
            with Horizontal():
                yield Button("Queue", variant="primary", id="queue", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def request(self) -> ComparisonRequest:
        return ComparisonRequest(
            algorithms=tuple(a for a in ALGORITHMS if self.query_one(f"#algo-{a}", Checkbox).value),
            seeds=self.query_one("#seeds", Input).value,
            priority=self.query_one("#priority", Input).value,
        )

    def on_input_submitted(self) -> None:
        self.dismiss(self.request())

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(self.request() if event.button.id == "queue" else None)
