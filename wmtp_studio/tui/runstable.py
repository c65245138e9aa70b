"""The runs table's columns and rows: which columns fit the terminal, each run's cells, and group header rows.

Columns have a rank (0 = always shown) and a widest width; the widest columns that fit are kept, lowest rank
first, so that at 120 columns every column up to `worker` is shown whole and wider terminals add the rest.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from rich.cells import cell_len
from rich.text import Text
from sqlalchemy.engine import Engine

from wmtp_studio import store
from wmtp_studio.store import RunOverview
from wmtp_studio.tui.runcells import (
    RATE_LINES,
    RATE_METRICS,
    duration,
    eta_seconds,
    failure_reason,
    group_of,
    progress_bar,
    seconds_per_step,
    sort_value,
    status_text,
)
from wmtp_studio.tui.tablesync import Row, ShownCell


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    """The header; also what the title says the table is sorted by."""
    rank: int
    """0: always shown; higher ranks are dropped first when the terminal is narrow."""
    widest: int
    """Cells are cut (with an ellipsis) to this many columns."""


COLUMNS = (  # display order
    Column("id", "id", 0, 5),
    Column("name", "name", 0, 26),
    Column("status", "status", 0, 10),
    Column("progress", "progress", 0, 10),
    Column("eta", "ETA", 1, 7),
    Column("loss", "loss", 1, 7),
    Column("pass1", "pass@1", 1, 6),
    Column("algorithm", "algorithm", 2, 12),
    Column("prio", "priority", 2, 8),
    Column("worker", "worker", 3, 14),
    Column("reason", "failed because", 4, 60),
    Column("step", "step", 5, 11),
    Column("seed", "seed", 6, 4),
    Column("set", "set", 6, 16),
)
LABELS = {c.key: c.label for c in COLUMNS}
PADDING = 2
"""DataTable's cell padding: one column on each side."""
MIN_REASON = 16
"""The reason column is shown cut to the room left, but not narrower than this."""


def arrange(
    overviews: Iterable[RunOverview],
    needle: str,
    column: str,
    reverse: bool,
    group: str | None,
    per_step: Mapping[int, float],
) -> list[RunOverview]:
    """The runs matching the filter (name, algorithm or status), sorted by `column`, grouped blocks first."""
    needle = needle.strip().lower()
    shown = [
        o
        for o in overviews
        if not needle or any(needle in t.lower() for t in (o.run.name, o.run.algorithm, o.run.status))
    ]
    shown.sort(key=lambda o: sort_value(o, column, per_step.get(o.run.id or 0)), reverse=reverse)
    if group is not None:
        shown.sort(key=lambda o: group_of(o, group))  # stable: sorted blocks, sorted within
    return shown


def run_cells(o: RunOverview, *, marked: bool, per_step: float | None) -> dict[str, ShownCell]:
    r = o.run
    eta = eta_seconds(r, per_step)
    return {
        "id": ("●" if marked else "") + str(r.id),
        "name": r.name,
        "status": status_text(r),
        "progress": progress_bar(r),
        "eta": "-" if eta is None else duration(eta),
        "loss": "-" if o.loss is None else f"{o.loss:.4f}",
        "pass1": "-" if o.pass_at_1 is None else f"{o.pass_at_1:.3f}",
        "algorithm": r.algorithm,
        "prio": str(r.priority),
        "worker": r.lease_owner or "-",
        "reason": Text(failure_reason(r) or "", style="red"),
        "step": f"{r.last_step}/{r.total_steps}",
        "seed": str(r.seed),
        "set": o.comparison_set or "-",
    }


def fit_columns(rows: Sequence[Mapping[str, ShownCell]], width: int) -> list[tuple[Column, int]]:
    """The columns to show in `width` terminal columns, each with its width, in display order."""
    need = {
        c.key: min(c.widest, max([cell_len(c.label), *(_len(row[c.key]) for row in rows)])) for c in COLUMNS
    }
    if not any(_len(row["reason"]) for row in rows):
        need.pop("reason")
    kept: dict[str, int] = {}
    used = 0
    for c in sorted(COLUMNS, key=lambda c: c.rank):  # stable: display order within a rank
        if c.key not in need:
            continue
        w = need[c.key]
        if c.key == "reason":
            w = min(w, width - used - PADDING)
            if w < min(MIN_REASON, need[c.key]):
                continue
        if used + w + PADDING <= width or c.rank == 0:
            kept[c.key], used = w, used + w + PADDING
    return [(c, kept[c.key]) for c in COLUMNS if c.key in kept]


def table_rows(
    cells: Sequence[tuple[str, Mapping[str, ShownCell]]], columns: Sequence[tuple[Column, int]]
) -> list[Row]:
    """(key, cells) rows of the chosen columns, each cell cut to its column's width."""
    return [(key, [_cut(row[c.key], w) for c, w in columns]) for key, row in cells]


def read_rates(engine: Engine, rows: Sequence[RunOverview]) -> dict[int, float]:
    """Recent wall seconds per step of the running runs whose trainer reports its timing (runcells)."""
    rates: dict[int, float] = {}
    for o in rows:
        if o.run.status == "running" and o.run.id is not None:
            got = store.latest_points(engine=engine, run_id=o.run.id, names=RATE_METRICS, limit=RATE_LINES)
            seen, per_s = got[RATE_METRICS[0]], got[RATE_METRICS[1]]
            if [s for s, _ in seen] == [s for s, _ in per_s]:  # the same train lines
                rate = seconds_per_step([s for s, _ in seen], [v for _, v in seen], [v for _, v in per_s])
                if rate is not None:
                    rates[o.run.id] = rate
    return rates


def with_headers(
    groups: Sequence[str], rows: Sequence[Row], columns: Sequence[tuple[Column, int]]
) -> list[Row]:
    """`rows` (sorted by group; `groups` holds each one's) with a header row above each group."""
    out: list[Row] = []
    for i, (value, row) in enumerate(zip(groups, rows, strict=True)):
        if i == 0 or groups[i - 1] != value:
            out.append(header_row(value, groups.count(value), columns))
        out.append(row)
    return out


def header_label(value: str, count: int) -> str:
    return f"▾ {value} · {count} run{'s' if count != 1 else ''}"


def header_row(value: str, count: int, columns: Sequence[tuple[Column, int]]) -> Row:
    """A separator row above a group: its value and size in the name column (the title says what the groups
    are). Its key starts with `group:`, so it is never taken for a run."""
    label = _cut(Text(header_label(value, count), style="bold"), COLUMNS[1].widest)
    return (f"group:{value}", [label if c.key == "name" else Text("") for c, _ in columns])


def _len(cell: ShownCell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


def _cut(cell: ShownCell, width: int) -> ShownCell:
    if _len(cell) <= width:
        return cell
    text = cell.copy() if isinstance(cell, Text) else Text(cell)
    text.truncate(width, overflow="ellipsis")
    return text
