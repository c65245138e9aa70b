"""Huey tasks. They carry run ids only and are wake-up signals: state lives in the studio database.

`run_job(run_id)` tells the workers consuming the queue that a run is claimable. The `wmtp-worker` daemon that
consumes it does not run that id: it claims the next runnable run by priority from the store (which may be that
one, another, or none if a peer was faster) and supervises it in a free slot. A lost message loses nothing,
since daemons also poll the store. Submitters enqueue it by name with `wmtp_studio.taskqueue.announce`. Consume
this module with `wmtp-worker` (it starts a Huey consumer in-process); a bare `huey_consumer` would only drop the
wake-ups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from wmtp_studio.taskqueue import TASK_NAME
from wmtp_studio.workers.queue import huey

log = logging.getLogger(__name__)

_wake_hooks: list[Callable[[int], None]] = []


def on_wake(hook: Callable[[int], None]) -> None:
    """Call `hook(run_id)` in this process whenever a `run_job` task is consumed here (the daemon registers)."""
    _wake_hooks.append(hook)


def _wake(run_id: int) -> None:
    """Wake-up signal: run `run_id` (or any better one) is claimable."""
    if not _wake_hooks:
        log.warning("run_job(%s) consumed outside wmtp-worker: nothing claims it here", run_id)
    for hook in _wake_hooks:
        hook(run_id)


run_job = huey.task(name=TASK_NAME)(_wake)
