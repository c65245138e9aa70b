"""The Huey queue (DESIGN.md hop 3) as the library sees it: where it lives and the one message it carries.

Only run ids travel through it; job state lives in the studio database. `WMTP_QUEUE_URL` picks the backend:
`sqlite:///<path>` (default `<home>/queue.db`, `SqliteHuey`) or `redis://...` (`RedisHuey`). Huey delivers at
most once, so a lost message must cost nothing: workers also poll the store, and a reaper re-queues runs whose
lease expired. The message is `run_job(run_id)`, defined here: the submitters (CLI, dashboard) enqueue it and
the `wmtp-worker` daemon registers this same function on its consumer (`wmtp_studio.workers.tasks`) with a hook
of its own (`on_wake`). Huey finds a task by its function's module and name, so one function on both sides is
what makes a wake-up sent here the task a worker runs, and the library never imports the workers.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

from huey import Huey, RedisHuey, SqliteHuey
from huey.api import TaskWrapper

from wmtp_studio.database import database_error
from wmtp_studio.errors import StudioError
from wmtp_studio.settings import Settings

QUEUE_NAME = "wmtp"
log = logging.getLogger(__name__)
_wake_hooks: list[Callable[[int], None]] = []


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


def on_wake(hook: Callable[[int], None]) -> None:
    """Call `hook(run_id)` in this process whenever a `run_job` task is consumed here (the daemon registers)."""
    _wake_hooks.append(hook)


def run_job(run_id: int) -> None:
    """The wake-up task: run `run_id` (or any better one) is claimable. Consumed by `wmtp-worker`, which claims the
    next runnable run by priority from the store."""
    if not _wake_hooks:
        log.warning("run_job(%s) consumed outside wmtp-worker: nothing claims it here", run_id)
    for hook in _wake_hooks:
        hook(run_id)


@functools.cache
def _wake_task(url: str) -> TaskWrapper:
    return make_huey(url).task()(run_job)


def announce(run_ids: Sequence[int], queue_url: str | None = None) -> None:
    """Enqueue one wake-up per run id (after submit, or after the reaper re-queued runs) on the queue at
    `queue_url` (default: the environment's, `Settings.from_env().queue_url`)."""
    task = _wake_task(queue_url if queue_url is not None else Settings.from_env().queue_url)
    for run_id in run_ids:
        task(run_id)
