"""The queue and workers screen: what runs next and who runs it; reprioritise, cancel, retry, pause the queue.

The queue table lists running runs, then queued ones in the order workers claim them (priority, then age), then
waiting ones, then the latest failed or cancelled runs (which can be retried). The workers table shows every
registered worker with how many runs it can hold at once (its slots: one per GPU, or `--slots` on a CPU worker),
how many it holds now and which, its GPUs' memory and utilisation and the age of its heartbeat; the dashboard's
own embedded worker is marked as such.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Label

from wmtp_studio import store
from wmtp_studio.models import Run, Worker, utcnow
from wmtp_studio.tui import intents
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.intents import CANCEL_RETRY_KEYS, PRIORITY_KEYS, OpenRun
from wmtp_studio.tui.polling import Poll, PollFailed, replaced_by_same_kind
from wmtp_studio.tui.runcells import duration, status_text
from wmtp_studio.tui.tablesync import ShownCell, current_key, sync_rows

QUEUE_COLUMNS = [
    (name, name)
    for name in ("id", "name", "algorithm", "status", "prio", "gpus", "attempts", "after", "worker", "age")
]
WORKER_COLUMNS = [
    (name, name)
    for name in ("worker", "kind", "host", "slots", "busy", "running", "gpu memory", "gpu util", "heartbeat")
]


@dataclass
class QueuePolled(Message, bubble=False):
    """Fresh queue, workers and pause flag from the store (a whole snapshot: a newer one replaces it)."""

    runs: list[Run]
    workers: list[Worker]
    paused: bool

    can_replace = replaced_by_same_kind


def gpu_cells(stats: list[dict[str, Any]]) -> tuple[str, str]:
    """Memory used/total (GiB) and utilisation per GPU, or '-' for a worker without GPU statistics."""
    if not stats:
        return "-", "-"
    memory = " ".join(
        f"{g.get('memory_used_mib', 0) / 1024:.0f}/{g.get('memory_total_mib', 0) / 1024:.0f}G" for g in stats
    )
    return memory, " ".join(f"{g.get('utilization_pct', 0):.0f}%" for g in stats)


def slots_text(slots: list[str]) -> str:
    """How many runs a worker can hold at once and on what: `2 (gpu0,gpu1)`, `1 (cpu)`, `2 (cpu)`."""
    devices = sorted(set(slots), key=slots.index)
    return f"{len(slots)} ({','.join(devices)})"


def heartbeat_text(w: Worker, now: datetime) -> Text:
    """The heartbeat's age; a worker silent for longer than store.WORKER_DEAD_AFTER_S is marked dead."""
    age = duration((now - w.heartbeat_at).total_seconds()) + " ago"
    if store.worker_alive(worker=w, now=now):
        return Text(age)
    return Text(f"{age} (dead)", style="bold red")


class QueueScreen(Screen[None]):
    """Queue and workers. `embedded_pid` tells which worker process the dashboard started itself."""

    DEFAULT_CSS = """
    QueueScreen #queue-state { height: 1; padding: 0 1; text-style: bold; }
    QueueScreen #queue-state.paused { background: $warning; color: $text; }
    QueueScreen #queue { height: 2fr; }
    QueueScreen #workers { height: 1fr; border-top: solid $primary; }
    """
    BINDINGS = [
        Binding("p", "toggle_pause", "Pause/resume"),
        *PRIORITY_KEYS,
        *CANCEL_RETRY_KEYS,
    ]

    def __init__(
        self,
        ctx: StudioContext,
        *,
        embedded_pid: Callable[[], int | None] = lambda: None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__()
        self.ctx, self.embedded_pid, self.clock = ctx, embedded_pid, clock
        self.runs: dict[str, Run] = {}
        self.paused = False
        self.sub_title = "Queue and workers"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Label("", id="queue-state")
        yield DataTable(id="queue", cursor_type="row", zebra_stripes=True)
        yield DataTable(id="workers", cursor_type="row")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#queue", DataTable).focus()
        self.poll = Poll(self, self.ctx.poll_s, self.read_queue, group="queue-poll")

    def read_queue(self) -> Iterator[QueuePolled]:
        engine = self.ctx.engine
        yield QueuePolled(
            store.queue_runs(engine=engine),
            store.list_workers(engine=engine),
            store.queue_paused(engine=engine),
        )

    def on_poll_failed(self, failed: PollFailed) -> None:
        self.notify(f"cannot read the store: {failed.error}", severity="error")

    def on_queue_polled(self, state: QueuePolled) -> None:
        now = self.clock()
        self.runs = {str(r.id): r for r in state.runs}
        self.paused = state.paused
        counts = {s: sum(r.status == s for r in state.runs) for s in ("running", "queued", "waiting")}
        summary = ", ".join(f"{n} {s}" for s, n in counts.items())
        label = self.query_one("#queue-state", Label)
        label.update(
            f"Queue PAUSED: workers claim nothing new (p resumes) · {summary}"
            if state.paused
            else f"Queue running · {summary}"
        )
        label.set_class(state.paused, "paused")
        runs = [(str(r.id), self._run_cells(r, now)) for r in state.runs]
        sync_rows(self.query_one("#queue", DataTable), QUEUE_COLUMNS, runs)
        workers = [(w.id, self._worker_cells(w, now)) for w in state.workers]
        sync_rows(self.query_one("#workers", DataTable), WORKER_COLUMNS, workers)

    @staticmethod
    def _run_cells(r: Run, now: datetime) -> list[ShownCell]:
        since = {"running": r.started_at, "failed": r.finished_at, "cancelled": r.finished_at}.get(
            r.status, r.created_at
        )
        return [
            str(r.id),
            r.name,
            r.algorithm,
            status_text(r),
            str(r.priority),
            str(r.gpus_requested),
            str(r.attempts),
            "-" if r.depends_on_run_id is None else f"run {r.depends_on_run_id}",
            r.lease_owner or "-",
            "-" if since is None else duration((now - since).total_seconds()),
        ]

    def _worker_cells(self, w: Worker, now: datetime) -> list[ShownCell]:
        memory, util = gpu_cells(w.gpu_stats)
        embedded = w.pid == self.embedded_pid()
        return [
            w.id,
            "embedded" if embedded else "external",
            w.host,
            slots_text(w.slots),
            f"{len(w.current_run_ids)}/{len(w.slots)}",
            ", ".join(f"run {i}" for i in w.current_run_ids) or "-",
            memory,
            util,
            heartbeat_text(w, now),
        ]

    # --- intents -------------------------------------------------------------------------------------------

    def selected(self) -> Run | None:
        key = current_key(self.query_one("#queue", DataTable))
        return None if key is None else self.runs.get(key)

    def action_toggle_pause(self) -> None:
        paused, engine = not self.paused, self.ctx.engine
        intents.write(
            self, lambda: store.set_flag(engine=engine, name="queue_paused", value=paused), then=self.poll
        )
        self.notify("queue paused: running jobs go on, nothing new starts" if paused else "queue resumed")

    def action_priority(self, delta: int) -> None:
        intents.priority(self, self.ctx.engine, self.selected(), delta, then=self.poll)

    def action_cancel_run(self) -> None:
        intents.cancel_run(self, self.ctx.engine, self.selected(), then=self.poll)

    def action_retry_run(self) -> None:
        intents.retry_run(self, self.ctx.engine, self.selected(), then=self.poll)

    @on(DataTable.RowSelected, "#queue")
    def _opened(self, event: DataTable.RowSelected) -> None:
        run = self.selected()
        if run is not None and run.id is not None:
            self.post_message(OpenRun(run.id))
