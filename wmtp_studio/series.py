"""What the run and compare screens draw, kept as plain Python: metric series, histogram history, and the cursors
that feed them.

No Textual here (the dashboard's widgets draw it). A `MetricFeed` reads new rows of one run from the store (in a thread worker) and hands a
`FeedBatch` to the UI thread, which applies it to a `RunData`; charts then draw `MetricSeries.downsample(width)`.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from wmtp_studio import store

Point = store.Point
"""(seq, name, step, value) of one stored metric point."""


def downsample(xs: Sequence[float], ys: Sequence[float], width: int) -> tuple[list[float], list[float]]:
    """At most two points per bucket: each of `width` buckets keeps its minimum and maximum (in stream order),
    and the first and last points are always kept, so spikes, the start and the current value survive."""
    n, width = len(xs), max(width, 1)
    if n <= 2 * width:
        return list(xs), list(ys)
    keep = {0, n - 1}
    for b in range(width):  # buckets over the points between the first and the last
        lo, hi = 1 + b * (n - 2) // width, 1 + (b + 1) * (n - 2) // width
        if lo < hi:
            seg = range(lo, hi)
            keep |= {min(seg, key=ys.__getitem__), max(seg, key=ys.__getitem__)}
    return [xs[i] for i in sorted(keep)], [ys[i] for i in sorted(keep)]


@dataclass
class MetricSeries:
    """One metric over steps, in arrival order; non-finite values are counted, not kept (they cannot be drawn)."""

    steps: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    nonfinite: int = 0

    def append(self, step: float, value: float | None) -> None:
        if value is None or not math.isfinite(value):
            self.nonfinite += 1
            return
        self.steps.append(step)
        self.values.append(value)

    def last(self) -> tuple[float, float] | None:
        return (self.steps[-1], self.values[-1]) if self.steps else None

    def downsample(self, width: int) -> tuple[list[float], list[float]]:
        return downsample(self.steps, self.values, width)

    def __len__(self) -> int:
        return len(self.steps)


class SeriesStore:
    """Metric series keyed by metric name (`train/loss`, `train/head1/w_entropy`, ...)."""

    def __init__(self) -> None:
        self._series: dict[str, MetricSeries] = {}

    def add(self, name: str, step: float, value: float | None) -> None:
        self._series.setdefault(name, MetricSeries()).append(step, value)

    def get(self, name: str) -> MetricSeries | None:
        return self._series.get(name)

    def names(self) -> list[str]:
        return sorted(self._series)

    def clear(self) -> None:
        self._series.clear()

    def __contains__(self, name: object) -> bool:
        return name in self._series

    def heads(self) -> list[int]:
        """The head indices that appear in names like `train/head2/ce`, ascending."""
        return sorted({int(m.group(1)) for n in self._series if (m := _HEAD.match(n))})


_HEAD = re.compile(r"^[a-z0-9_]+/head(\d+)/")


def pick_columns(n: int, width: int) -> list[int]:
    """Indices of at most `width` evenly spaced columns out of `n`, always including the first and the last."""
    if n <= width:
        return list(range(n))
    if width <= 1:
        return [n - 1]
    return sorted({round(i * (n - 1) / (width - 1)) for i in range(width)})


@dataclass
class HistHistory:
    """Per-head weight histograms over steps, as written by the trainer's `hist` lines (shared bin edges)."""

    edges: list[float] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    frames: list[list[list[float]]] = field(default_factory=list)
    """frames[i][head][bin]: counts at steps[i]."""

    def append(self, step: int, edges: list[float], heads: list[list[float]]) -> None:
        self.edges = edges
        self.steps.append(step)
        self.frames.append(heads)

    @property
    def n_heads(self) -> int:
        return len(self.frames[-1]) if self.frames else 0

    def columns(self, head: int, width: int) -> tuple[list[int], list[list[float]]]:
        """(steps, counts per bin) of at most `width` frames of one head, the latest always included."""
        picked = [i for i in pick_columns(len(self.frames), width) if head < len(self.frames[i])]
        return [self.steps[i] for i in picked], [self.frames[i][head] for i in picked]

    def latest(self, head: int) -> list[float]:
        return self.frames[-1][head] if self.frames and head < len(self.frames[-1]) else []

    def clear(self) -> None:
        self.edges, self.steps, self.frames = [], [], []


@dataclass(frozen=True)
class Blob:
    seq: int
    step: int
    kind: str
    payload: dict[str, Any]


@dataclass(frozen=True)
class FeedBatch:
    """New rows since the last fetch. `reset`: the stored stream was cut back (a resumed run), start over."""

    reset: bool
    points: list[Point]
    blobs: list[Blob]
    more: bool = False
    """A page limit was reached: fetch again at once."""


class MetricFeed:
    """Cursor over one run's stored metrics. Only one thread may call `fetch` at a time."""

    def __init__(
        self, *, engine: Engine, run_id: int, keep: Callable[[str], bool] | None = None, page: int = 20_000
    ) -> None:
        self.engine, self.run_id, self.keep, self.page = engine, run_id, keep, page
        self.point_cursor = self.blob_cursor = -1
        self.epoch: int | None = None

    def fetch(self) -> FeedBatch:
        """New points and blobs after the cursors; `reset` (start over) when the stored stream was cut back since
        the last fetch: its epoch changed (a resume), or it is shorter than the cursor."""
        run = store.get_run(engine=self.engine, run_id=self.run_id)
        epoch = 0 if run is None else run.metrics_epoch
        newest = store.last_seq(engine=self.engine, run_id=self.run_id)
        reset = newest < max(self.point_cursor, self.blob_cursor) or (
            self.epoch is not None and epoch != self.epoch
        )
        self.epoch = epoch
        if reset:
            self.point_cursor = self.blob_cursor = -1
        page = store.points_since(
            engine=self.engine, run_id=self.run_id, after_seq=self.point_cursor, limit=self.page
        )
        rows = page.points
        if rows:
            self.point_cursor = rows[-1][0]
        blobs = [
            Blob(b.seq, b.step, b.kind, b.payload)
            for b in store.metric_blobs_since(
                engine=self.engine, run_id=self.run_id, after_seq=self.blob_cursor
            )
        ]
        if blobs:
            self.blob_cursor = blobs[-1].seq
        points = rows if self.keep is None else [r for r in rows if self.keep(r[1])]
        return FeedBatch(reset=reset, points=points, blobs=blobs, more=page.more)


@dataclass
class RunData:
    """Everything the run screen has read so far; changed only on the UI thread by `apply`."""

    series: SeriesStore = field(default_factory=SeriesStore)
    hists: HistHistory = field(default_factory=HistHistory)
    tokens: Blob | None = None
    """The latest `top_tokens` line."""
    events: list[Blob] = field(default_factory=list)

    def apply(self, batch: FeedBatch) -> set[str]:
        """Add a batch; returns what changed among `points`, `hist`, `tokens`, `events` (all four on a reset)."""
        changed: set[str] = set()
        if batch.reset:
            self.series.clear()
            self.hists.clear()
            self.tokens, self.events = None, []
            changed = {"points", "hist", "tokens", "events"}
        for _, name, step, value in batch.points:
            self.series.add(name, step, value)
        if batch.points:
            changed.add("points")
        for blob in batch.blobs:
            data = blob.payload.get("data") or {}
            if blob.kind == "hist" and "heads" in data:
                self.hists.append(blob.step, list(data.get("edges", [])), data["heads"])
                changed.add("hist")
            elif blob.kind == "top_tokens" and "tokens" in data:
                self.tokens = blob
                changed.add("tokens")
            elif blob.kind == "event":
                self.events.append(blob)
                changed.add("events")
        return changed


class TextTail:
    """Complete new lines of a growing text file, read by byte offset; starts over if the file got shorter.
    The first read starts at most `first_bytes` before the end (a long log is not read whole)."""

    def __init__(self, path: Path, *, first_bytes: int = 64 * 1024) -> None:
        self.path, self.first_bytes = path, first_bytes
        self.offset: int | None = None
        self.found = False
        """Whether the last read found the file (a run's log lives on its worker's host)."""

    def read(self) -> tuple[bool, list[str]]:
        """(reset, lines): `reset` when the file was cut back since the last read."""
        try:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                reset = self.offset is not None and size < self.offset
                fresh = self.offset is None or reset
                start = max(0, size - self.first_bytes) if fresh or self.offset is None else self.offset
                fh.seek(start)
                chunk = fh.read()
        except FileNotFoundError:
            self.found = False
            return False, []
        self.found = True
        if fresh and start > 0:  # begin at a line boundary
            chunk = chunk[chunk.find(b"\n") + 1 :]
            start = size - len(chunk)
        end = chunk.rfind(b"\n") + 1  # a partial last line waits for its newline
        self.offset = start + end
        text = chunk[:end].decode("utf-8", errors="replace")
        # Progress bars redraw with carriage returns: only the last state of such a line is worth showing.
        return reset, [ln.rstrip("\r").rsplit("\r", 1)[-1] for ln in text.split("\n")[:-1]]
