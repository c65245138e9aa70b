"""metrics.jsonl: the trainer's (and the evaluator's) only channel to the outside world.

Each line is one `MetricLine` with a monotonically increasing `seq`. The writer is train/events.py; readers (the
worker's ingester, the dashboard, the evaluator continuing the stream) validate lines with the same model. On
resume the file is cut back to the byte offset recorded in the checkpoint's `TrainerState` and `seq` continues
from there, so the stream has no gaps and no duplicates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Kind = Literal["train", "val", "stage1", "hist", "top_tokens", "event", "eval"]


class MetricLine(BaseModel):
    """One line of metrics.jsonl."""

    model_config = ConfigDict(extra="forbid")

    seq: int
    """Position in the stream, starting at 0, without gaps."""
    step: int
    """Optimiser step the line belongs to (Stage 1 lines use their own step counter)."""
    time: float
    """Unix time the line was written."""
    kind: Kind
    """train/val/stage1/eval: `metrics` holds scalars (eval: pass@k and its CI, `data` the protocol); hist: `data`
    holds edges and per-head counts;
    top_tokens: `data` holds tokens and per-head weights of one sequence; event: `event` names it."""
    metrics: dict[str, float] = {}
    """Scalar name -> value (e.g. `loss`, `head1/ce`, `head1/w_std`)."""
    event: str | None = None
    """start, resumed, stage1_done, checkpoint, nonfinite, interrupted, done, error."""
    data: dict[str, Any] = {}
    """Structured payload of hist/top_tokens/event lines."""


def read_metrics(path: Path) -> list[MetricLine]:
    """Every complete line of a metrics.jsonl (a partial last line is left for later)."""
    lines = []
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                lines.append(MetricLine.model_validate_json(raw))
    return lines
