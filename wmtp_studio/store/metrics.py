"""The metrics stream of each run, as ingested from its metrics.jsonl: scalar points (`MetricPoint`) and
structured lines (`MetricBlob`), both keyed by the line's `seq`. Readers poll with the last seq they saw."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import starmap
from typing import NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from wmtp_studio.database import read_session as _read
from wmtp_studio.database import write_session as _write
from wmtp_studio.models import MetricBlob, MetricPoint, Run
from wmtp_studio.rundir.metrics import MetricLine

SCALAR_KINDS = ("train", "val", "stage1", "eval")


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


class Point(NamedTuple):
    """One stored scalar: a plain tuple, several times cheaper to read than a `MetricPoint` row."""

    seq: int
    name: str
    step: int
    value: float


@dataclass(frozen=True)
class PointPage:
    points: list[Point]
    """In stream order (seq, then name), whole lines only: the last point's seq can become the cursor."""
    more: bool
    """The limit cut the stream: fetch again after the last point's seq."""


def points_since(
    *,
    engine: Engine,
    run_id: int,
    after_seq: int,
    limit: int | None = None,
    names: Sequence[str] | None = None,
) -> PointPage:
    """The run's points with seq > after_seq (only `names`, if given). With `limit`, a page of at most `limit`
    points, cut before a line the limit would split (a single line longer than the limit comes whole)."""
    query = select(MetricPoint.seq, MetricPoint.name, MetricPoint.step, MetricPoint.value).where(
        MetricPoint.run_id == run_id, MetricPoint.seq > after_seq
    )
    if names is not None:
        query = query.where(col(MetricPoint.name).in_(names))
    query = query.order_by(col(MetricPoint.seq), col(MetricPoint.name))
    with _read(engine) as s:
        rows = list(starmap(Point, s.exec(query.limit(None if limit is None else limit + 1))))
        if limit is None or len(rows) <= limit:
            return PointPage(rows, more=False)
        cut = rows[limit].seq  # that line may be incomplete: stop before it
        whole = [p for p in rows if p.seq < cut]
        if not whole:  # one line longer than the limit
            whole = list(starmap(Point, s.exec(query.where(MetricPoint.seq == cut))))
        return PointPage(whole, more=True)


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
