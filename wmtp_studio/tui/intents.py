"""What the user asks of a run from any screen that lists runs: cancel, retry, change its priority (written to the
store, the only writes the dashboard makes besides recipes and submissions), and open it or compare runs (asked of
the app, so that no screen imports another).

Each write runs in a thread worker; a refused one (StudioError) is shown in a modal; then `then` (the screen's
poll) reads the store again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Engine
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from wmtp_studio import store
from wmtp_studio.errors import StudioError
from wmtp_studio.models import FINISHED_STATUSES, Run
from wmtp_studio.tui.modals import ConfirmModal, ErrorModal

PRIORITY = Binding.Group("Priority", compact=True)
CANCEL_RETRY_KEYS = [Binding("x", "cancel_run", "Cancel"), Binding("r", "retry_run", "Retry")]
PRIORITY_KEYS = [
    Binding("plus,equals_sign", "priority(1)", "Priority", key_display="+", group=PRIORITY),
    Binding("minus", "priority(-1)", "Priority", key_display="-", group=PRIORITY),
]
"""The keys of the run intents; a screen using them has `action_cancel_run`, `action_retry_run` and
`action_priority(delta)`, each calling the function of the same name below."""


@dataclass
class OpenRun(Message):
    """Show one run (the app pushes its screen)."""

    run_id: int


@dataclass
class OpenComparison(Message):
    """Compare picked runs or a comparison set (the app pushes the compare screen)."""

    run_ids: list[int] = field(default_factory=list)
    comparison_set_id: int | None = None


def write(screen: Screen[Any], change: Callable[[], object], *, then: Callable[[], object]) -> None:
    """Write one intent to the store in a thread worker, then call `then` on the UI thread."""

    def run() -> None:
        try:
            change()
        except StudioError as exc:
            screen.app.call_from_thread(screen.app.push_screen, ErrorModal(str(exc), title="Not done"))
        screen.app.call_from_thread(then)

    screen.run_worker(run, group="intent", thread=True)


def cancel_run(screen: Screen[Any], engine: Engine, run: Run | None, *, then: Callable[[], object]) -> None:
    """Ask to confirm, then request the run's cancel (a finished run: a warning instead)."""
    if run is None or run.id is None:
        return
    run_id = run.id
    if run.status in FINISHED_STATUSES:
        screen.notify(f"run {run_id} is already {run.status}", severity="warning")
        return

    def answered(yes: bool | None) -> None:
        if yes:
            write(screen, lambda: store.request_cancel(engine=engine, run_id=run_id), then=then)

    screen.app.push_screen(ConfirmModal(f"Cancel run {run_id} ({run.name}, {run.status})?"), answered)


def retry_run(screen: Screen[Any], engine: Engine, run: Run | None, *, then: Callable[[], object]) -> None:
    if run is not None and run.id is not None:
        run_id = run.id
        write(screen, lambda: store.retry_run(engine=engine, run_id=run_id), then=then)


def priority(
    screen: Screen[Any], engine: Engine, run: Run | None, delta: int, *, then: Callable[[], object]
) -> None:
    """Raise or lower the run's priority by `delta`. `run.priority` changes at once (the screen shows it), so a
    second key press before the next poll adds up."""
    if run is not None and run.id is not None:
        run_id, run.priority = run.id, run.priority + delta
        value = run.priority
        write(screen, lambda: store.set_priority(engine=engine, run_id=run_id, priority=value), then=then)
