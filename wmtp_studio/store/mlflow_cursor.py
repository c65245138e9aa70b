"""Where each run's MLflow copy stands: its MLflow run id, the last metric seq forwarded (the cursor), and
whether its final state was sent. The forwarder (workers/mlflow_sync.py) is the only writer."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from wmtp_studio.database import read_session as _read
from wmtp_studio.database import write_session as _write
from wmtp_studio.models import MetricPoint, Run
from wmtp_studio.store.runs import require_run


def runs_to_sync(*, engine: Engine, limit: int = 500) -> list[Run]:
    """Started runs whose MLflow copy is behind: stored points after their cursor, or the final state (status,
    evaluations, artifacts) not forwarded yet. Oldest first."""
    unsynced = sa.exists().where(
        col(MetricPoint.run_id) == col(Run.id), col(MetricPoint.seq) > col(Run.mlflow_synced_seq)
    )
    query = (
        select(Run)
        .where(col(Run.started_at).is_not(None), sa.or_(col(Run.mlflow_done).is_(False), unsynced))
        .order_by(col(Run.id))
        .limit(limit)
    )
    with _read(engine) as s:
        return list(s.exec(query))


def set_mlflow_run(*, engine: Engine, run_id: int, mlflow_run_id: str) -> str:
    """Record the run's MLflow run unless one is recorded already; returns the one recorded (first wins)."""
    with _write(engine) as s:
        run = require_run(s, run_id)
        if run.mlflow_run_id is None:
            run.mlflow_run_id = mlflow_run_id
            s.add(run)
        return run.mlflow_run_id


def mark_mlflow_synced(
    *, engine: Engine, run_id: int, synced_seq: int | None = None, done: bool | None = None
) -> None:
    """Advance the run's MLflow cursor to `synced_seq` (never back) and/or set whether its final state is in
    MLflow."""
    with _write(engine) as s:
        if synced_seq is not None:
            s.exec(
                sa.update(Run)
                .where(col(Run.id) == run_id, col(Run.mlflow_synced_seq) < synced_seq)
                .values(mlflow_synced_seq=synced_seq)
            )
        if done is not None:
            s.exec(sa.update(Run).where(col(Run.id) == run_id).values(mlflow_done=done))
