"""What the compare screen's thread workers post to it (tui/polling.py): each read of its feed, the computed
tables with the set's answer, and the stored runs to pick from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from textual.message import Message

from wmtp_studio.models import Run
from wmtp_studio.tui.compare_feed import CompareFeed, CompareRead
from wmtp_studio.tui.polling import replaced_by_same_kind

if TYPE_CHECKING:
    from wmtp_studio.compare.tables import CompareTables


@dataclass
class ComparePolled(Message, bubble=False):
    """One read of `feed`: its runs and evaluations, and their new metric rows since the read before."""

    feed: CompareFeed
    read: CompareRead

    def can_replace(self, message: Message) -> bool:
        """A newer read (`message`) replaces this one and takes over its new rows, in order; unless it reads
        other runs (other runs picked, or the latest set is another one): then these rows are of no use."""
        if not isinstance(message, ComparePolled):
            return False
        older, newer = self.read, message.read
        if message.feed is self.feed and newer.set_id == older.set_id:
            for rid, batches in older.batches.items():
                newer.batches[rid] = [*batches, *newer.batches.get(rid, [])]
        return True


@dataclass
class TablesComputed(Message, bubble=False):
    """The results and config tables, and the set's answer (a newer computation replaces them)."""

    tables: CompareTables
    summary: str

    can_replace = replaced_by_same_kind


@dataclass
class RunsToPick(Message, bubble=False):
    """The stored runs, newest first, to pick from (`p`)."""

    runs: list[Run]

    can_replace = replaced_by_same_kind
