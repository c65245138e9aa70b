"""Runs: reading them, the user's intents (cancel, priority, retry), and the dependency chain that promotes
waiting runs. Creating runs is submission.py's; claims and leases are leases.py's."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from wmtp_studio.database import read_session as _read
from wmtp_studio.database import write_session as _write
from wmtp_studio.errors import StudioError
from wmtp_studio.models import FINISHED_STATUSES, Run, utcnow


def require_run(s: Session, run_id: int) -> Run:
    """The run in this session; a StudioError naming the id if there is none."""
    run = s.get(Run, run_id)
    if run is None:
        raise StudioError(f"no run with id {run_id}")
    return run


def promote_waiting(s: Session) -> list[int]:
    """Waiting runs whose dependency succeeded become queued; failed/cancelled dependencies fail them (chains)."""
    promoted: list[int] = []
    while True:
        dep = aliased(Run)
        rows = s.exec(
            select(Run, dep.status)
            .join(dep, col(Run.depends_on_run_id) == dep.id)
            .where(Run.status == "waiting", col(dep.status).in_(FINISHED_STATUSES))
        ).all()
        if not rows:
            return promoted
        for run, dep_status in rows:
            if dep_status == "succeeded":
                run.status = "queued"
                promoted.append(run.id or 0)
            else:
                run.status, run.finished_at = "failed", utcnow()
                run.error_tail = (
                    f"dependency run {run.depends_on_run_id} {dep_status}; this run never started"
                )
            s.add(run)
        s.flush()


def get_run(*, engine: Engine, run_id: int) -> Run | None:
    with _read(engine) as s:
        return s.get(Run, run_id)


def list_runs(
    *,
    engine: Engine,
    status: str | None = None,
    comparison_set_id: int | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[Run]:
    """Runs, newest first, optionally filtered."""
    query = select(Run).order_by(col(Run.id).desc()).limit(limit).offset(offset)
    if status is not None:
        query = query.where(Run.status == status)
    if comparison_set_id is not None:
        query = query.where(Run.comparison_set_id == comparison_set_id)
    with _read(engine) as s:
        return list(s.exec(query))


def request_cancel(*, engine: Engine, run_id: int) -> Run:
    """Queued/waiting runs are cancelled now; a running one is flagged for its worker to stop."""
    with _write(engine) as s:
        run = require_run(s, run_id)
        if run.status in ("queued", "waiting"):
            run.status, run.finished_at = "cancelled", utcnow()
        elif run.status == "running":
            run.cancel_requested = True
        s.add(run)
        s.flush()
        promote_waiting(s)
        return run


def set_priority(*, engine: Engine, run_id: int, priority: int) -> Run:
    with _write(engine) as s:
        run = require_run(s, run_id)
        run.priority = priority
        s.add(run)
        return run


def retry_run(*, engine: Engine, run_id: int) -> Run:
    """Put a failed or cancelled run back in the queue (or waiting, if its dependency has not succeeded)."""
    with _write(engine) as s:
        run = require_run(s, run_id)
        if run.status not in ("failed", "cancelled"):
            raise StudioError(f"run {run_id} is {run.status}; only failed or cancelled runs can be retried")
        dep = s.get(Run, run.depends_on_run_id) if run.depends_on_run_id is not None else None
        run.status = "queued" if dep is None or dep.status == "succeeded" else "waiting"
        run.consecutive_crashes, run.cancel_requested = 0, False
        run.finished_at, run.exit_code, run.error_tail = None, None, None
        s.add(run)
        return run


def set_of_run(*, engine: Engine, run_id: int) -> int | None:
    """The comparison set a run belongs to, or, for a base that sets were fine-tuned from (their runs depend on
    it, e.g. the quickstart's base), the first of those sets; None otherwise."""
    with _read(engine) as s:
        run = require_run(s, run_id)
        if run.comparison_set_id is not None:
            return run.comparison_set_id
        query = select(sa.func.min(Run.comparison_set_id)).where(Run.depends_on_run_id == run_id)
        return s.exec(query).one()
