"""Huey tasks. They carry run ids only and are wake-up signals: state lives in the studio database.

`run_job(run_id)` tells the workers consuming the queue that a run is claimable. The `wmtp-worker` daemon that
consumes it does not run that id: it claims the next runnable run by priority from the store (which may be that
one, another, or none if a peer was faster) and supervises it in a free slot. A lost message loses nothing,
since daemons also poll the store. Consume this module with `wmtp-worker` (it starts a Huey consumer
in-process); a bare `huey_consumer` would only drop the wake-ups.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from wmtp_studio.settings import Settings
from workers.queue import huey, make_huey

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


TASK_NAME = "workers.tasks.run_job"
run_job = huey.task(name=TASK_NAME)(_wake)


def announce(run_ids: list[int], queue_url: str | None = None) -> None:
    """Enqueue one wake-up per run id (after submit, or after the reaper re-queued runs), on this process's
    queue or on the queue at `queue_url` (a caller holding other settings than the environment's)."""
    task = run_job
    if queue_url is not None and queue_url != Settings.from_env().queue_url:  # the URL `huey` was made from
        task = make_huey(queue_url).task(name=TASK_NAME)(_wake)
    for run_id in run_ids:
        task(run_id)
