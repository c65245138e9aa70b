"""The runs screen: every run, live, with filter, sort and grouping; opens runs and comparisons.

The store is read in a thread worker every `ctx.poll_s` (`runs_overview`: one query); only cells that changed are
written to the table, and the rows are rebuilt only when their order changes. Intents (cancel, retry, priority)
go through store.py, also from thread workers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input
from textual.worker import Worker

from wmtp_studio import store
from wmtp_studio.errors import StudioError
from wmtp_studio.models import FINISHED_STATUSES, utcnow
from wmtp_studio.store import RunOverview
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.modals import ConfirmModal, ErrorModal
from wmtp_studio.tui.runcells import duration, eta_seconds, group_of, progress_bar, sort_value, status_text
from wmtp_studio.tui.tablesync import Cell, current_key, sync_rows

COLUMNS = (  # what matters most first: narrow terminals scroll the rest
    ("mark", " "),
    ("id", "id"),
    ("name", "name"),
    ("status", "status"),
    ("progress", "progress"),
    ("eta", "ETA"),
    ("loss", "loss"),
    ("pass1", "pass@1"),
    ("algorithm", "algorithm"),
    ("seed", "seed"),
    ("set", "set"),
    ("step", "step"),
    ("prio", "prio"),
    ("worker", "worker"),
)
SORTABLE = tuple(key for key, _ in COLUMNS if key != "mark")
GROUPS: tuple[str | None, ...] = (None, "set", "algorithm", "status")
PRIORITY = Binding.Group("Priority", compact=True)


@dataclass
class RunsPolled(Message):
    """Fresh rows from the store (posted by the poll worker; dropped if the screen is gone by then)."""

    rows: list[RunOverview]


class RunsScreen(Screen[None]):
    """All runs (newest first by default). Enter opens a run; space marks runs for a comparison."""

    DEFAULT_CSS = """
    RunsScreen #filter { height: 3; }
    RunsScreen DataTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("enter", "open_run", "Open", priority=True),  # shown in the footer over the table's own
        Binding("space", "mark", "Mark"),
        Binding("c", "compare", "Compare"),
        Binding("x", "cancel_run", "Cancel"),
        Binding("r", "retry_run", "Retry"),
        Binding("plus,equals_sign", "priority(1)", "Priority", key_display="+", group=PRIORITY),
        Binding("minus", "priority(-1)", "Priority", key_display="-", group=PRIORITY),
        Binding("s", "cycle_sort", "Sort"),
        Binding("g", "cycle_group", "Group"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("escape", "focus_table", "Table", show=False),
    ]

    def __init__(
        self, ctx: StudioContext, *, limit: int = 1000, clock: Callable[[], datetime] = utcnow
    ) -> None:
        super().__init__()
        self.ctx, self.limit, self.clock = ctx, limit, clock
        self.overviews: dict[str, RunOverview] = {}
        self.marked: set[int] = set()
        self.columns: list[tuple[str, str]] = []
        self._reader: Worker[None] | None = None
        self.sort_column, self.reverse = "id", True
        self.group: str | None = None
        self.sub_title = "Runs"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter: name, algorithm or status  (/)", id="filter")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self._set_columns()
        self._redraw()
        self.query_one("#runs", DataTable).focus()
        self.refresh_runs()
        self.set_interval(self.ctx.poll_s, self.refresh_runs)

    def refresh_runs(self) -> None:
        """Read the store unless a read is still running: a slow database delays updates, never piles them up."""
        if self._reader is None or self._reader.is_finished:
            self._reader = self.read_runs()

    # --- reading and showing -------------------------------------------------------------------------------

    @work(thread=True, group="runs-poll")
    def read_runs(self) -> None:
        rows = store.runs_overview(engine=self.ctx.engine, limit=self.limit)
        self.post_message(RunsPolled(rows))

    def on_runs_polled(self, message: RunsPolled) -> None:
        self.overviews = {str(o.run.id): o for o in message.rows}
        self._redraw()

    def _set_columns(self) -> None:
        order = "descending" if self.reverse else "ascending"
        grouped = f" · grouped by {self.group}" if self.group else ""
        self.sub_title = f"Runs · sorted by {self.sort_column}, {order}{grouped}"
        arrow = " ▼" if self.reverse else " ▲"
        columns = [(key, label + arrow if key == self.sort_column else label) for key, label in COLUMNS]
        self.columns = columns if self.group is None else [("group", f"by {self.group}"), *columns]

    def _redraw(self) -> None:
        now = self.clock()
        needle = self.query_one("#filter", Input).value.strip().lower()
        shown = [o for o in self.overviews.values() if self._matches(o, needle)]
        shown.sort(key=lambda o: sort_value(o, self.sort_column, now), reverse=self.reverse)
        if self.group is not None:
            group = self.group
            shown.sort(key=lambda o: group_of(o, group))  # stable: sorted blocks, sorted within
        rows = [(str(o.run.id), self._cells(o, now)) for o in shown]
        sync_rows(self.query_one("#runs", DataTable), self.columns, rows)

    @staticmethod
    def _matches(o: RunOverview, needle: str) -> bool:
        r = o.run
        return not needle or any(needle in text.lower() for text in (r.name, r.algorithm, r.status))

    def _cells(self, o: RunOverview, now: datetime) -> list[Cell]:
        r = o.run
        eta = eta_seconds(r, now)
        cells: list[Cell] = [] if self.group is None else [group_of(o, self.group)]
        by_key: dict[str, Cell] = {
            "mark": "●" if r.id in self.marked else "",
            "id": str(r.id),
            "name": r.name,
            "status": status_text(r),
            "progress": progress_bar(r),
            "eta": "-" if eta is None else duration(eta),
            "loss": "-" if o.loss is None else f"{o.loss:.4f}",
            "pass1": "-" if o.pass_at_1 is None else f"{o.pass_at_1:.3f}",
            "algorithm": r.algorithm,
            "seed": str(r.seed),
            "set": o.comparison_set or "-",
            "step": f"{r.last_step}/{r.total_steps}",
            "prio": str(r.priority),
            "worker": r.lease_owner or "-",
        }
        return [*cells, *(by_key[key] for key, _ in COLUMNS)]

    # --- filter, sort, group -------------------------------------------------------------------------------

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._redraw()

    def action_focus_table(self) -> None:
        self.query_one("#runs", DataTable).focus()

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    @on(DataTable.HeaderSelected)
    def _header_selected(self, event: DataTable.HeaderSelected) -> None:
        column = str(event.column_key.value)
        if column in SORTABLE:
            self.sort_by(column, reverse=not self.reverse if column == self.sort_column else False)

    def action_cycle_sort(self) -> None:
        self.sort_by(SORTABLE[(SORTABLE.index(self.sort_column) + 1) % len(SORTABLE)], reverse=False)

    def sort_by(self, column: str, *, reverse: bool) -> None:
        self.sort_column, self.reverse = column, reverse
        self._set_columns()
        self._redraw()

    def action_cycle_group(self) -> None:
        self.group = GROUPS[(GROUPS.index(self.group) + 1) % len(GROUPS)]
        self._set_columns()
        self._redraw()

    # --- actions -------------------------------------------------------------------------------------------

    def selected(self) -> RunOverview | None:
        key = current_key(self.query_one("#runs", DataTable))
        return None if key is None else self.overviews.get(key)

    @on(DataTable.RowSelected, "#runs")
    def _row_clicked(self) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        if self.focused is self.query_one("#filter", Input):
            self.action_focus_table()
            return
        o = self.selected()
        if o is not None and o.run.id is not None:
            from wmtp_studio.tui.screens.run import RunScreen

            self.app.push_screen(RunScreen(self.ctx, o.run.id))

    def action_mark(self) -> None:
        o = self.selected()
        if o is not None and o.run.id is not None:
            self.marked ^= {o.run.id}
            self._redraw()

    def action_compare(self) -> None:
        from wmtp_studio.tui.screens.compare import CompareScreen

        o = self.selected()
        if self.marked:
            self.app.push_screen(CompareScreen(self.ctx, run_ids=sorted(self.marked)))
        elif o is not None and o.run.comparison_set_id is not None:
            self.app.push_screen(CompareScreen(self.ctx, comparison_set_id=o.run.comparison_set_id))
        else:
            self.notify("mark runs with space, or select a run of a comparison set", severity="warning")

    def action_cancel_run(self) -> None:
        o = self.selected()
        if o is None or o.run.id is None:
            return
        run_id = o.run.id
        if o.run.status in FINISHED_STATUSES:
            self.notify(f"run {run_id} is already {o.run.status}", severity="warning")
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.intent(lambda: store.request_cancel(engine=self.ctx.engine, run_id=run_id))

        self.app.push_screen(ConfirmModal(f"Cancel run {run_id} ({o.run.name}, {o.run.status})?"), answered)

    def action_retry_run(self) -> None:
        o = self.selected()
        if o is not None and o.run.id is not None:
            run_id = o.run.id
            self.intent(lambda: store.retry_run(engine=self.ctx.engine, run_id=run_id))

    def action_priority(self, delta: int) -> None:
        o = self.selected()
        if o is not None and o.run.id is not None:
            run_id, value = o.run.id, o.run.priority + delta
            o.run.priority = value  # shown at once; a second key press before the next poll adds up
            self._redraw()
            self.intent(lambda: store.set_priority(engine=self.ctx.engine, run_id=run_id, priority=value))

    @work(thread=True, group="runs-intent")
    def intent(self, write: Callable[[], object]) -> None:
        """Write one intent to the store, then refresh; a refused intent is shown in a modal."""
        try:
            write()
        except StudioError as exc:
            self.app.call_from_thread(self.app.push_screen, ErrorModal(str(exc), title="Not done"))
        self.app.call_from_thread(self.refresh_runs)
