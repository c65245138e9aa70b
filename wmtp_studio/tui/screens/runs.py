"""The runs screen: every run, live, with filter, sort and grouping; opens runs and comparisons.

The store is read every `ctx.poll_s` (`runs_overview`: one query; tui/polling.py); only cells that changed are
written to the table, and the rows are rebuilt only when their order changes. Intents: tui/intents.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Static

from wmtp_studio import store
from wmtp_studio.models import Run, utcnow
from wmtp_studio.store import RunOverview
from wmtp_studio.tui import intents
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.intents import CANCEL_RETRY_KEYS, PRIORITY_KEYS, OpenComparison, OpenRun
from wmtp_studio.tui.polling import Poll, PollFailed, replaced_by_same_kind
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


@dataclass
class RunsPolled(Message, bubble=False):
    """Fresh rows from the store (a whole snapshot: a newer one replaces it)."""

    rows: list[RunOverview]
    per_step: dict[int, float]
    """Recent wall seconds per step of the running runs that report their timing."""

    can_replace = replaced_by_same_kind


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
        *CANCEL_RETRY_KEYS,
        *PRIORITY_KEYS,
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
        self.poll = Poll(self, self.ctx.poll_s, self.read_runs, group="runs-poll")

    # --- reading and showing -------------------------------------------------------------------------------

    def read_runs(self) -> Iterator[RunsPolled]:
        rows = store.runs_overview(engine=self.ctx.engine, limit=self.limit)
        yield RunsPolled(rows, read_rates(self.ctx.engine, rows))

    def on_poll_failed(self, failed: PollFailed) -> None:
        self.notify(f"cannot read the store: {failed.error}", severity="error")

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

    def selected_run(self) -> Run | None:
        o = self.selected()
        return None if o is None else o.run

    @on(DataTable.RowSelected, "#runs")
    def _row_clicked(self) -> None:
        self.action_open_run()

    def action_open_run(self) -> None:
        if self.focused is self.query_one("#filter", Input):
            self.query_one("#runs", DataTable).focus()
            return
        o = self.selected()
        if o is not None and o.run.id is not None:
            self.post_message(OpenRun(o.run.id))

    def action_mark(self) -> None:
        o = self.selected()
        if o is not None and o.run.id is not None:
            self.marked ^= {o.run.id}
            self._redraw()

    def action_compare(self) -> None:
        o = self.selected()
        if self.marked:
            self.post_message(OpenComparison(run_ids=sorted(self.marked)))
        elif o is not None and o.run.comparison_set_id is not None:
            self.post_message(OpenComparison(comparison_set_id=o.run.comparison_set_id))
        else:
            self.notify("mark runs with space, or select a run of a comparison set", severity="warning")

    def action_cancel_run(self) -> None:
        intents.cancel_run(self, self.ctx.engine, self.selected_run(), then=self.poll)

    def action_retry_run(self) -> None:
        intents.retry_run(self, self.ctx.engine, self.selected_run(), then=self.poll)

    def action_priority(self, delta: int) -> None:
        intents.priority(self, self.ctx.engine, self.selected_run(), delta, then=self.poll)
        self._redraw()  # the new priority, at once
