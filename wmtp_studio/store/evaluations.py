"""pass@k results of runs (`Evaluation` rows), as the supervisor or a later `wmtp eval` stores them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from wmtp_studio.database import read_session as _read
from wmtp_studio.database import write_session as _write
from wmtp_studio.models import Evaluation
from wmtp_studio.rundir.metrics import MetricLine
from wmtp_studio.rundir.results import EvalResults
from wmtp_studio.store.metrics import ingest_metric_lines
from wmtp_studio.store.mlflow_cursor import mark_mlflow_synced
from wmtp_studio.store.runs import require_run


def record_evaluation(*, engine: Engine, evaluation: Evaluation) -> Evaluation:
    """Store one pass@k result (built by the caller as an `Evaluation` row) of an existing run."""
    with _write(engine) as s:
        require_run(s, evaluation.run_id)
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
        require_run(s, run_id)
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
