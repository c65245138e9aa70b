"""The Huey instance (DESIGN.md hop 3). Only run ids travel through it; job state lives in the studio database.

`WMTP_QUEUE_URL` picks the backend: `sqlite:///<path>` (default `<home>/queue.db`, `SqliteHuey`) or
`redis://...` (`RedisHuey`). Huey delivers at most once, so a lost message must cost nothing: workers also poll
the store, and a reaper re-queues runs whose lease expired.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from huey import Huey, RedisHuey, SqliteHuey

from wmtp_studio.database import database_error
from wmtp_studio.errors import StudioError
from wmtp_studio.settings import Settings

QUEUE_NAME = "wmtp"


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


huey = make_huey(Settings.from_env().queue_url)
