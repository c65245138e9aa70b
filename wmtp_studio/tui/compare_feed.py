"""What the compare screen reads from the store on each poll: its runs, their new metric rows (one cursor per run,
`series.MetricFeed`) and their evaluations; and the one-paragraph answer of a finished comparison set (Δ and p of
each row against the baseline), which the screen shows and the dashboard announces when a set finishes while it is
open (`SetWatcher`). Called from one thread worker at a time; no Textual here."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlalchemy.engine import Engine

from wmtp_studio import store
from wmtp_studio.compare.export import Interval, PValue, Series, format_p
from wmtp_studio.models import FINISHED_STATUSES, Evaluation, Run

if TYPE_CHECKING:
    from wmtp_studio.compare.tables import CompareTables
from wmtp_studio.series import FeedBatch, MetricFeed, SeriesStore


@dataclass
class CompareRead:
    """What one poll read: the runs (by id), their new metric rows and their evaluations."""

    runs: list[Run]
    set_id: int | None = None
    """The comparison set read (the latest one when the feed follows it), or None for picked runs."""
    set_name: str = ""
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
    more after it finished, then only its status is watched (a retried run is read again). With `follow_latest`
    (nothing picked) the set is `latest_set`'s, looked up on every read: the cursors start over when it changes."""

    def __init__(
        self,
        *,
        engine: Engine,
        comparison_set_id: int | None,
        run_ids: Sequence[int],
        follow_latest: bool = False,
    ) -> None:
        self.engine, self.set_id, self.run_ids = engine, comparison_set_id, list(run_ids)
        self.follow_latest = follow_latest
        self._set_name: str | None = None
        self._feeds: dict[int, MetricFeed] = {}
        self._evaluations: dict[int, list[Evaluation]] = {}
        self._settled: set[int] = set()

    def _find_set(self) -> None:
        """The set to read: the latest (when following it), and its name (read once)."""
        if self.follow_latest:
            latest = latest_set(store.comparison_set_progress(engine=self.engine))
            if latest is not None and latest.id != self.set_id:
                self.set_id, self._set_name = latest.id, latest.name
                self._feeds, self._evaluations, self._settled = {}, {}, set()
        elif self.set_id is not None and self._set_name is None:
            cset = store.get_comparison_set(engine=self.engine, comparison_set_id=self.set_id)
            self._set_name = cset.name if cset is not None else ""

    def read(self) -> CompareRead:
        self._find_set()
        if self.set_id is not None:
            runs = store.list_runs(engine=self.engine, comparison_set_id=self.set_id, limit=1000)
        else:
            runs = [r for i in self.run_ids if (r := store.get_run(engine=self.engine, run_id=i)) is not None]
        snap = CompareRead(sorted(runs, key=lambda r: r.id or 0), self.set_id, self._set_name or "")
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


def latest_set(progress: Sequence[store.SetProgress]) -> store.SetProgress | None:
    """The set the compare screen opens on: the newest finished one, else the newest (`progress` newest first)."""
    return next((p for p in progress if p.done), progress[0] if progress else None)


QUICKSTART = "quickstart"
"""The quickstart's comparison set is named after its fine-tuning recipe (wmtp_studio/quickstart/finetune.yaml)."""


def set_title(set_id: int, name: str) -> str:
    return f"quickstart (set {set_id})" if name == QUICKSTART else f"set {set_id} ({name})"


def set_summary(set_id: int, name: str, runs: Sequence[Run], tables: CompareTables) -> str:
    """The answer of a comparison set in a few lines: per benchmark, the baseline's pass@k and every other row's
    Δ against it with its p (and, with several seeds, whether Δ is within seed noise); taken from the results
    table, so it says exactly what the table says. While runs are left: how many finished."""
    title, finished = set_title(set_id, name), [r for r in runs if r.status in FINISHED_STATUSES]
    if len(finished) < len(runs) or not runs:
        return f"{title}: {len(finished)} of {len(runs)} runs finished; Δ and p appear when all have"
    lost = [r for r in runs if r.status != "succeeded"]
    head = f"{title} finished" + (f" ({len(lost)} of {len(runs)} runs did not succeed)" if lost else "")
    table, base = tables.results, tables.baseline
    columns, lines = list(table.columns), [head]
    # one run per algorithm (one seed): rows are runs, named here by their algorithm
    algorithm_of = {f"#{r.id} {r.name}": r.algorithm for r in runs}
    if len(set(algorithm_of.values())) < len(runs):
        algorithm_of = {}
    for column in (c for c in columns if c.startswith("Δ ") and not c.startswith("Δ seeds ")):
        metric = column[2:]
        delta, p, value = columns.index(column), columns.index(f"p {metric}"), columns.index(metric)
        noise = columns.index(f"seed noise {metric}") if f"seed noise {metric}" in columns else None
        base_value = table.rows[base][value]
        shown = f"{base_value.value:.3f}" if isinstance(base_value, Interval) else "no result"
        others = []
        for i, row in enumerate(table.rows):
            if i == base:
                continue
            d, pv = row[delta], row[p]
            if not isinstance(d, Interval):
                others.append(f"{algorithm_of.get(str(row[0]), row[0])} no result")
                continue
            extra = f", {row[noise]}" if noise is not None and row[noise] else ""
            p_text = format_p(pv.value) if isinstance(pv, PValue) else "– (every problem ties)"
            others.append(f"{algorithm_of.get(str(row[0]), row[0])} {d.value:+.3f} (p {p_text}{extra})")
        baseline = algorithm_of.get(tables.labels[base], tables.labels[base])
        lines.append(f"{metric}: {baseline} {shown}; Δ vs {baseline}: " + ", ".join(others))
    if len(lines) == 1:
        lines.append("no evaluations to compare")
    return "\n".join(lines)


def read_set_summary(engine: Engine, progress: store.SetProgress) -> str:
    """`set_summary` of a stored set, against its default baseline (the ntp row)."""
    from wmtp_studio.compare.tables import (
        compare_tables,
    )  # scipy: seconds to import, only once a set finished

    runs = sorted(
        store.list_runs(engine=engine, comparison_set_id=progress.id, limit=1000), key=lambda r: r.id or 0
    )
    evaluations = {r.id or 0: store.list_evaluations(engine=engine, run_id=r.id or 0) for r in runs}
    tables = compare_tables(runs, evaluations, None, is_set=True)
    return set_summary(progress.id, progress.name, runs, tables)


class SetWatcher:
    """The comparison sets that finished since the last look, as `set_summary` paragraphs. The first look only
    notes which sets are finished already: the dashboard announces what finishes while it is open."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._done: set[int] | None = None

    def finished(self) -> list[str]:
        progress = store.comparison_set_progress(engine=self.engine)
        done = {p.id for p in progress if p.done}
        new = (
            [] if self._done is None else [p for p in reversed(progress) if p.done and p.id not in self._done]
        )
        self._done = done
        return [read_set_summary(self.engine, p) for p in new]
