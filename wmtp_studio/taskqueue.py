"""The Huey queue (DESIGN.md hop 3) as the library sees it: where it lives and the one message it carries.

Only run ids travel through it; job state lives in the studio database. `WMTP_QUEUE_URL` picks the backend:
`sqlite:///<path>` (default `<home>/queue.db`, `SqliteHuey`) or `redis://...` (`RedisHuey`). Huey delivers at
most once, so a lost message must cost nothing: workers also poll the store, and a reaper re-queues runs whose
lease expired. The submitters (CLI, dashboard) only enqueue; the consumer that runs `TASK_NAME` is the
`wmtp-worker` daemon (`wmtp_studio.workers.tasks` registers it under the same name), so the library never
imports the workers.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import TaskWrapper

from wmtp_studio.database import database_error
from wmtp_studio.errors import StudioError
from wmtp_studio.settings import Settings

QUEUE_NAME = "wmtp"
TASK_NAME = "workers.tasks.run_job"
"""The wake-up task's name on the queue (kept from when the workers were a top-level package, so that daemons
and submitters of either version understand each other)."""


def make_huey(url: str) -> Huey:
    """A Huey for `url`; results are not stored (tasks only wake workers up)."""
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///")).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return SqliteHuey(QUEUE_NAME, filename=str(path), results=False)
        except (OSError, sqlite3.Error) as exc:  # a read-only or full disk: say which file and why
            raise database_error(url, exc, what="task queue") from None
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisHuey(QUEUE_NAME, url=url, results=False)
    raise StudioError(f"WMTP_QUEUE_URL must be sqlite:///<path> or redis://..., not {url!r}")


def _run_job(run_id: int) -> None:
    """Never runs here: enqueuing needs only the task's name and arguments; the daemon's consumer runs its own
    function registered under `TASK_NAME`."""
    raise StudioError(f"run_job({run_id}) is consumed by wmtp-worker only")


@functools.cache
def _wake_task(url: str) -> TaskWrapper:
    return make_huey(url).task(name=TASK_NAME)(_run_job)


def announce(run_ids: Sequence[int], queue_url: str | None = None) -> None:
    """Enqueue one wake-up per run id (after submit, or after the reaper re-queued runs) on the queue at
    `queue_url` (default: the environment's, `Settings.from_env().queue_url`)."""
    task = _wake_task(queue_url if queue_url is not None else Settings.from_env().queue_url)
    for run_id in run_ids:
        task(run_id)
