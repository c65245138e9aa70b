"""What the dashboard's tables and the CLI's listings show of many runs at once, each in one query."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from wmtp_studio.database import read_session as _read
from wmtp_studio.models import FINISHED_STATUSES, ComparisonSet, Evaluation, MetricPoint, Run


@dataclass(frozen=True)
class RunOverview:
    """A run with what the dashboard's runs table shows beyond the row itself."""

    run: Run
    comparison_set: str | None
    """The name of the run's comparison set."""
    loss: float | None
    """The latest `train/loss` point."""
    pass_at_1: float | None
    """pass@1 of the run's first recorded evaluation with k = 1, HumanEval only when there is no other (a model
    trained on its own task is scored on that task first; HumanEval's 0 at tiny scale must not stand for it)."""


def failure_reason(run: Run) -> str | None:
    """Why a failed run failed, in one line, from the log tail the supervisor stored (`Run.error_tail`): the last
    `error: ...` line the trainer or the evaluator printed (without the prefix), else the last non-empty line
    (e.g. a traceback's exception); None for a run that did not fail or left no log."""
    if run.status != "failed" or not run.error_tail:
        return None
    lines = [ln.strip() for ln in run.error_tail.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.lower().startswith("error:")]
    if errors:
        return errors[-1][len("error:") :].strip()
    return lines[-1] if lines else None


def runs_overview(*, engine: Engine, limit: int = 1000) -> list[RunOverview]:
    """The newest `limit` runs with their latest train loss and pass@1: one query, whose correlated subqueries
    are index seeks per run (ix_metricpoint_run_name_step, ix_evaluation_run_id)."""
    loss = (
        select(MetricPoint.value)
        .where(MetricPoint.run_id == Run.id, MetricPoint.name == "train/loss")
        .order_by(col(MetricPoint.step).desc())
        .limit(1)
        .scalar_subquery()
    )
    pass1 = (
        select(Evaluation.pass_at_k)
        .where(Evaluation.run_id == Run.id, Evaluation.k == 1)
        .order_by(col(Evaluation.benchmark) == "humaneval", col(Evaluation.id))
        .limit(1)
        .scalar_subquery()
    )
    query = (
        select(Run, ComparisonSet.name, loss, pass1)
        .outerjoin(ComparisonSet, col(Run.comparison_set_id) == ComparisonSet.id)
        .order_by(col(Run.id).desc())
        .limit(limit)
    )
    with _read(engine) as s:
        return [RunOverview(run, name, lo, p1) for run, name, lo, p1 in s.exec(query)]


def queue_runs(*, engine: Engine, finished_limit: int = 20) -> list[Run]:
    """The queue as workers see it: running runs, then queued ones in claim order (priority, then age), then
    waiting ones; after them the `finished_limit` latest failed or cancelled runs (what can be retried)."""
    order = sa.case({"running": 0, "queued": 1, "waiting": 2}, value=col(Run.status))
    active = select(Run).where(col(Run.status).in_(("running", "queued", "waiting")))
    retryable = select(Run).where(col(Run.status).in_(("failed", "cancelled")))
    with _read(engine) as s:
        rows = list(s.exec(active.order_by(order, col(Run.priority).desc(), col(Run.id))))
        return rows + list(s.exec(retryable.order_by(col(Run.finished_at).desc()).limit(finished_limit)))


@dataclass(frozen=True)
class SetProgress:
    """A comparison set with how many runs it has and how many of them finished (succeeded, failed, cancelled)."""

    id: int
    name: str
    runs: int
    finished: int

    @property
    def done(self) -> bool:
        return self.runs > 0 and self.finished == self.runs


def comparison_set_progress(*, engine: Engine, limit: int = 50) -> list[SetProgress]:
    """The newest `limit` comparison sets, newest first, with their runs counted: one grouped query."""
    finished = sa.func.sum(sa.case((col(Run.status).in_(FINISHED_STATUSES), 1), else_=0))
    query = (
        select(ComparisonSet.id, ComparisonSet.name, sa.func.count(col(Run.id)), finished)
        .outerjoin(Run, col(Run.comparison_set_id) == ComparisonSet.id)
        .group_by(col(ComparisonSet.id), col(ComparisonSet.name))
        .order_by(col(ComparisonSet.id).desc())
        .limit(limit)
    )
    with _read(engine) as s:
        return [SetProgress(i or 0, name, n, int(f or 0)) for i, name, n, f in s.exec(query)]
