"""What the run screen reads from the store on each poll (tui/polling.py): the run, its comparison set (with the
first read), its new rows of the charted metrics, its evaluations and the new lines of its log, posted as
`RunPolled`. Called from one thread worker at a time."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine
from textual.message import Message

from wmtp_studio import store
from wmtp_studio.errors import StudioError
from wmtp_studio.models import ComparisonSet, Evaluation, Run
from wmtp_studio.series import FeedBatch, MetricFeed, TextTail

CHARTED = re.compile(
    r"train/(loss|lr|grad_norm|value_loss|head\d+/(ce|w_entropy|w_std|selected_fraction|score_mu|score_sigma)"
    r"|grpo/(reward_mean|reward_std|zero_var_fraction))|val/.+|stage1/.+"
)
"""The metrics the panels draw; the others are not kept in memory."""


@dataclass
class RunPolled(Message, bubble=False):
    """What one read found: the run and its evaluations, and the increments since the read before: new metric rows
    and log lines."""

    run: Run
    batches: list[FeedBatch]
    evaluations: list[Evaluation]
    log_reset: bool
    """The log file was replaced: clear what is shown before adding `log_lines`."""
    log_lines: list[str]
    log_found: bool
    comparison_set: ComparisonSet | None
    """Read once, with the run's first read."""

    def can_replace(self, message: Message) -> bool:
        """A newer read (`message`) replaces this one and takes over its increments, in order."""
        if not isinstance(message, RunPolled):
            return False
        message.batches[:0] = self.batches
        if not message.log_reset:  # after a reset, the lines read before it are gone
            message.log_reset, message.log_lines[:0] = self.log_reset, self.log_lines
        message.comparison_set = message.comparison_set or self.comparison_set
        return True


class RunFeed:
    """One run's cursors: its charted metric rows (`MetricFeed`) and its log (`TextTail`, opened by the first
    read, which finds where the run's directory is)."""

    def __init__(self, *, engine: Engine, run_id: int) -> None:
        self.engine, self.run_id = engine, run_id
        self.metrics = MetricFeed(
            engine=engine, run_id=run_id, keep=lambda n: CHARTED.fullmatch(n) is not None
        )
        self._log_tail: TextTail | None = None

    def read(self, *, first: bool) -> Iterator[RunPolled]:
        """What is new; a long run's first read comes in pages, one message each. `first`: nothing is shown yet,
        so the run's comparison set is read too."""
        run = store.get_run(engine=self.engine, run_id=self.run_id)
        if run is None:
            raise StudioError(f"no run with id {self.run_id}")
        cset = None
        if first and run.comparison_set_id is not None:
            cset = store.get_comparison_set(engine=self.engine, comparison_set_id=run.comparison_set_id)
        if self._log_tail is None:
            self._log_tail = TextTail(Path(run.run_dir) / "train.log")
        more = True
        while more:
            batch = self.metrics.fetch()
            more = batch.more
            evaluations = store.list_evaluations(engine=self.engine, run_id=self.run_id)
            reset, lines = self._log_tail.read()
            yield RunPolled(run, [batch], evaluations, reset, lines, self._log_tail.found, cset)
