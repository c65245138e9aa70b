"""How the dashboard reads the store while it is open: one pattern for every screen (and the app's announcements).

1. `Poll(node, interval, read, group=...)` runs `read` now and every `interval` seconds in a Textual thread worker,
   unless the previous read is still running: a slow database delays updates, never piles reads up.
2. `read` (called in that thread, never touching a widget) yields what it found as messages, which the worker
   posts to `node`; the node handles them on the UI thread (`on_<message name>`). No read waits for the UI: no
   `call_from_thread`, no lock. Objects a read keeps between calls (cursors) are read by one thread at a time.
3. Each such message is replaceable (Textual's `Message.can_replace`, as in toolong's messages.py): when the UI
   falls behind, a newer read queued right behind an older one supersedes it, so the screen handles only the
   latest (`can_replace = replaced_by_same_kind`). A read of increments (new metric rows, new log lines) takes over the
   older message's increments in its own `can_replace`, so nothing read is lost.
4. A read that raises posts `PollFailed` instead (once, until a read works again); the node keeps what it shows
   and says why, and the next read tries again. (A Textual worker is a process edge: whatever the store or the
   file system raised is reported there.)

What a screen loads once (a recipe, an evaluation's samples, computed tables) is posted the same way, as a
replaceable message from its worker. One-shot actions (intents, saving, exporting) report their outcome with a
notification or a modal from their worker (`app.call_from_thread`). The poll workers' group names end in `-poll`
(tests wait for every other worker, not for pollers).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from textual.dom import DOMNode
from textual.message import Message
from textual.timer import Timer
from textual.worker import Worker as ThreadWorker
from textual.worker import get_current_worker


def replaced_by_same_kind(self: Message, message: Message) -> bool:
    """`can_replace` of a message that holds a whole snapshot: a newer message of its kind replaces it."""
    return type(message) is type(self)


@dataclass
class PollFailed(Message, bubble=False):
    """A read failed (the first failure since the last read that worked); the next read tries again."""

    error: Exception

    can_replace = replaced_by_same_kind


class Poll:
    """Reads `read`'s messages into `node` now and every `interval` seconds (one read at a time); call it to read
    again at once (after an intent), `stop()` to stop."""

    def __init__(
        self, node: DOMNode, interval: float, read: Callable[[], Iterable[Message]], *, group: str
    ) -> None:
        assert group.endswith("-poll")
        self.node, self.read, self.group = node, read, group
        self._worker: ThreadWorker[None] | None = None
        self._failing = False
        self._timer: Timer = node.set_interval(interval, self)
        self()

    def __call__(self) -> None:
        if self._worker is None or self._worker.is_finished:
            self._worker = self.node.run_worker(
                self._post, group=self.group, thread=True, exit_on_error=False
            )

    def stop(self) -> None:
        self._timer.stop()

    def _post(self) -> None:
        worker = get_current_worker()
        try:
            for message in self.read():
                if worker.is_cancelled:  # the node is gone
                    return
                self.node.post_message(message)
        except Exception as exc:
            if not (worker.is_cancelled or self._failing):
                self.node.post_message(PollFailed(exc))
            self._failing = True
            return
        self._failing = False
