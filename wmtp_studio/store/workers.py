"""`wmtp-worker` daemons: their registration, heartbeats, and the housekeeping that forgets dead ones."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from wmtp_studio.database import read_session as _read
from wmtp_studio.database import write_session as _write
from wmtp_studio.models import Worker, utcnow

WORKER_DEAD_AFTER_S = 30.0
"""A worker silent this long is dead: daemons heartbeat at least every 5 s, so this is six missed beats."""
WORKER_FORGET_AFTER_S = 3600.0
"""The reaper deletes the rows of workers silent this long (kept until then to show which host died)."""


def register_worker(
    *, engine: Engine, worker_id: str, host: str, pid: int, slots: list[str], version: str
) -> Worker:
    """Insert or refresh a worker row (a restarted daemon with the same id takes its row over)."""
    now = utcnow()
    with _write(engine) as s:
        row = s.get(Worker, worker_id) or Worker(id=worker_id, host=host, pid=pid)
        row.host, row.pid, row.slots, row.version = host, pid, slots, version
        row.started_at, row.heartbeat_at, row.current_run_ids = now, now, []
        s.add(row)
        return row


def heartbeat(
    *,
    engine: Engine,
    worker_id: str,
    current_run_ids: list[int],
    gpu_stats: list[dict[str, Any]] | None = None,
) -> bool:
    """Mark the worker alive now with the runs it holds (and its GPUs' memory and utilisation, when it can read
    them); False if it is not registered."""
    values: dict[str, Any] = {"heartbeat_at": utcnow(), "current_run_ids": current_run_ids}
    if gpu_stats is not None:
        values["gpu_stats"] = gpu_stats
    with _write(engine) as s:
        result = s.exec(sa.update(Worker).where(col(Worker.id) == worker_id).values(**values))
        return bool(result.rowcount == 1)


def list_workers(*, engine: Engine, alive_within_s: float | None = None) -> list[Worker]:
    """Registered workers; with `alive_within_s`, only those that heartbeated that recently."""
    query = select(Worker).order_by(col(Worker.id))
    if alive_within_s is not None:
        query = query.where(Worker.heartbeat_at >= utcnow() - timedelta(seconds=alive_within_s))
    with _read(engine) as s:
        return list(s.exec(query))


def unregister_worker(*, engine: Engine, worker_id: str) -> None:
    with _write(engine) as s:
        s.exec(sa.delete(Worker).where(col(Worker.id) == worker_id))


def worker_alive(*, worker: Worker, now: datetime | None = None) -> bool:
    """Whether the worker heartbeated within `WORKER_DEAD_AFTER_S`."""
    return (now or utcnow()) - worker.heartbeat_at < timedelta(seconds=WORKER_DEAD_AFTER_S)


def forget_dead_workers(
    *, engine: Engine, silent_for_s: float = WORKER_FORGET_AFTER_S, now: datetime | None = None
) -> list[str]:
    """Delete the rows of workers that have not heartbeated for `silent_for_s`; returns their ids. Their runs are
    not touched here: the lease reaper re-queues those."""
    cutoff = (now or utcnow()) - timedelta(seconds=silent_for_s)
    with _write(engine) as s:
        ids = list(s.exec(select(Worker.id).where(Worker.heartbeat_at < cutoff)))
        if ids:
            s.exec(sa.delete(Worker).where(col(Worker.id).in_(ids)))
        return ids
