"""What the compare screen reads from the store on each poll: its runs, their new metric rows (one cursor per run,
`series.MetricFeed`) and their evaluations. Called from one thread worker at a time; no Textual here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.engine import Engine

from wmtp_studio import store
from wmtp_studio.models import FINISHED_STATUSES, Evaluation, Run
from wmtp_studio.tui.export import Series
from wmtp_studio.tui.series import FeedBatch, MetricFeed, SeriesStore


@dataclass
class Snapshot:
    """What one poll read: the runs (by id), their new metric rows and their evaluations."""

    runs: list[Run]
    batches: dict[int, list[FeedBatch]] = field(default_factory=dict)
    evaluations: dict[int, list[Evaluation]] = field(default_factory=dict)

    def evaluation_ids(self) -> set[int | None]:
        return {e.id for evals in self.evaluations.values() for e in evals}

    def add_points(self, series: dict[int, SeriesStore]) -> bool:
        """Add the new rows to each run's series (a run that resumed from a checkpoint starts over); whether
        anything changed."""
        changed = False
        for rid, batches in self.batches.items():
            store_ = series.setdefault(rid, SeriesStore())
            for batch in batches:
                if batch.reset:
                    store_.clear()
                for _, name, step, value in batch.points:
                    store_.add(name, step, value)
                changed |= batch.reset or bool(batch.points)
        return changed


class CompareFeed:
    """The runs of a comparison set, or picked runs, with a metric cursor per run. A finished run is read once
    more after it finished, then only its status is watched (a retried run is read again)."""

    def __init__(self, *, engine: Engine, comparison_set_id: int | None, run_ids: Sequence[int]) -> None:
        self.engine, self.set_id, self.run_ids = engine, comparison_set_id, list(run_ids)
        self._feeds: dict[int, MetricFeed] = {}
        self._evaluations: dict[int, list[Evaluation]] = {}
        self._settled: set[int] = set()

    def read(self) -> Snapshot:
        if self.set_id is not None:
            runs = store.list_runs(engine=self.engine, comparison_set_id=self.set_id, limit=1000)
        else:
            runs = [r for i in self.run_ids if (r := store.get_run(engine=self.engine, run_id=i)) is not None]
        snap = Snapshot(runs=sorted(runs, key=lambda r: r.id or 0))
        for run in snap.runs:
            rid, finished = run.id or 0, run.status in FINISHED_STATUSES
            if not (finished and rid in self._settled):
                feed = self._feeds.setdefault(rid, MetricFeed(engine=self.engine, run_id=rid))
                batches = [feed.fetch()]
                while batches[-1].more:  # a long run's first load comes in pages
                    batches.append(feed.fetch())
                snap.batches[rid] = batches
                self._evaluations[rid] = store.list_evaluations(engine=self.engine, run_id=rid)
            snap.evaluations[rid] = self._evaluations[rid]
            if finished:
                self._settled.add(rid)
            else:
                self._settled.discard(rid)
        return snap


def chart_series(runs: Sequence[Run], series: dict[int, SeriesStore], names: Sequence[str]) -> list[Series]:
    """Full-resolution curves of `names` for each run (labelled by run name, and metric when several)."""
    return [
        Series(
            str(run.name or run.id) + (f" {name}" if len(names) > 1 else ""),
            list(zip(s.steps, s.values, strict=True)),
        )
        for run in runs
        for name in names
        if (s := series.get(run.id or 0, SeriesStore()).get(name))
    ]
