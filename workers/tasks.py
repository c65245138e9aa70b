"""Huey tasks. They carry run ids only and are wake-up signals: state lives in the studio database.

`run_job(run_id)` tells the workers consuming the queue that a run is claimable. The `wmtp-worker` daemon that
consumes it does not run that id: it claims the next runnable run by priority from the store (which may be that
one, another, or none if a peer was faster) and supervises it in a free slot. A lost message loses nothing,
since daemons also poll the store. Submitters enqueue it by name with `wmtp_studio.taskqueue.announce`. Consume
this module with `wmtp-worker` (it starts a Huey consumer in-process); a bare `huey_consumer` would only drop the
wake-ups.
"""

from __future__ import annotations

from wmtp_studio.taskqueue import on_wake, run_job
from wmtp_studio.workers.queue import huey

__all__ = ["huey", "on_wake", "run_job_task"]

run_job_task = huey.task()(run_job)  # the same function as the submitters' (taskqueue), so the same task name
