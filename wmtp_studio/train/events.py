"""The metrics.jsonl writer (rank 0 of the trainer, and the evaluator); the line model and the reader are the run
directory's contract (rundir/metrics.py).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from wmtp_studio.rundir.metrics import Kind, MetricLine


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
