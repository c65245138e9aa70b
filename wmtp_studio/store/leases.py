"""Claims, leases and the reaper. Runs are claimed with a lease and a fencing token: a worker whose token is stale
(its lease expired and the run was claimed again) can no longer renew or finish the run. A crashed attempt (an
expired lease, a killed job) sends the run back to the queue, or fails it after `max_attempts` crashes in a row
without progress."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from wmtp_studio.database import write_session as _write
from wmtp_studio.errors import StudioError
from wmtp_studio.models import FINISHED_STATUSES, Run, RunStatus, StudioFlag, utcnow
from wmtp_studio.store.runs import promote_waiting


def claim_next_run(*, engine: Engine, owner: str, gpus_free: int, lease_s: float) -> Run | None:
    """Atomically take the best queued run that fits in `gpus_free` GPUs: highest priority, then oldest."""
    with _write(engine) as s:
        promote_waiting(s)
        paused = s.get(StudioFlag, "queue_paused")
        if paused is not None and paused.value:
            return None
        run = s.exec(
            select(Run)
            .where(Run.status == "queued", Run.gpus_requested <= gpus_free)
            .order_by(col(Run.priority).desc(), col(Run.id))
            .limit(1)
            .with_for_update(skip_locked=True)
        ).first()
        if run is None:
            return None
        now = utcnow()
        run.status, run.lease_owner, run.lease_expires_at = "running", owner, now + timedelta(seconds=lease_s)
        run.fencing_token += 1
        run.attempts += 1
        run.claim_step = run.last_step
        run.started_at, run.finished_at, run.exit_code, run.error_tail = now, None, None, None
        s.add(run)
        return run


def _fenced(run_id: int, owner: str, token: int) -> sa.ColumnElement[bool]:
    """The run is still running under this owner's claim (no later claim has bumped the token)."""
    return sa.and_(
        col(Run.id) == run_id,
        col(Run.lease_owner) == owner,
        col(Run.fencing_token) == token,
        col(Run.status) == "running",
    )


def renew_lease(*, engine: Engine, run_id: int, owner: str, token: int, lease_s: float) -> bool:
    """Extend the lease; False if it is no longer ours (stale token: the run was re-claimed or finished)."""
    expires = utcnow() + timedelta(seconds=lease_s)
    with _write(engine) as s:
        result = s.exec(sa.update(Run).where(_fenced(run_id, owner, token)).values(lease_expires_at=expires))
        return bool(result.rowcount == 1)


def finish_run(
    *,
    engine: Engine,
    run_id: int,
    owner: str,
    token: int,
    status: RunStatus,
    exit_code: int | None = None,
    error_tail: str | None = None,
) -> bool:
    """Record how a run ended (or `queued`: handed back on a graceful shutdown); False if the token is stale."""
    if status not in (*FINISHED_STATUSES, "queued"):
        raise StudioError(f"cannot finish a run as {status!r}")
    values: dict[str, Any] = {"status": status, "exit_code": exit_code, "error_tail": error_tail}
    values |= {
        "lease_owner": None,
        "lease_expires_at": None,
        "finished_at": None if status == "queued" else utcnow(),
    }
    if status == "succeeded":
        values["consecutive_crashes"] = 0
    with _write(engine) as s:
        result = s.exec(sa.update(Run).where(_fenced(run_id, owner, token)).values(**values))
        if result.rowcount != 1:
            return False
        promote_waiting(s)
        return True


def _crashed(run: Run, now: datetime) -> bool:
    """End a crashed attempt: release the lease; the run is cancelled if that was asked for, failed after
    `max_attempts` crashes in a row, else queued again. Returns True when it gave up (failed): the caller says
    why in `error_tail`. Only crashes without progress count: an attempt that trained past the largest step
    stored when it was claimed resets the count."""
    run.consecutive_crashes = 0 if run.last_step > run.claim_step else run.consecutive_crashes + 1
    run.claim_step = run.last_step
    run.lease_owner, run.lease_expires_at = None, None
    if run.cancel_requested:
        run.status, run.finished_at = "cancelled", now
    elif run.consecutive_crashes >= run.max_attempts:
        run.status, run.finished_at = "failed", now
        return True
    else:
        run.status = "queued"
    return False


def requeue_expired_leases(*, engine: Engine, now: datetime | None = None) -> list[int]:
    """The reaper: running runs whose lease expired are crashed attempts (`_crashed`); returns the ids of those
    that went back to the queue."""
    now = now or utcnow()
    with _write(engine) as s:
        expired = s.exec(select(Run).where(Run.status == "running", col(Run.lease_expires_at) < now)).all()
        for run in expired:
            if _crashed(run, now):
                run.error_tail = (
                    f"gave up: the lease expired {run.consecutive_crashes} times in a row without progress"
                )
            s.add(run)
        s.flush()
        promote_waiting(s)
        return [run.id or 0 for run in expired if run.status == "queued"]


def requeue_crashed_run(
    *, engine: Engine, run_id: int, owner: str, token: int, exit_code: int | None, error_tail: str | None
) -> RunStatus | None:
    """A job whose process was killed (kill -9, the OOM killer, a lost device) counts as a crash, as an expired
    lease does (`_crashed`): the run goes back to the queue to resume from its checkpoint, or is failed or
    cancelled. Returns the new status; None if the token is stale."""
    now = utcnow()
    with _write(engine) as s:
        run = s.exec(select(Run).where(_fenced(run_id, owner, token))).first()
        if run is None:
            return None
        run.exit_code, run.error_tail = exit_code, error_tail
        if _crashed(run, now):
            run.error_tail = (
                f"gave up: the job was killed {run.consecutive_crashes} times in a row without progress\n"
                f"{error_tail or ''}"
            )
        s.add(run)
        s.flush()
        promote_waiting(s)
        return run.status
