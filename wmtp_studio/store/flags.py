"""Studio-wide flags stored in the database (`StudioFlag`), e.g. `queue_paused`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.engine import Engine

from wmtp_studio.database import read_session as _read
from wmtp_studio.database import write_session as _write
from wmtp_studio.models import StudioFlag, utcnow


def set_flag(*, engine: Engine, name: str, value: Any) -> None:
    """Set a studio-wide flag (JSON value), e.g. `queue_paused`."""
    with _write(engine) as s:
        row = s.get(StudioFlag, name) or StudioFlag(name=name)
        row.value, row.updated_at = value, utcnow()
        s.add(row)


def get_flag(*, engine: Engine, name: str, default: Any = None) -> Any:
    with _read(engine) as s:
        row = s.get(StudioFlag, name)
        return default if row is None else row.value


def queue_paused(*, engine: Engine) -> bool:
    """True while the queue is paused: workers finish what they run but claim nothing new."""
    return bool(get_flag(engine=engine, name="queue_paused", default=False))
