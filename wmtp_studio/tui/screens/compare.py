"""Compare runs: overlaid curves, pass@k side by side with paired tests against a baseline, the config diff,
and exports. Open it with picked runs or a comparison set; opened with neither (the Compare mode) it shows the
latest comparison set, the latest finished one if any, and its answer (Δ and p against ntp) above the tabs.
`p` picks runs from the screen itself."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Select, Static, TabbedContent, TabPane
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from wmtp_studio import store
from wmtp_studio.compare.export import ExportFormat, Series, Table
from wmtp_studio.compare.tables import compare_tables
from wmtp_studio.models import Evaluation, Run
from wmtp_studio.series import SeriesStore
from wmtp_studio.tui.compare_curves import COMBINED, HEAD0_CE, draw_curves, metric_names, shared_metrics
from wmtp_studio.tui.compare_export import EXPORTS, export_target, write_export_file
from wmtp_studio.tui.compare_feed import CompareFeed, chart_series, set_summary, set_title
from wmtp_studio.tui.compare_messages import ComparePolled, RunsToPick, TablesComputed
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.modals import ErrorModal
from wmtp_studio.tui.pickers import ChoiceModal, PickRunsModal
from wmtp_studio.tui.polling import Poll, PollFailed
from wmtp_studio.tui.tablesync import fill


class CompareScreen(Screen[None]):
    DEFAULT_CSS = """
    CompareScreen #compare-title { height: 1; padding: 0 1; background: $boost; text-style: bold; }
    CompareScreen #summary { height: auto; max-height: 6; padding: 0 1; background: $boost; }
    CompareScreen #summary.-empty { display: none; }
    CompareScreen TabbedContent, CompareScreen ContentSwitcher, CompareScreen TabPane { height: 1fr; }
    CompareScreen TabPane { padding: 0; }
    CompareScreen Select { width: 60; max-width: 100%; }
    CompareScreen #results-note { height: auto; padding: 0 1; color: $text-muted; }
    CompareScreen DataTable { height: 1fr; }
    """
    BINDINGS = [
        Binding("m", "metric", "Metric"),
        Binding("b", "baseline", "Baseline"),
        Binding("d", "show_tab('config', '#config-table')", "Config diff"),
        Binding("e", "export", "Export"),
        Binding("p", "pick", "Pick runs"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(
        self, ctx: StudioContext, run_ids: list[int] | None = None, comparison_set_id: int | None = None
    ) -> None:
        super().__init__()
        self.ctx, self.run_ids, self.set_id = ctx, list(run_ids or []), comparison_set_id
        self.runs: list[Run] = []
        self.series: dict[int, SeriesStore] = {}
        self.evaluations: dict[int, list[Evaluation]] = {}
        self.table = Table((), ())
        self.baseline: int | None = None
        self._metric_options: list[str] = []
        self._feed = CompareFeed(
            engine=ctx.engine,
            comparison_set_id=self.set_id,
            run_ids=self.run_ids,
            follow_latest=not self.run_ids and self.set_id is None,
        )
        self.set_name = ""
        self.drawn: list[tuple[str, str, tuple[int, int, int], str]] = []
        """What the chart shows: (run, metric, colour, marker) per drawn series."""
        self._evaluation_ids: set[int | None] = set()
        self._fresh = True  # the next snapshot redraws everything (first one, or other runs picked)
        self._statuses: list[str] = []

    def compose(self) -> ComposeResult:
        yield Static("Compare", id="compare-title")
        yield Static("", id="summary", markup=False, classes="-empty")
        with TabbedContent(initial="curves"):
            with TabPane("Curves", id="curves"):
                yield Select[str]([], prompt="metric", id="metric", compact=True, type_to_search=False)
                yield PlotextPlot(id="chart")
            with TabPane("Results", id="results"):
                yield Select[int]([], prompt="baseline", id="baseline", compact=True, type_to_search=False)
                yield DataTable(id="results-table", zebra_stripes=True)
                yield Static("", id="results-note", markup=False)
            with TabPane("Config diff", id="config"):
                yield DataTable(id="config-table", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        self._update_title()
        self.poll = Poll(self, self.ctx.poll_s, self.read, group="compare-poll")

    # --- reading the store (in the poll's thread worker) -------------------------------------------------------

    def read(self) -> Iterator[ComparePolled]:
        feed = self._feed
        yield ComparePolled(feed, feed.read())

    def on_poll_failed(self, failed: PollFailed) -> None:
        self.notify(f"cannot read the store: {failed.error}", severity="error")

    def on_compare_polled(self, polled: ComparePolled) -> None:
        snap = polled.read
        if polled.feed is not self._feed:
            return  # read before other runs were picked
        if snap.set_id != self.set_id or snap.set_name != self.set_name:  # the latest set is another one now
            self.set_id, self.set_name, self.baseline, self._fresh = snap.set_id, snap.set_name, None, True
            self.series = {}
            self.query_one("#summary", Static).update("")  # the other set's, until its own is computed
        runs_changed = self._fresh or [r.id for r in snap.runs] != [r.id for r in self.runs]
        self._fresh = False
        evals_changed = snap.evaluation_ids() != self._evaluation_ids
        self.runs, self.evaluations, self._evaluation_ids = snap.runs, snap.evaluations, snap.evaluation_ids()
        points_changed = snap.add_points(self.series)
        if runs_changed:
            self._update_title()
        if runs_changed or points_changed:
            self._update_metrics()
            self.draw_chart()
        if runs_changed or evals_changed:
            self.compute_tables(self.runs, self.evaluations, self.baseline)
        elif self.set_id is not None and [r.status for r in snap.runs] != self._statuses:
            self.compute_tables(
                self.runs, self.evaluations, self.baseline
            )  # the summary counts finished runs
        self._statuses = [r.status for r in snap.runs]

    def _update_title(self) -> None:
        what = "picked runs" if self.set_id is None else set_title(self.set_id, self.set_name)
        names = ", ".join(f"#{r.id}" for r in self.runs) or "none: press p to pick runs"
        self.query_one("#compare-title", Static).update(f"Compare {what}: {names}")

    # --- curves ------------------------------------------------------------------------------------------------

    def _update_metrics(self) -> None:
        select, shared = self.query_one("#metric", Select), shared_metrics(self.runs, self.series)
        if [*COMBINED, *shared] != self._metric_options:
            self._metric_options, current = [*COMBINED, *shared], select.value
            select.set_options([*((label, v) for v, label in COMBINED.items()), *((n, n) for n in shared)])
            select.value = current if current in self._metric_options else HEAD0_CE

    def _metric_names(self) -> list[str]:
        return metric_names(self.query_one("#metric", Select).value)

    def draw_chart(self) -> None:
        chart, value = self.query_one("#chart", PlotextPlot), self.query_one("#metric", Select).value
        self.drawn = draw_curves(chart.plt, max(chart.size.width, 40), self.runs, self.series, value)
        chart.refresh()

    def on_resize(self) -> None:
        self.draw_chart()  # downsampled to the chart's width

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "metric":
            self.draw_chart()
        elif event.select.id == "baseline" and isinstance(event.value, int) and event.value != self.baseline:
            self.baseline = event.value
            self.compute_tables(self.runs, self.evaluations, self.baseline)

    # --- results and config diff -------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="compare-tables")
    def compute_tables(
        self, runs: list[Run], evaluations: dict[int, list[Evaluation]], baseline: int | None
    ) -> None:
        set_id, name = self.set_id, self.set_name
        tables = compare_tables(runs, evaluations, baseline, is_set=set_id is not None)
        summary = "" if set_id is None else set_summary(set_id, name, runs, tables)
        if not get_current_worker().is_cancelled:  # a newer computation (other baseline, new results) won
            self.post_message(TablesComputed(tables, summary))

    def on_tables_computed(self, computed: TablesComputed) -> None:
        tables, summary = computed.tables, computed.summary
        panel = self.query_one("#summary", Static)
        panel.update(summary)
        panel.set_class(not summary, "-empty")
        self.table, self.baseline = tables.results, tables.baseline
        select = self.query_one("#baseline", Select)
        select.set_options((label, i) for i, label in enumerate(tables.labels))
        if tables.labels:
            select.value = tables.baseline
        fill(self.query_one("#results-table", DataTable), tables.results)
        fill(self.query_one("#config-table", DataTable), tables.config)
        self.query_one("#results-note", Static).update(tables.results.note or "No evaluations yet.")

    # --- actions -----------------------------------------------------------------------------------------------

    def action_show_tab(self, tab: str, widget: str) -> None:
        """Show a tab and focus a widget in it (focus left on a hidden widget would switch the tab back)."""
        self.query_one(TabbedContent).active = tab
        self.query_one(widget).focus()

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:  # opened from another screen (not as the Compare mode itself)
            self.app.pop_screen()

    def action_metric(self) -> None:
        self.action_show_tab("curves", "#metric")

    def action_baseline(self) -> None:
        self.action_show_tab("results", "#baseline")

    def action_export(self) -> None:
        self.app.push_screen(ChoiceModal("Export", EXPORTS), self._export)

    def _export(self, fmt: str | None) -> None:
        """Collect what to export here on the UI thread; the worker only renders and writes it."""
        chosen = next((f for f, _ in EXPORTS if f == fmt), None)
        if chosen is None:
            return
        names = self._metric_names()
        series = chart_series(self.runs, self.series, names)
        path = export_target(self.ctx.settings.home, self.set_id, self.run_ids, chosen, datetime.now())
        self.write_export(chosen, path, self.table, series, " + ".join(names))

    @work(thread=True, group="compare-export")
    def write_export(
        self, fmt: ExportFormat, path: Path, table: Table, series: list[Series], title: str
    ) -> None:
        try:
            write_export_file(fmt, path, table, series, title)
        except OSError as exc:
            self.app.call_from_thread(self.app.push_screen, ErrorModal(f"cannot write {path}: {exc}"))
            return
        self.app.call_from_thread(self.notify, f"exported {path}", title="Export")

    @work(thread=True, group="compare-pick")
    def action_pick(self) -> None:
        self.post_message(RunsToPick(store.list_runs(engine=self.ctx.engine, limit=500)))

    def on_runs_to_pick(self, listed: RunsToPick) -> None:
        self.app.push_screen(PickRunsModal(listed.runs, [r.id or 0 for r in self.runs]), self._picked)

    def _picked(self, run_ids: list[int] | None) -> None:
        if run_ids is None:
            return
        self.run_ids, self.set_id, self.set_name, self.baseline = run_ids, None, "", None
        self._feed = CompareFeed(engine=self.ctx.engine, comparison_set_id=None, run_ids=run_ids)
        self.series, self.runs, self.evaluations, self._evaluation_ids = {}, [], {}, set()
        self._fresh = True
        self.poll()
