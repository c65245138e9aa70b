"""metrics.jsonl: the trainer's only channel to the outside world (rank 0 writes, everyone else reads).

Each line is one `MetricLine` with a monotonically increasing `seq`. Readers (the studio's ingester, the TUI)
validate lines with the same model. On resume the file is cut back to the byte offset recorded in the checkpoint
and `seq` continues from there, so the stream has no gaps and no duplicates.
"""

from __future__ import annotations

import os
import time
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


class MetricsWriter:
    """Appends MetricLines, flushed line by line so that a tailer sees each within milliseconds."""

    def __init__(self, path: Path, *, seq: int = 0, offset: int | None = None, enabled: bool = True) -> None:
        self.path, self.seq, self.enabled = path, seq, enabled
        self._fh = None
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(path, "a+b")  # noqa: SIM115 - kept open for the whole run
            if offset is not None:
                self._fh.truncate(offset)  # drop lines written after the checkpoint we resume from
            self._fh.seek(0, os.SEEK_END)

    @property
    def offset(self) -> int:
        return self._fh.tell() if self._fh else 0

    def write(
        self,
        kind: Kind,
        step: int,
        *,
        metrics: dict[str, float] | None = None,
        event: str | None = None,
        data: dict[str, Any] | None = None,
    ) -> None:
        if not self._fh:
            return
        line = MetricLine(
            seq=self.seq,
            step=step,
            time=time.time(),
            kind=kind,
            metrics=metrics or {},
            event=event,
            data=data or {},
        )
        self._fh.write(line.model_dump_json(exclude_defaults=False).encode() + b"\n")
        self._fh.flush()
        self.seq += 1

    def close(self) -> None:
        if self._fh:
            self._fh.close()
            self._fh = None


def read_metrics(path: Path) -> list[MetricLine]:
    """Every complete line of a metrics.jsonl (a partial last line is left for later)."""
    lines = []
    with open(path, "rb") as fh:
        for raw in fh:
            if raw.endswith(b"\n"):
                lines.append(MetricLine.model_validate_json(raw))
    return lines
