"""One run, live: curves, weight histograms, pass@k, the top-weighted tokens, the log and the frozen recipe.

The store is polled every `ctx.poll_s` with cursors (`MetricFeed`, `TextTail`; tui/polling.py); redraws are
coalesced and only the visible tab is drawn (the others when they are shown).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import ScrollableContainer, VerticalScroll
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import DataTable, Footer, Label, Log, Static, TabbedContent, TabPane

from wmtp_studio import store
from wmtp_studio.models import Evaluation, Run
from wmtp_studio.rundir.results import SampleVerdict
from wmtp_studio.series import RunData
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.modals import ErrorModal
from wmtp_studio.tui.polling import Poll, PollFailed, replaced_by_same_kind
from wmtp_studio.tui.run_feed import RunFeed, RunPolled
from wmtp_studio.tui.widgets.charts import CurvesPanel, RunProgress
from wmtp_studio.tui.widgets.evaluations import EvaluationTable
from wmtp_studio.tui.widgets.recipe import RecipeView
from wmtp_studio.tui.widgets.samples import SamplesView, load_samples
from wmtp_studio.tui.widgets.tokens import TokensPanel
from wmtp_studio.tui.widgets.weights import WeightsPanel, informative_head

TABS_OF = {"points": {"curves", "weights"}, "hist": {"weights"}, "tokens": {"tokens"}}
"""Which tabs draw what changed."""


@dataclass
class SamplesLoaded(Message, bubble=False):
    """The highlighted evaluation's samples (a newer choice replaces it)."""

    caption: str
    samples: list[SampleVerdict]

    can_replace = replaced_by_same_kind


class RunScreen(Screen[None]):
    """`RunScreen(ctx, run_id)`: everything about one run, refreshed while it trains."""

    DEFAULT_CSS = """
    RunScreen #run-header { height: auto; max-height: 3; padding: 0 1; }
    RunScreen RunProgress { padding: 0 1; }
    RunScreen TabbedContent { height: 1fr; }
    RunScreen TabPane { padding: 0; }
    RunScreen #no-evaluations { padding: 1; color: $text-muted; }
    RunScreen #log-caption { padding: 0 1; color: $text-muted; }
    RunScreen #recipe-scroll { height: 1fr; }
    """
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("left_square_bracket", "head(-1)", "Prev head"),
        Binding("right_square_bracket", "head(1)", "Next head"),
        Binding("pagedown", "scroll_tab(1)", "Scroll"),
        Binding("pageup", "scroll_tab(-1)", "Scroll up", show=False),
        *(
            Binding(str(i), f"tab('{tab}')", tab.capitalize(), show=False)
            for i, tab in enumerate(("curves", "weights", "evaluations", "tokens", "log", "recipe"), 1)
        ),
    ]
    min_redraw_s = 0.25
    """Coalescing: at most one chart redraw per this many seconds."""

    def __init__(self, ctx: StudioContext, run_id: int) -> None:
        super().__init__()
        self.ctx, self.run_id = ctx, run_id
        self.feed = RunFeed(engine=ctx.engine, run_id=run_id)
        self.data = RunData()
        self.run: Run | None = None
        self.head = 0
        self.head_chosen = False
        """Whether the user picked a head with [ or ]; until then the Weights and Tokens tabs show the first head
        whose weights vary (`informative_head`)."""
        self.stale: set[str] = {"curves", "weights", "tokens"}
        """Tabs whose data changed since they were last drawn."""
        self._last_draw = 0.0
        self._draw_timer: Timer | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"run {self.run_id}: loading...", id="run-header", markup=False)
        yield RunProgress()
        with TabbedContent(initial="curves"):
            with TabPane("Curves", id="curves"):
                yield CurvesPanel()
            with TabPane("Weights", id="weights"):
                yield WeightsPanel()
            with TabPane("Evaluations", id="evaluations"):
                yield Label("no evaluations yet", id="no-evaluations")
                yield EvaluationTable(id="evaluation-table")
                yield SamplesView(id="samples")
            with TabPane("Tokens", id="tokens"):
                yield TokensPanel()
            with TabPane("Log", id="log"):
                yield Label("", id="log-caption", markup=False)
                yield Log(max_lines=5000, id="log-view")
            with TabPane("Recipe", id="recipe"), VerticalScroll(id="recipe-scroll"):
                yield RecipeView(id="recipe-view")
        yield Footer()

    def on_mount(self) -> None:
        self.poll = Poll(self, self.ctx.poll_s, self.read, group="run-poll")

    # --- reading (in the poll's thread worker) -----------------------------------------------------------------

    def read(self) -> Iterator[RunPolled]:
        """What is new; a long run's first read comes in pages, one message each."""
        yield from self.feed.read(first=self.run is None)

    def on_poll_failed(self, failed: PollFailed) -> None:
        if self.run is None:  # nothing to show: say why, stop polling and go back once the modal is closed
            self.poll.stop()
            modal = ErrorModal(str(failed.error), title=f"Cannot show run {self.run_id}")
            self.app.push_screen(modal, callback=lambda _: self.action_back())
        else:  # keep what is shown; the next polls try again (one warning until one works)
            self.notify(f"could not refresh run {self.run_id}: {failed.error}", severity="warning")

    # --- applying (UI thread) -------------------------------------------------------------------------------

    def on_run_polled(self, snap: RunPolled) -> None:
        first = self.run is None
        self.run = snap.run
        for batch in snap.batches:
            for what in self.data.apply(batch):
                self.stale |= TABS_OF.get(what, set())
        self._show_header(snap.run)
        self.query_one("#no-evaluations").display = not snap.evaluations
        self.query_one(EvaluationTable).show(snap.evaluations)
        self.evaluations = {str(e.id): e for e in snap.evaluations}
        self._show_log(snap)
        if first:
            self.query_one(RecipeView).show(snap.run, snap.comparison_set)
        self._schedule_draw()

    def _show_header(self, run: Run) -> None:
        worker = f" on {run.lease_owner}" if run.lease_owner and run.status == "running" else ""
        header = Text(
            f"#{run.id} {run.name}  {run.algorithm}  seed {run.seed}  {run.status}{worker}"
            f"  step {run.last_step}/{run.total_steps}",
            style="bold",
        )
        if run.status == "failed":
            exit_code = f"exit code {run.exit_code}" if run.exit_code is not None else "no reason recorded"
            header.append(f"\nfailed: {store.failure_reason(run) or exit_code}", style="bold red")
        self.query_one("#run-header", Static).update(header)
        loss = self.data.series.get("train/loss")
        last = loss.last() if loss else None
        label = f"loss {last[1]:.4f}" if last else ""
        self.query_one(RunProgress).show(run.last_step, run.total_steps, loss, label)

    def _show_log(self, snap: RunPolled) -> None:
        log, path = self.query_one(Log), Path(snap.run.run_dir) / "train.log"
        caption = str(path)
        if not snap.log_found and snap.run.error_tail:  # the log is on another host: show what was stored
            caption = f"{path} is not on this host; its last lines when the run ended:"
            if not log.line_count:
                log.write_lines(snap.run.error_tail.splitlines())
        elif not snap.log_found:
            caption = f"no log at {path} (yet, or it is on another host)"
        self.query_one("#log-caption", Label).update(caption)
        if snap.log_reset:
            log.clear()
        if snap.log_lines:
            log.write_lines(snap.log_lines)

    # --- drawing --------------------------------------------------------------------------------------------

    def _schedule_draw(self) -> None:
        wait = self._last_draw + self.min_redraw_s - time.monotonic()
        if wait <= 0:
            self._draw()
        elif self._draw_timer is None:
            self._draw_timer = self.set_timer(wait, self._draw)

    def _draw(self) -> None:
        self._draw_timer = None
        self._last_draw = time.monotonic()
        if not self.head_chosen and (head := informative_head(self.data)) != self.head:
            self.head = head
            self.stale |= {"weights", "tokens"}
        tab = self.query_one(TabbedContent).active
        if tab not in self.stale:
            return
        self.stale.discard(tab)
        if tab == "curves":
            self.query_one(CurvesPanel).draw(self.data.series)
        elif tab == "weights":
            self.query_one(WeightsPanel).draw(self.data, self.head)
        elif tab == "tokens":
            self.query_one(TokensPanel).draw(self.data.tokens, self.head)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._draw()

    # --- the Evaluations tab: the highlighted evaluation's samples and why each failed ---------------------------

    evaluations: dict[str, Evaluation] = {}

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        evaluation = self.evaluations.get(str(event.row_key.value))
        if isinstance(event.data_table, EvaluationTable) and evaluation is not None and self.run is not None:
            self._load_samples(evaluation, Path(self.run.run_dir))

    @work(thread=True, group="samples", exclusive=True, exit_on_error=False)
    def _load_samples(self, evaluation: Evaluation, run_dir: Path) -> None:
        self.post_message(SamplesLoaded(*load_samples(evaluation, run_dir)))

    def on_samples_loaded(self, loaded: SamplesLoaded) -> None:
        self.query_one(SamplesView).show(loaded.caption, loaded.samples)

    # --- actions --------------------------------------------------------------------------------------------

    def action_head(self, delta: int) -> None:
        """Show the previous/next head's histograms and token weights."""
        weights = (self.data.tokens.payload.get("data", {}).get("weights", [])) if self.data.tokens else []
        n = max(self.data.hists.n_heads, len(weights), len(self.data.series.heads()), 1)
        self.head, self.head_chosen = (self.head + delta) % n, True
        self.stale |= {"weights", "tokens"}
        self._draw()

    def action_scroll_tab(self, pages: int) -> None:
        """Page the shown tab down/up: the Weights tab's critic charts and the Recipe tab's end are below 40 rows."""
        pane = self.query_one(TabbedContent).active_pane
        scroller = next(iter(pane.query(ScrollableContainer)), None) if pane is not None else None
        if scroller is not None:
            (scroller.scroll_page_down if pages > 0 else scroller.scroll_page_up)()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()
