"""The dashboard: `wmtp-studio` without arguments. Four modes (Runs, Compare, Recipes, Queue; keys 1-4 and the
command palette), a help panel (F1 or ?), `q` to quit from any screen, the embedded worker and the quickstart offer on a first start.

`create_app` is the one way to build it, for the CLI, `wmtp-studio serve` and the tests alike.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from textual import work
from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen

from wmtp_studio import store
from wmtp_studio.errors import StudioError
from wmtp_studio.models import utcnow
from wmtp_studio.settings import Settings
from wmtp_studio.submit import QUICKSTART_ALGORITHMS, QUICKSTART_ALL_ALGORITHMS
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.embedded import EmbeddedWorker, start_if_needed
from wmtp_studio.tui.intents import OpenComparison, OpenRun
from wmtp_studio.tui.modals import ErrorModal
from wmtp_studio.tui.polling import Poll
from wmtp_studio.tui.quickstart_offer import QUICKSTART_QUESTION, QuickstartOffer
from wmtp_studio.tui.screens.queue import QueueScreen
from wmtp_studio.tui.screens.runs import RunsScreen
from wmtp_studio.tui.screenshot import default_filename, screenshot_svg, svg_to_png

if TYPE_CHECKING:
    from wmtp_studio.tui.compare_feed import SetWatcher

MODES = (
    ("runs", "Runs", "Every run, live: open, compare, cancel, retry, reprioritise"),
    ("compare", "Compare", "Curves and pass@k of runs side by side"),
    ("recipes", "Recipes", "Recipes: edit, validate, submit"),
    ("queue", "Queue", "The queue and the workers: pause, reprioritise, cancel, retry"),
)


SCREENS = Binding.Group("Screens", compact=True)


@dataclass
class SetsFinished(Message, bubble=False):
    """The answers of the comparison sets that finished since the last look (a newer look takes them over)."""

    summaries: list[str]

    def can_replace(self, message: Message) -> bool:
        if not isinstance(message, SetsFinished):
            return False
        message.summaries[:0] = self.summaries
        return True


class StudioApp(App[None]):
    TITLE = "WMTP Studio"
    CSS_PATH = "studio.tcss"
    BINDINGS = [
        *(
            Binding(str(i), f"switch_mode('{mode}')", label, group=SCREENS)
            for i, (mode, label, _) in enumerate(MODES, 1)
        ),
        Binding("f1,question_mark", "toggle_help", "Help"),
        Binding("q", "quit", "Quit"),  # on every screen; a focused text field types it instead
    ]

    def __init__(
        self,
        ctx: StudioContext,
        *,
        embedded_worker: bool = True,
        offer_quickstart: bool = True,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        super().__init__()
        self.ctx, self.clock = ctx, clock
        self.want_worker, self.offer_quickstart = embedded_worker, offer_quickstart
        self.embedded: EmbeddedWorker | None = None
        self._worker_lock, self._closing = threading.Lock(), False
        self._sets: SetWatcher | None = None  # made by the first look (imports the statistics)
        self.add_mode("runs", lambda: RunsScreen(ctx, clock=clock))
        self.add_mode("compare", self._compare_screen)
        self.add_mode("recipes", self._recipes_screen)
        self.add_mode("queue", lambda: QueueScreen(ctx, embedded_pid=self.embedded_pid, clock=clock))

    def _compare_screen(self) -> Screen[None]:
        from wmtp_studio.tui.screens.compare import CompareScreen

        return CompareScreen(self.ctx)

    def _recipes_screen(self) -> Screen[None]:
        from wmtp_studio.tui.screens.recipes import RecipesScreen

        return RecipesScreen(self.ctx)

    def embedded_pid(self) -> int | None:
        return None if self.embedded is None else self.embedded.pid

    def on_mount(self) -> None:
        self.switch_mode("runs")
        self.start_up()
        # The first look notes the sets finished already, before anything else can finish. A failed look is
        # not reported here (PollFailed goes unhandled): the screens say that the store is unreachable.
        self.sets_poll = Poll(self, self.ctx.poll_s, self.look_at_sets, group="sets-poll")

    def look_at_sets(self) -> Iterator[SetsFinished]:
        """Announce each comparison set that finishes while the dashboard is open, with its Δ and p."""
        from wmtp_studio.tui.compare_feed import SetWatcher  # cheap: the statistics load once a set finishes

        self._sets = self._sets or SetWatcher(self.ctx.engine)
        if summaries := self._sets.finished():
            yield SetsFinished(summaries)

    def on_sets_finished(self, finished: SetsFinished) -> None:
        for text in finished.summaries:
            self.notify(f"{text}\nCompare (2) shows the table.", timeout=60)

    def on_open_run(self, message: OpenRun) -> None:
        from wmtp_studio.tui.screens.run import RunScreen

        self.push_screen(RunScreen(self.ctx, message.run_id))

    def on_open_comparison(self, message: OpenComparison) -> None:
        from wmtp_studio.tui.screens.compare import CompareScreen

        self.push_screen(CompareScreen(self.ctx, message.run_ids, message.comparison_set_id))

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        for mode, label, help_text in MODES:
            yield SystemCommand(label, help_text, lambda mode=mode: self.switch_mode(mode))
        yield SystemCommand(
            "Quickstart", "Queue the quickstart comparison (1 or 3 seeds)", self.action_offer_quickstart
        )
        yield SystemCommand(
            "Screenshot (PNG)",
            "Save a PNG screenshot of the current screen (needs rsvg-convert)",
            lambda: self.set_timer(0.1, self.deliver_png_screenshot),
        )
        yield from super().get_system_commands(screen)

    def deliver_screenshot(
        self, filename: str | None = None, path: str | None = None, time_format: str | None = None
    ) -> str | None:
        """Screenshots (palette, ctrl+p) go to `<home>/screenshots/` by default: Textual's default folder, the
        user's Downloads, may not exist on a server. In a browser (`serve`) the file is downloaded instead.
        The SVG has each character placed in its cell, so real viewers show it as the terminal did."""
        svg = screenshot_svg(self)
        return self.deliver_text(
            io.StringIO(svg),
            save_directory=path or self._screenshot_folder(),
            save_filename=filename or default_filename(self.title, "svg", time_format),
            open_method="browser",
            mime_type="image/svg+xml",
            name="screenshot",
        )

    def deliver_png_screenshot(self, filename: str | None = None, path: str | None = None) -> None:
        """The screen as PNG (palette: Screenshot (PNG)), rendered by rsvg-convert in a thread; a notification
        says where it went, or why there is none (rsvg-convert missing)."""
        svg = screenshot_svg(self)
        self._save_png(svg, filename or default_filename(self.title, "png"), path)

    @work(thread=True, group="screenshot")
    def _save_png(self, svg: str, filename: str, path: str | None) -> None:
        try:
            png = svg_to_png(svg)
        except StudioError as exc:
            self.call_from_thread(self.notify, str(exc), title="Screenshot", severity="error", timeout=10)
            return
        if self.is_web:
            self.call_from_thread(
                self.deliver_binary,
                io.BytesIO(png),
                save_filename=filename,
                mime_type="image/png",
                name="screenshot",
            )
            return
        # Written here, not with deliver_binary: Textual's local driver opens a file object that is not a
        # typing.BinaryIO (a BytesIO is not) in text mode, and writing the bytes fails.
        target = Path(path or self.ctx.settings.home / "screenshots") / filename
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(png)
        except OSError as exc:
            self.call_from_thread(
                self.notify, f"cannot write {target}: {exc}", title="Screenshot", severity="error", timeout=10
            )
            return
        self.call_from_thread(self.notify, f"Saved screenshot to {target}", title="Screenshot")

    def _screenshot_folder(self) -> Path:
        folder = self.ctx.settings.home / "screenshots"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def action_toggle_help(self) -> None:
        if self.screen.query("HelpPanel"):
            self.action_hide_help_panel()
        else:
            self.action_show_help_panel()

    # --- embedded worker and quickstart --------------------------------------------------------------------

    @work(thread=True, group="startup")
    def start_up(self) -> None:
        """Start the embedded worker if no live worker is registered; offer the quickstart to an empty studio."""
        if self.want_worker:
            with self._worker_lock:
                if not self._closing:
                    self.embedded = start_if_needed(engine=self.ctx.engine, settings=self.ctx.settings)
            if self.embedded is not None:
                note = f"started an embedded worker (pid {self.embedded.pid}, log {self.embedded.log_path})"
                self.call_from_thread(self.notify, note, timeout=6)
        if self.offer_quickstart and not store.list_runs(engine=self.ctx.engine, limit=1):
            self.call_from_thread(self.action_offer_quickstart, QUICKSTART_QUESTION)

    def action_offer_quickstart(self, question: str = "Queue the quickstart comparison?") -> None:
        """Ask how many fine-tuning seeds (fast: 1, thorough: 3); Escape or "Not now" queues nothing."""
        self.push_screen(QuickstartOffer(question), self._quickstart_answer)

    def _quickstart_answer(self, choice: str | None) -> None:
        if choice == "all":
            self.queue_quickstart(1, QUICKSTART_ALL_ALGORITHMS)
        elif choice is not None and choice.isdigit():
            self.queue_quickstart(int(choice))

    @work(thread=True, group="quickstart")
    def queue_quickstart(self, seeds: int = 1, algorithms: tuple[str, ...] = QUICKSTART_ALGORITHMS) -> None:
        from wmtp_studio.submit import submit_quickstart, wake_workers

        try:
            cset, runs = submit_quickstart(
                engine=self.ctx.engine, settings=self.ctx.settings, seeds=seeds, algorithms=algorithms
            )
        except StudioError as exc:
            self.call_from_thread(self.push_screen, ErrorModal(str(exc), title="Quickstart not queued"))
            return
        warning = wake_workers(self.ctx.settings, [r.id or 0 for r in runs])
        self.call_from_thread(
            self.notify, f"queued the quickstart: comparison set {cset.id}, {seeds} seed(s), {len(runs)} runs"
        )
        if warning:
            self.call_from_thread(self.notify, warning, severity="warning", timeout=10)

    async def on_unmount(self) -> None:
        await self._stop_worker()

    async def _stop_worker(self) -> None:
        with self._worker_lock:
            self._closing, worker = True, self.embedded
        if worker is not None:
            await asyncio.to_thread(worker.stop)


def create_app(
    *,
    settings: Settings | None = None,
    embedded_worker: bool = True,
    offer_quickstart: bool = True,
    recipes_dir: Path | None = None,
    poll_s: float = 0.5,
    clock: Callable[[], datetime] = utcnow,
) -> StudioApp:
    """The dashboard on the studio database of `settings` (default: from the environment), upgraded first."""
    settings = settings or Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine=engine)
    if recipes_dir is None and (Path.cwd() / "recipes").is_dir():
        recipes_dir = Path.cwd() / "recipes"
    ctx = StudioContext(engine=engine, settings=settings, recipes_dir=recipes_dir, poll_s=poll_s)
    return StudioApp(ctx, embedded_worker=embedded_worker, offer_quickstart=offer_quickstart, clock=clock)
