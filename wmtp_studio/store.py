"""Every read and write of the studio database, as keyword-only functions of an `Engine` (database.py makes
the engine: `store.make_engine(url)`, then `store.upgrade(engine=...)` on start).

Each function is one transaction. On SQLite writers are serialized by `BEGIN IMMEDIATE`; on PostgreSQL claims
use `FOR UPDATE SKIP LOCKED`. Runs are claimed with a lease and a fencing token: a worker whose token is stale (its
lease expired and the run was claimed again) can no longer renew or finish the run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlalchemy.orm import aliased
from sqlmodel import Session, col, select

from wmtp_studio import rundir
from wmtp_studio.database import check_models_match_migrations as check_models_match_migrations
from wmtp_studio.database import database_error as database_error
from wmtp_studio.database import database_file as database_file
from wmtp_studio.database import file_identity as file_identity
from wmtp_studio.database import make_engine as make_engine
from wmtp_studio.database import read_session as _read
from wmtp_studio.database import upgrade as upgrade
from wmtp_studio.database import write_session as _write
from wmtp_studio.errors import StudioError
from wmtp_studio.models import (
    FINISHED_STATUSES,
    ComparisonSet,
    Evaluation,
    MetricBlob,
    MetricPoint,
    Run,
    SavedRecipe,
    StudioFlag,
    Worker,
    utcnow,
)
from wmtp_studio.recipe import Recipe
from wmtp_studio.rundir.metrics import MetricLine
from wmtp_studio.rundir.results import EvalResults

SCALAR_KINDS = ("train", "val", "stage1", "eval")
log = logging.getLogger(__name__)


def _run(s: Session, run_id: int) -> Run:
    run = s.get(Run, run_id)
    if run is None:
        raise StudioError(f"no run with id {run_id}")
    return run


# --- recipes and comparison sets -------------------------------------------------------------------------------


def save_recipe(*, engine: Engine, name: str, yaml_text: str, recipe: Recipe) -> SavedRecipe:
    """Save (or overwrite) a named recipe with its YAML and canonical form."""
    with _write(engine) as s:
        row = s.exec(select(SavedRecipe).where(SavedRecipe.name == name)).first()
        row = row or SavedRecipe(name=name, yaml_text="", canonical_json="", sha256="")
        row.yaml_text, row.canonical_json, row.sha256 = yaml_text, recipe.canonical_json(), recipe.sha256()
        row.updated_at = utcnow()
        s.add(row)
        return row


def list_saved_recipes(*, engine: Engine) -> list[SavedRecipe]:
    with _read(engine) as s:
        return list(s.exec(select(SavedRecipe).order_by(col(SavedRecipe.name))))


def create_comparison_set(
    *, engine: Engine, name: str, base: Recipe, factor: str, diff: dict[str, Any]
) -> ComparisonSet:
    """A comparison set: `base` expanded over `factor` (e.g. `algorithm x seed`), the values in `diff`."""
    with _write(engine) as s:
        row = ComparisonSet(name=name, base_recipe_sha256=base.sha256(), factor=factor, diff=diff)
        s.add(row)
        return row


def get_comparison_set(*, engine: Engine, comparison_set_id: int) -> ComparisonSet | None:
    with _read(engine) as s:
        return s.get(ComparisonSet, comparison_set_id)


# --- runs: creation and listing --------------------------------------------------------------------------------


def create_run(
    *,
    engine: Engine,
    recipe: Recipe,
    runs_dir: Path,
    comparison_set_id: int | None = None,
    priority: int = 0,
    max_attempts: int = 3,
    depends_on_run_id: int | None = None,
    gpus_requested: int = 0,
    diff: dict[str, Any] | None = None,
) -> Run:
    """Store a run (`queued`, or `waiting` on its dependency) and freeze runs_dir/<id>/recipe.json."""
    with submission(engine=engine, runs_dir=runs_dir) as sub:
        return sub.add_run(
            recipe=recipe,
            comparison_set_id=comparison_set_id,
            priority=priority,
            max_attempts=max_attempts,
            depends_on_run_id=depends_on_run_id,
            gpus_requested=gpus_requested,
            diff=diff,
        )


class Submission:
    """Runs and comparison sets added in one transaction (see `submission`)."""

    def __init__(self, session: Session, runs_dir: Path) -> None:
        self._s, self._runs_dir = session, runs_dir
        self.moved_aside: list[tuple[Path, Path]] = []
        """(run directory, where another run's files found there were moved): say so to the user."""

    def add_comparison_set(
        self, *, name: str, base: Recipe, factor: str, diff: dict[str, Any]
    ) -> ComparisonSet:
        row = ComparisonSet(name=name, base_recipe_sha256=base.sha256(), factor=factor, diff=diff)
        self._s.add(row)
        self._s.flush()  # assigns the id
        return row

    def add_run(
        self,
        *,
        recipe: Recipe,
        comparison_set_id: int | None = None,
        priority: int = 0,
        max_attempts: int = 3,
        depends_on_run_id: int | None = None,
        gpus_requested: int = 0,
        diff: dict[str, Any] | None = None,
    ) -> Run:
        """Add a run (`queued`, or `waiting` on its dependency) and freeze runs_dir/<id>/recipe.json."""
        if depends_on_run_id is not None:
            dep = _run(self._s, depends_on_run_id)
            if dep.status in ("failed", "cancelled"):
                raise StudioError(
                    f"run {depends_on_run_id} is {dep.status}: a run depending on it would never start "
                    f"(retry it first with `wmtp-studio retry {depends_on_run_id}`)"
                )
        run = Run(
            name=recipe.name,
            total_steps=recipe.train.steps or 0,
            comparison_set_id=comparison_set_id,
            recipe_json=recipe.canonical_json(),
            recipe_sha256=recipe.sha256(),
            algorithm=recipe.algorithm.name,
            seed=recipe.train.seed,
            status="queued" if depends_on_run_id is None else "waiting",
            priority=priority,
            max_attempts=max_attempts,
            depends_on_run_id=depends_on_run_id,
            gpus_requested=gpus_requested,
            diff=diff,
        )
        self._s.add(run)
        self._s.flush()  # assigns the id
        run_dir = self._runs_dir / str(run.id)
        stamp = rundir.RunStamp(uid=run.uid, recipe_sha256=run.recipe_sha256)
        try:
            moved = rundir.take_for_new_run(
                run_dir, stamp
            )  # a reset database reuses ids: never adopt old files
            (run_dir / "recipe.json").write_text(run.recipe_json)
        except OSError as exc:  # a full or read-only disk: nothing is stored (the transaction rolls back)
            raise StudioError(f"cannot write the run directory {run_dir}: {exc.strerror or exc}") from None
        if moved is not None:
            log.warning(
                "%s held another run's files (a reset studio database?): moved them to %s", run_dir, moved
            )
            self.moved_aside.append((run_dir, moved))
        run.run_dir = str(run_dir)
        _promote_waiting(self._s)  # the dependency may already be finished
        return run


@contextmanager
def submission(*, engine: Engine, runs_dir: Path) -> Iterator[Submission]:
    """One transaction for several runs and sets: everything added is stored, or nothing (an exception inside
    the block rolls it all back; recipe.json files already written for ids that were never stored are
    overwritten when those ids are used)."""
    with _write(engine) as s:
        yield Submission(s, runs_dir)


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


# --- runs: claims, leases and the reaper -----------------------------------------------------------------------


def _promote_waiting(s: Session) -> list[int]:
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


def claim_next_run(*, engine: Engine, owner: str, gpus_free: int, lease_s: float) -> Run | None:
    """Atomically take the best queued run that fits in `gpus_free` GPUs: highest priority, then oldest."""
    with _write(engine) as s:
        _promote_waiting(s)
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
    status: str,
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
        _promote_waiting(s)
        return True


def _count_crash(run: Run) -> None:
    """The crash-loop guard counts crashed attempts in a row that made no progress: one that trained past the
    largest step stored when it was claimed does not count and resets the count."""
    run.consecutive_crashes = 0 if run.last_step > run.claim_step else run.consecutive_crashes + 1
    run.claim_step = run.last_step


def requeue_expired_leases(*, engine: Engine, now: datetime | None = None) -> list[int]:
    """The reaper: running runs whose lease expired go back to the queue (their ids are returned), or fail after
    `max_attempts` crashes in a row, or become cancelled if that was asked for."""
    now = now or utcnow()
    requeued: list[int] = []
    with _write(engine) as s:
        expired = s.exec(select(Run).where(Run.status == "running", col(Run.lease_expires_at) < now)).all()
        for run in expired:
            _count_crash(run)
            run.lease_owner, run.lease_expires_at = None, None
            if run.cancel_requested:
                run.status, run.finished_at = "cancelled", now
            elif run.consecutive_crashes >= run.max_attempts:
                run.status, run.finished_at = "failed", now
                run.error_tail = (
                    f"gave up: the lease expired {run.consecutive_crashes} times in a row without progress"
                )
            else:
                run.status = "queued"
                requeued.append(run.id or 0)
            s.add(run)
        s.flush()
        _promote_waiting(s)
    return requeued


# --- runs: user intents ----------------------------------------------------------------------------------------


def request_cancel(*, engine: Engine, run_id: int) -> Run:
    """Queued/waiting runs are cancelled now; a running one is flagged for its worker to stop."""
    with _write(engine) as s:
        run = _run(s, run_id)
        if run.status in ("queued", "waiting"):
            run.status, run.finished_at = "cancelled", utcnow()
        elif run.status == "running":
            run.cancel_requested = True
        s.add(run)
        s.flush()
        _promote_waiting(s)
        return run


def set_priority(*, engine: Engine, run_id: int, priority: int) -> Run:
    with _write(engine) as s:
        run = _run(s, run_id)
        run.priority = priority
        s.add(run)
        return run


def retry_run(*, engine: Engine, run_id: int) -> Run:
    """Put a failed or cancelled run back in the queue (or waiting, if its dependency has not succeeded)."""
    with _write(engine) as s:
        run = _run(s, run_id)
        if run.status not in ("failed", "cancelled"):
            raise StudioError(f"run {run_id} is {run.status}; only failed or cancelled runs can be retried")
        dep = s.get(Run, run.depends_on_run_id) if run.depends_on_run_id is not None else None
        run.status = "queued" if dep is None or dep.status == "succeeded" else "waiting"
        run.consecutive_crashes, run.cancel_requested = 0, False
        run.finished_at, run.exit_code, run.error_tail = None, None, None
        s.add(run)
        return run


# --- metrics and evaluations -----------------------------------------------------------------------------------


def ingest_metric_lines(*, engine: Engine, run_id: int, lines: Sequence[MetricLine]) -> int:
    """Store metric lines in one transaction; rows already present (same run and seq) are skipped, so a batch
    can be ingested again safely. Scalars of train/val/stage1/eval lines become points named `<kind>/<metric>`;
    hist/top_tokens/event lines, and the `data` of eval lines, become blobs. Returns the rows inserted."""
    points = [
        {"run_id": run_id, "seq": ln.seq, "name": f"{ln.kind}/{k}", "step": ln.step, "value": v}
        for ln in lines
        if ln.kind in SCALAR_KINDS
        for k, v in ln.metrics.items()
    ]
    blobs = [
        {
            "run_id": run_id,
            "seq": ln.seq,
            "step": ln.step,
            "kind": ln.kind,
            "payload": ln.model_dump(include={"event", "data"}),
        }
        for ln in lines
        if ln.kind not in SCALAR_KINDS or ln.data
    ]
    insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert
    inserted = 0
    with _write(engine) as s:
        for table, rows in ((MetricPoint, points), (MetricBlob, blobs)):
            if rows:  # ON CONFLICT DO NOTHING: rows of an already ingested (run, seq) are skipped
                stmt = (
                    insert(table).on_conflict_do_nothing().returning(col(table.seq))
                )  # counts only new rows
                inserted += len(s.connection().execute(stmt, rows).all())
        steps = [ln.step for ln in lines if ln.kind == "train"]
        if steps:
            s.exec(
                sa.update(Run)
                .where(col(Run.id) == run_id, col(Run.last_step) < max(steps))
                .values(last_step=max(steps))
            )
    return inserted


def truncate_metrics(*, engine: Engine, run_id: int, from_seq: int) -> int:
    """Delete the run's points and blobs with seq >= from_seq (a run restarting from a checkpoint rewrites its
    stream from there on, exactly as the trainer cuts metrics.jsonl back) and bump the run's `metrics_epoch` if
    anything went, so that readers holding a cursor know to reload. Returns the rows deleted."""
    deleted = 0
    with _write(engine) as s:
        for table in (MetricPoint, MetricBlob):
            result = s.execute(
                sa.delete(table).where(col(table.run_id) == run_id, col(table.seq) >= from_seq)
            )
            deleted += int(getattr(result, "rowcount", 0) or 0)
        if deleted:
            s.exec(
                sa.update(Run).where(col(Run.id) == run_id).values(metrics_epoch=col(Run.metrics_epoch) + 1)
            )
    return deleted


def metric_points_since(
    *, engine: Engine, run_id: int, after_seq: int, names: Sequence[str] | None = None
) -> list[MetricPoint]:
    """Points with seq > after_seq in stream order: poll with the largest seq seen as the cursor."""
    query = select(MetricPoint).where(MetricPoint.run_id == run_id, MetricPoint.seq > after_seq)
    if names is not None:
        query = query.where(col(MetricPoint.name).in_(names))
    with _read(engine) as s:
        return list(s.exec(query.order_by(col(MetricPoint.seq), col(MetricPoint.name))))


def metric_blobs_since(
    *, engine: Engine, run_id: int, after_seq: int, kind: str | None = None
) -> list[MetricBlob]:
    query = select(MetricBlob).where(MetricBlob.run_id == run_id, MetricBlob.seq > after_seq)
    if kind is not None:
        query = query.where(MetricBlob.kind == kind)
    with _read(engine) as s:
        return list(s.exec(query.order_by(col(MetricBlob.seq))))


def last_seq(*, engine: Engine, run_id: int) -> int:
    """The largest seq stored for the run (points or blobs), -1 if none: where a restarted tailer resumes."""
    with _read(engine) as s:
        seqs = [
            s.exec(select(sa.func.max(table.seq)).where(table.run_id == run_id)).one()
            for table in (MetricPoint, MetricBlob)
        ]
    return max((q for q in seqs if q is not None), default=-1)


def record_evaluation(*, engine: Engine, evaluation: Evaluation) -> Evaluation:
    """Store one pass@k result (built by the caller as an `Evaluation` row) of an existing run."""
    with _write(engine) as s:
        _run(s, evaluation.run_id)
        s.add(evaluation)
        return evaluation


def record_results(
    *, engine: Engine, run_id: int, results: EvalResults, samples: Path | None = None
) -> list[Evaluation]:
    """Store an evaluation's results.json (rundir/results.py): one Evaluation per k, in one transaction; the one
    way pass@k reaches the database. `samples`: its samples.jsonl (each sample's verdict and why), which the
    Evaluations tab reads."""
    per_problem = results.model_dump(mode="json", include={"per_problem"})["per_problem"]
    protocol = results.model_dump(mode="json", include={"protocol", "sampling", "isolation_tier"})
    rows = [
        Evaluation(
            run_id=run_id,
            benchmark=results.benchmark,
            k=p.k,
            pass_at_k=p.value,
            ci_low=p.ci_low,
            ci_high=p.ci_high,
            n_problems=results.n_problems,
            per_problem=per_problem,
            protocol=protocol | ({"samples": str(samples)} if samples is not None else {}),
        )
        for p in results.pass_at_k
    ]
    with _write(engine) as s:
        _run(s, run_id)
        s.add_all(rows)
    return rows


def record_later_evaluation(
    *,
    engine: Engine,
    run_id: int,
    lines: Sequence[MetricLine],
    results: EvalResults,
    samples: Path | None = None,
) -> list[Evaluation]:
    """An evaluation made after the run's supervisor stopped following it (`wmtp eval` of a studio run dir): its
    new metrics.jsonl lines and its results, as the supervisor would have stored them, and the run's MLflow copy
    marked behind so that the forwarder sends the evaluation and its artifacts."""
    ingest_metric_lines(engine=engine, run_id=run_id, lines=lines)
    rows = record_results(engine=engine, run_id=run_id, results=results, samples=samples)
    mark_mlflow_synced(engine=engine, run_id=run_id, done=False)
    return rows


def list_evaluations(*, engine: Engine, run_id: int) -> list[Evaluation]:
    with _read(engine) as s:
        query = select(Evaluation).where(Evaluation.run_id == run_id)
        return list(s.exec(query.order_by(col(Evaluation.benchmark), col(Evaluation.k))))


# --- workers ---------------------------------------------------------------------------------------------------


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


# --- studio flags ----------------------------------------------------------------------------------------------


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


# --- runs overview ---------------------------------------------------------------------------------------------


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


# --- dashboard reads -------------------------------------------------------------------------------------------


def point_rows_since(
    *, engine: Engine, run_id: int, after_seq: int, limit: int | None = None
) -> list[tuple[int, str, int, float]]:
    """(seq, name, step, value) of the run's points with seq > after_seq in stream order, at most `limit` rows:
    plain tuples, several times cheaper than `metric_points_since` on a long run's first load."""
    query = (
        select(MetricPoint.seq, MetricPoint.name, MetricPoint.step, MetricPoint.value)
        .where(MetricPoint.run_id == run_id, MetricPoint.seq > after_seq)
        .order_by(col(MetricPoint.seq), col(MetricPoint.name))
        .limit(limit)
    )
    with _read(engine) as s:
        return [(seq, name, step, value) for seq, name, step, value in s.exec(query)]


def latest_points(
    *, engine: Engine, run_id: int, names: Sequence[str], limit: int
) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of the run's `limit` latest points of each of `names`, oldest first: index seeks on
    ix_metricpoint_run_name_step (the dashboard's ETA reads the trainer's recent timing this way)."""
    out: dict[str, list[tuple[int, float]]] = {}
    with _read(engine) as s:
        for name in names:
            query = (
                select(MetricPoint.step, MetricPoint.value)
                .where(MetricPoint.run_id == run_id, MetricPoint.name == name)
                .order_by(col(MetricPoint.step).desc())
                .limit(limit)
            )
            out[name] = [(step, value) for step, value in reversed(s.exec(query).all())]
    return out


# --- MLflow sync -----------------------------------------------------------------------------------------------


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


def points_to_forward(*, engine: Engine, run_id: int, after_seq: int, max_points: int) -> list[MetricPoint]:
    """The run's points after `after_seq` in stream order, at most `max_points` of them and only whole lines
    (every point of a seq), so that the last seq returned can become the cursor."""
    query = (
        select(MetricPoint)
        .where(MetricPoint.run_id == run_id, MetricPoint.seq > after_seq)
        .order_by(col(MetricPoint.seq), col(MetricPoint.name))
    )
    with _read(engine) as s:
        rows = list(s.exec(query.limit(max_points + 1)))
        if len(rows) <= max_points:
            return rows
        cut = rows[max_points].seq  # that line may be incomplete: stop before it
        whole = [p for p in rows if p.seq < cut]
        return whole or list(s.exec(query.where(MetricPoint.seq == cut)))


def set_of_run(*, engine: Engine, run_id: int) -> int | None:
    """The comparison set a run belongs to, or, for a base that sets were fine-tuned from (their runs depend on
    it, e.g. the quickstart's base), the first of those sets; None otherwise."""
    with _read(engine) as s:
        run = _run(s, run_id)
        if run.comparison_set_id is not None:
            return run.comparison_set_id
        query = select(sa.func.min(Run.comparison_set_id)).where(Run.depends_on_run_id == run_id)
        return s.exec(query).one()


def set_mlflow_run(*, engine: Engine, run_id: int, mlflow_run_id: str) -> str:
    """Record the run's MLflow run unless one is recorded already; returns the one recorded (first wins)."""
    with _write(engine) as s:
        run = _run(s, run_id)
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


# --- workers housekeeping --------------------------------------------------------------------------------------

WORKER_DEAD_AFTER_S = 30.0
"""A worker silent this long is dead: daemons heartbeat at least every 5 s, so this is six missed beats."""
WORKER_FORGET_AFTER_S = 3600.0
"""The reaper deletes the rows of workers silent this long (kept until then to show which host died)."""


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


def requeue_crashed_run(
    *, engine: Engine, run_id: int, owner: str, token: int, exit_code: int | None, error_tail: str | None
) -> str | None:
    """A job whose process was killed (kill -9, the OOM killer, a lost device) counts as a crash, as an expired
    lease does: the run goes back to the queue to resume from its checkpoint, or is failed after `max_attempts`
    crashes in a row (cancelled, if that was asked for). Returns the new status; None if the token is stale."""
    now = utcnow()
    with _write(engine) as s:
        run = s.exec(select(Run).where(_fenced(run_id, owner, token))).first()
        if run is None:
            return None
        _count_crash(run)
        run.lease_owner, run.lease_expires_at = None, None
        run.exit_code, run.error_tail = exit_code, error_tail
        if run.cancel_requested:
            run.status, run.finished_at = "cancelled", now
        elif run.consecutive_crashes >= run.max_attempts:
            run.status, run.finished_at = "failed", now
            run.error_tail = (
                f"gave up: the job was killed {run.consecutive_crashes} times in a row without progress\n"
                f"{error_tail or ''}"
            )
        else:
            run.status = "queued"
        s.add(run)
        s.flush()
        _promote_waiting(s)
        return run.status


# --- run details -----------------------------------------------------------------------------------------------


def latest_metrics(*, engine: Engine, run_id: int) -> dict[str, MetricPoint]:
    """The newest point of each of the run's metrics (largest seq per name), in name order: one grouped query
    instead of reading the whole stream."""
    newest = (
        select(MetricPoint.name, sa.func.max(MetricPoint.seq).label("seq"))
        .where(MetricPoint.run_id == run_id)
        .group_by(col(MetricPoint.name))
        .subquery()
    )
    query = (
        select(MetricPoint)
        .join(newest, sa.and_(col(MetricPoint.name) == newest.c.name, col(MetricPoint.seq) == newest.c.seq))
        .where(MetricPoint.run_id == run_id)
        .order_by(col(MetricPoint.name))
    )
    with _read(engine) as s:
        return {p.name: p for p in s.exec(query)}


# --- comparison sets: progress ---------------------------------------------------------------------------------


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
