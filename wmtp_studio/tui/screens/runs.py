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
from textual.widgets import DataTable, Footer, Header, Input, Static
from textual.worker import Worker

from wmtp_studio import store
from wmtp_studio.errors import StudioError
from wmtp_studio.models import FINISHED_STATUSES, utcnow
from wmtp_studio.store import RunOverview
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.modals import ConfirmModal, ErrorModal
from wmtp_studio.tui.runcells import failure_reason, group_of, set_progress
from wmtp_studio.tui.runstable import (
    COLUMNS,
    LABELS,
    arrange,
    fit_columns,
    header_label,
    read_rates,
    run_cells,
    table_rows,
    with_headers,
)
from wmtp_studio.tui.tablesync import current_key, sync_rows

SORTABLE = tuple(c.key for c in COLUMNS)
GROUPS: tuple[str | None, ...] = (None, "set", "algorithm", "status")
PRIORITY = Binding.Group("Priority", compact=True)


@dataclass
class RunsPolled(Message):
    """Fresh rows from the store (posted by the poll worker; dropped if the screen is gone by then)."""

    rows: list[RunOverview]
    per_step: dict[int, float]
    """Recent wall seconds per step of the running runs that report their timing."""


class RunsScreen(Screen[None]):
    """All runs (newest first by default). Enter opens a run; space marks runs for a comparison."""

    DEFAULT_CSS = """
    RunsScreen #filter { height: 3; }
    RunsScreen DataTable { height: 1fr; }
    RunsScreen #detail { height: auto; max-height: 3; padding: 0 1; color: $error; }
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
        Binding("S", "reverse_sort", "Reverse sort", key_display="S"),
        Binding("g", "cycle_group", "Group"),
        Binding("slash", "focus_filter", "Filter"),
        Binding("escape", "clear_filter", "Clear filter", show=False),
    ]

    def __init__(
        self, ctx: StudioContext, *, limit: int = 1000, clock: Callable[[], datetime] = utcnow
    ) -> None:
        super().__init__()
        self.ctx, self.limit, self.clock = ctx, limit, clock
        self.overviews: dict[str, RunOverview] = {}
        self.per_step: dict[int, float] = {}
        self.marked: set[int] = set()
        self._reader: Worker[None] | None = None
        self.sort_column, self.reverse = "id", True
        self.group: str | None = None
        self.progress: str | None = None
        self.sub_title = "Runs"

    def compose(self) -> ComposeResult:
        yield Header()
        yield Input(placeholder="filter: name, algorithm or status  (/ to type, Escape clears)", id="filter")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="detail", markup=False)
        yield Footer()

    def on_mount(self) -> None:
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
        self.post_message(RunsPolled(rows, read_rates(self.ctx.engine, rows)))

    def on_runs_polled(self, message: RunsPolled) -> None:
        self.overviews = {str(o.run.id): o for o in message.rows}
        self.per_step = message.per_step
        names = {o.run.comparison_set_id: o.comparison_set for o in message.rows if o.comparison_set}
        self.progress = set_progress([o.run for o in message.rows], message.per_step, names)  # type: ignore[arg-type]
        self._redraw()

    def _title(self) -> None:
        order = "descending" if self.reverse else "ascending"
        grouped = f" · grouped by {self.group}" if self.group else ""
        going = f" · {self.progress}" if self.progress else ""
        self.sub_title = f"Runs · sorted by {LABELS[self.sort_column]}, {order}{grouped}{going}"

    def _redraw(self) -> None:
        self._title()
        needle = self.query_one("#filter", Input).value
        shown = arrange(
            self.overviews.values(), needle, self.sort_column, self.reverse, self.group, self.per_step
        )
        cells = [
            (
                str(o.run.id),
                run_cells(o, marked=o.run.id in self.marked, per_step=self.per_step.get(o.run.id or 0)),
            )
            for o in shown
        ]
        table = self.query_one("#runs", DataTable)
        width = (table.size.width or self.app.size.width) - 3  # the scrollbar and the sort arrow
        fit = [c for _, c in cells]
        if self.group is not None:  # header rows need room in the name column too
            groups = [group_of(o, self.group) for o in shown]
            fit += [
                {**c, "name": header_label(g, groups.count(g))}
                for (_, c), g in zip(cells, groups, strict=True)
            ]
        columns = fit_columns(fit, width)
        rows = table_rows(cells, columns)
        if self.group is not None:
            rows = with_headers([group_of(o, self.group) for o in shown], rows, columns)
        arrow = " ▼" if self.reverse else " ▲"
        labels = [(c.key, c.label + arrow if c.key == self.sort_column else c.label) for c, _ in columns]
        sync_rows(table, labels, rows)
        self._show_detail()

    def _show_detail(self) -> None:
        """The selected failed run's reason, whole (the table's column is cut or, when narrow, left out)."""
        o = self.selected()
        reason = failure_reason(o.run) if o is not None else None
        detail = self.query_one("#detail", Static)
        detail.update(f"#{o.run.id} failed: {reason}" if o is not None and reason else "")
        detail.display = bool(reason)
        self.query_one("#runs", DataTable).tooltip = reason

    @on(DataTable.RowHighlighted, "#runs")
    def _row_highlighted(self) -> None:
        self._show_detail()

    def on_resize(self) -> None:
        self._redraw()

    # --- filter, sort, group -------------------------------------------------------------------------------

    @on(Input.Changed, "#filter")
    def _filter_changed(self) -> None:
        self._redraw()

    def action_clear_filter(self) -> None:
        self.query_one("#filter", Input).value = ""
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

    def action_reverse_sort(self) -> None:
        self.sort_by(self.sort_column, reverse=not self.reverse)

    def sort_by(self, column: str, *, reverse: bool) -> None:
        self.sort_column, self.reverse = column, reverse
        self._redraw()

    def action_cycle_group(self) -> None:
        self.group = GROUPS[(GROUPS.index(self.group) + 1) % len(GROUPS)]
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
            self.query_one("#runs", DataTable).focus()
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
