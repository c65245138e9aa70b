"""The studio database: one SQLModel class per table. Every read and write goes through the store package (store/).

Every change here comes with an alembic revision in migrations/versions/ (a test fails on drift).
Timestamps are timezone-aware UTC in Python; SQLite stores them naive and `UTCDateTime` puts the zone back.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from uuid import uuid4

import sqlalchemy as sa
from sqlalchemy.engine import Dialect
from sqlmodel import AutoString, Field, SQLModel

RunStatus = Literal["queued", "waiting", "running", "succeeded", "failed", "cancelled"]
RUN_STATUSES: tuple[RunStatus, ...] = ("queued", "waiting", "running", "succeeded", "failed", "cancelled")
FINISHED_STATUSES: tuple[RunStatus, ...] = ("succeeded", "failed", "cancelled")

# Deterministic constraint names, so that later migrations can alter them (PostgreSQL, SQLite batch mode).
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """A DateTime that only accepts aware datetimes and always returns them in UTC."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware UTC datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _time(*, nullable: bool = False) -> Any:
    """A UTC timestamp column; required ones default to now."""
    if nullable:
        return Field(default=None, sa_type=UTCDateTime, nullable=True)
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


def _json(*, nullable: bool = False) -> Any:
    if nullable:
        return Field(default=None, sa_type=sa.JSON, nullable=True)
    return Field(default_factory=dict, sa_type=sa.JSON, nullable=False)


class SavedRecipe(SQLModel, table=True):
    """A recipe saved under a name: the YAML as written and its canonical (validated) form."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True)
    yaml_text: str = Field(sa_type=sa.Text)
    canonical_json: str = Field(sa_type=sa.Text)
    sha256: str = Field(max_length=64, index=True)
    created_at: datetime = _time()
    updated_at: datetime = _time()


class ComparisonSet(SQLModel, table=True):
    """One base recipe expanded over a factor (algorithms x seeds); its runs differ only in that factor."""

    id: int | None = Field(default=None, primary_key=True)
    name: str
    base_recipe_sha256: str = Field(max_length=64)
    factor: str
    """What varies, e.g. `algorithm x seed`."""
    diff: dict[str, Any] = _json()
    """The declared factor's values, e.g. {"algorithm": [...], "seed": [...]}."""
    created_at: datetime = _time()


class Run(SQLModel, table=True):
    """One training job: its frozen recipe, where it is in its life, and who holds its lease."""

    __table_args__ = (
        sa.CheckConstraint(
            "status IN ('queued', 'waiting', 'running', 'succeeded', 'failed', 'cancelled')",
            name="status",
        ),
        sa.Index("ix_run_claim", "status", "priority", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    name: str = ""
    """The recipe's name (an expanded comparison run's is `<base>-<algorithm>-s<seed>`)."""
    comparison_set_id: int | None = Field(default=None, foreign_key="comparisonset.id", index=True)
    recipe_json: str = Field(sa_type=sa.Text)
    """Canonical recipe JSON (`Recipe.canonical_json()`), frozen as runs/<id>/recipe.json."""
    recipe_sha256: str = Field(max_length=64, index=True)
    algorithm: str
    seed: int
    status: RunStatus = Field(default="queued", sa_type=AutoString)
    priority: int = 0
    """Higher runs first; ties go to the oldest run."""
    attempts: int = 0
    """Claims so far (each claim is one attempt)."""
    max_attempts: int = 3
    """Consecutive crashes (expired leases, killed jobs) without progress after which the run is marked failed."""
    consecutive_crashes: int = 0
    lease_owner: str | None = None
    lease_expires_at: datetime | None = _time(nullable=True)
    fencing_token: int = 0
    """Incremented on every claim: a worker whose token is stale may no longer write the run's state."""
    cancel_requested: bool = False
    created_at: datetime = _time()
    started_at: datetime | None = _time(nullable=True)
    finished_at: datetime | None = _time(nullable=True)
    exit_code: int | None = None
    error_tail: str | None = Field(default=None, sa_type=sa.Text)
    run_dir: str = ""
    depends_on_run_id: int | None = Field(default=None, foreign_key="run.id", index=True)
    gpus_requested: int = 0
    diff: dict[str, Any] | None = _json(nullable=True)
    """How this run differs from its comparison set's base recipe."""
    total_steps: int = 0
    """The recipe's optimizer step budget (`train.steps`): progress is last_step / total_steps."""
    last_step: int = 0
    """The largest training step ingested so far."""
    mlflow_run_id: str | None = None
    """The MLflow run this run is forwarded to, once created."""
    mlflow_synced_seq: int = -1
    """Largest metric seq already forwarded to MLflow (-1: none): forwarding resumes after it."""
    mlflow_done: bool = False
    """The finished run's status, evaluations and artifacts are in MLflow."""
    metrics_epoch: int = 0
    """Bumped whenever stored metrics are cut back (a resume from a checkpoint): readers holding a cursor reload."""
    uid: str = Field(default_factory=lambda: uuid4().hex, max_length=32, unique=True)
    """The run's identity across databases: stamped into runs/<id>/run.json and every checkpoint, so that a
    reset database (ids start again at 1) never adopts another run's directory or resumes its checkpoint."""
    claim_step: int = 0
    """`last_step` when the run was last claimed: an attempt that ends above it made progress, and a crash after
    progress does not count toward `max_attempts`."""


class MetricPoint(SQLModel, table=True):
    """One scalar of one metrics.jsonl line; `name` is `<kind>/<metric>`, e.g. `train/loss`, `val/loss`."""

    __table_args__ = (sa.Index("ix_metricpoint_run_name_step", "run_id", "name", "step"),)

    run_id: int = Field(foreign_key="run.id", primary_key=True)
    seq: int = Field(primary_key=True)
    name: str = Field(primary_key=True)
    step: int
    value: float


class MetricBlob(SQLModel, table=True):
    """A structured metrics.jsonl line: histogram, top tokens, event, or an eval line's protocol."""

    run_id: int = Field(foreign_key="run.id", primary_key=True)
    seq: int = Field(primary_key=True)
    step: int
    kind: str
    payload: dict[str, Any] = _json()
    """{"event": ..., "data": {...}} as written by the trainer."""


class Evaluation(SQLModel, table=True):
    """pass@k of a run on one benchmark, with its confidence interval and the protocol that produced it."""

    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="run.id", index=True)
    benchmark: str
    k: int
    pass_at_k: float
    ci_low: float
    ci_high: float
    n_problems: int
    protocol: dict[str, Any] = _json()
    per_problem: dict[str, Any] | None = _json(nullable=True)
    """{task id: {"n": samples, "c": correct}}: what paired comparisons between runs are computed from."""
    created_at: datetime = _time()


class Worker(SQLModel, table=True):
    """A `wmtp-worker` daemon: what it offers and when it was last alive."""

    id: str = Field(primary_key=True)
    host: str
    pid: int
    slots: list[str] = Field(default_factory=list, sa_type=sa.JSON, nullable=False)
    """GPU indices it may hand out (`["cpu"]` for a CPU worker)."""
    heartbeat_at: datetime = _time()
    current_run_ids: list[int] = Field(default_factory=list, sa_type=sa.JSON, nullable=False)
    started_at: datetime = _time()
    version: str = ""
    gpu_stats: list[dict[str, Any]] = Field(default_factory=list, sa_type=sa.JSON, nullable=False)
    """Per GPU at the last heartbeat: {"index", "memory_used_mib", "memory_total_mib", "utilization_pct"}."""


class StudioFlag(SQLModel, table=True):
    """A studio-wide setting stored in the database, e.g. `queue_paused` (workers claim nothing while true)."""

    name: str = Field(primary_key=True)
    value: Any = Field(default=None, sa_type=sa.JSON, nullable=True)
    updated_at: datetime = _time()
