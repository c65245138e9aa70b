"""The "queue comparison" form: which algorithms, which seeds, what priority.

Queue (or Enter in a field) checks the choices (`ComparisonRequest.parse`, in the form's own words) and hands them
to `submit`, which stores the comparison set in a thread. A problem, either the form's or the store's, is shown
inside the form, which stays open with every choice as it was, so the user fixes one field and queues again.
Only a stored comparison closes it (with submit's message); Escape or Cancel closes it without queueing.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import Button, Checkbox, Input, Label, Static
from textual.worker import Worker as ThreadWorker
from textual.worker import WorkerState

from wmtp_studio.errors import StudioError
from wmtp_studio.recipe_algorithms import ALGORITHMS

Submit = Callable[[list[str], list[int], int], str]
"""(algorithms, seeds, priority) -> the message to show once queued; raises StudioError when refused."""


@dataclass(frozen=True)
class ComparisonRequest:
    algorithms: tuple[str, ...]
    seeds: str
    priority: str

    def parse(self, base_algorithm: str) -> tuple[list[str], list[int], int]:
        """(algorithms, seeds, priority) of a comparison of a `base_algorithm` recipe; StudioError naming the
        field that is not understood, in terms of this form."""
        if not self.algorithms:
            raise StudioError("tick at least one algorithm")
        try:
            seeds = [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError:
            raise StudioError(
                f"seeds {self.seeds!r}: expected comma-separated integers such as 0,1,2"
            ) from None
        if not seeds:
            raise StudioError("seeds: type at least one, e.g. 0 or 0,1,2")
        if len(set(seeds)) != len(seeds):
            raise StudioError(f"seeds {self.seeds!r}: a seed is repeated; list each once")
        try:
            priority = int(self.priority.strip() or "0")
        except ValueError:
            raise StudioError(
                f"priority {self.priority!r}: expected an integer (higher runs first)"
            ) from None
        if "rho1-wmtp" in self.algorithms and base_algorithm != "rho1-wmtp":
            raise StudioError(
                f"rho1-wmtp needs a reference model, and this recipe is {base_algorithm}: untick rho1-wmtp, or "
                "queue from a rho1-wmtp recipe (open one, or set algorithm.name: rho1-wmtp and "
                "algorithm.reference: PATH in the editor), whose reference the whole set then shares"
            )
        return list(self.algorithms), seeds, priority


class Tick(Checkbox):
    """A checkbox whose box is empty when unticked: Textual draws the X in both states, told apart by colour only."""

    def render(self) -> Content:
        self.BUTTON_INNER = "X" if self.value else " "
        return super().render()


class ComparisonForm(ModalScreen[str | None]):
    """Algorithm checkboxes, a seeds and a priority input, the last problem (if any), Queue and Cancel."""

    DEFAULT_CSS = """
    ComparisonForm { align: center middle; }
    ComparisonForm > Vertical { width: 72; max-width: 95%; height: auto; max-height: 95%;
        border: thick $accent; background: $surface; padding: 0 1; }
    ComparisonForm Label { margin-top: 1; }
    ComparisonForm Checkbox { margin-left: 2; }
    ComparisonForm Input { width: 30; }
    ComparisonForm #form-error { display: none; height: auto; margin-top: 1; padding: 0 1;
        color: $text-error; background: $error-muted; }
    ComparisonForm #form-error.shown { display: block; }
    ComparisonForm Horizontal { height: auto; margin-top: 1; }
    ComparisonForm Button { margin-right: 2; }
    """
    BINDINGS = [Binding("escape", "dismiss(None)", "Cancel")]

    def __init__(
        self, recipe_name: str, base_algorithm: str, checked: Sequence[str], *, submit: Submit
    ) -> None:
        super().__init__()
        self.recipe_name, self.base_algorithm, self.checked = recipe_name, base_algorithm, set(checked)
        self.submit = submit

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label(f"Queue a comparison of {self.recipe_name}: algorithms x seeds")
            for algorithm in ALGORITHMS:
                yield Tick(algorithm, algorithm in self.checked, id=f"algo-{algorithm}", compact=True)
            yield Label("Seeds (comma-separated)")
            yield Input("0", id="seeds")
            yield Label("Priority (higher runs first)")
            yield Input("0", id="priority")
            yield Static("", id="form-error", markup=False)
            with Horizontal():
                yield Button("Queue", id="queue")
                yield Button("Cancel", id="cancel")

    def request(self) -> ComparisonRequest:
        return ComparisonRequest(
            algorithms=tuple(a for a in ALGORITHMS if self.query_one(f"#algo-{a}", Checkbox).value),
            seeds=self.query_one("#seeds", Input).value,
            priority=self.query_one("#priority", Input).value,
        )

    def on_input_submitted(self) -> None:
        self.queue()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        if event.button.id == "queue":
            self.queue()
        else:
            self.dismiss(None)

    def queue(self) -> None:
        button = self.query_one("#queue", Button)
        if button.disabled:  # a submission is already on its way
            return
        try:
            algorithms, seeds, priority = self.request().parse(self.base_algorithm)
        except StudioError as exc:
            self.refused(str(exc))
            return
        button.disabled = True
        self.store(algorithms, seeds, priority)

    @work(thread=True, group="queue-form", exit_on_error=False)
    def store(self, algorithms: list[str], seeds: list[int], priority: int) -> str:
        return self.submit(algorithms, seeds, priority)

    def on_worker_state_changed(self, event: ThreadWorker.StateChanged) -> None:
        """The form closes only once the set is stored; a refusal (or what the database said) stays in it."""
        worker = event.worker
        if worker.group != "queue-form":
            return
        if event.state == WorkerState.SUCCESS:
            self.dismiss(worker.result)
        elif event.state == WorkerState.ERROR:
            error = worker.error
            self.refused(str(error) if isinstance(error, StudioError) else f"{type(error).__name__}: {error}")

    def refused(self, problem: str) -> None:
        error = self.query_one("#form-error", Static)
        error.update(f"Not queued: {problem}")
        error.add_class("shown")
        self.query_one("#queue", Button).disabled = False
