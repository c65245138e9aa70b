"""Exports of the comparison (compare screen, report, MLflow): a results table as Markdown, LaTeX or CSV, and
overlaid curves as PNG or SVG.

Pure functions from typed values to text or bytes; the screen only picks a path and writes what they return.
Matplotlib is imported lazily (only an export pays for it) and drawn on its own `Figure` with the Agg canvas,
so no pyplot state or GUI backend is involved and it is safe from a worker thread.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

TABLE_FORMATS = ("md", "tex", "csv")
CHART_FORMATS = ("png", "svg")
ExportFormat = Literal["md", "tex", "csv", "png", "svg"]


@dataclass(frozen=True)
class Interval:
    """An estimate with its 95 % CI; `low`/`high` are None where no CI could be computed."""

    value: float
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class PValue:
    """A two-sided p-value, the test that gave it, and (exact tests over seeds) the smallest p attainable."""

    value: float
    test: str
    floor: float | None = None


Cell = str | int | float | Interval | PValue | None
"""None is shown as an en dash (no value)."""


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: tuple[tuple[Cell, ...], ...]
    note: str = ""
    """A footnote explaining the columns (Markdown: a paragraph under the table; LaTeX: the caption)."""


@dataclass(frozen=True)
class Series:
    """One run's curve: (step, value) points in step order."""

    label: str
    points: Sequence[tuple[float, float]] = field(default_factory=tuple)


def format_number(value: float) -> str:
    """Three decimals; small non-zero values (p-values) in scientific notation so they do not read as 0."""
    if value != 0 and abs(value) < 0.001:
        return f"{value:.1e}"
    return f"{value:.3f}"


def format_p(value: float) -> str:
    """Three significant digits: 0.0625, 0.0768, 0.25, 1.91e-06."""
    return f"{value:.3g}"


def format_cell(cell: Cell) -> str:
    """How a cell reads in the TUI, Markdown and LaTeX: `0.450 [0.300, 0.600]`, `0.0768 (exact sign test)`,
    `0.25 (exact Wilcoxon signed-rank; min 0.25)`, `–` for no value."""
    if cell is None:
        return "–"
    if isinstance(cell, PValue):
        floor = "" if cell.floor is None else f"; min {format_p(cell.floor)}"
        return f"{format_p(cell.value)} ({cell.test}{floor})"
    if isinstance(cell, Interval):
        if cell.low is None or cell.high is None:
            return format_number(cell.value)
        return f"{format_number(cell.value)} [{format_number(cell.low)}, {format_number(cell.high)}]"
    if isinstance(cell, float):
        return format_number(cell)
    return str(cell)


def _numeric(table: Table, index: int) -> bool:
    """A column is right-aligned when it holds numbers (every non-empty cell is one)."""
    cells = [row[index] for row in table.rows if row[index] is not None]
    return bool(cells) and all(isinstance(c, int | float | Interval | PValue) for c in cells)


def to_markdown(table: Table) -> str:
    """A GitHub-flavoured Markdown table (numbers right-aligned), then the note as a paragraph."""

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rules = ["---:" if _numeric(table, i) else "---" for i in range(len(table.columns))]
    lines = [line(table.columns), "|" + "|".join(rules) + "|"]
    lines += [line([format_cell(c) for c in row]) for row in table.rows]
    if table.note:
        lines += ["", table.note]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "–": "--",
    "Δ": r"$\Delta$",
    "±": r"$\pm$",
}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters (and spell the few non-ASCII symbols we use in LaTeX)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs `table` environment (needs `\\usepackage{booktabs}`); the note becomes the caption."""
    spec = "".join("r" if _numeric(table, i) else "l" for i in range(len(table.columns)))

    def line(cells: Sequence[str]) -> str:
        return " & ".join(latex_escape(c) for c in cells) + r" \\"

    lines = [r"\begin{table}[t]", r"\centering", rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
    lines += [line(table.columns), r"\midrule"]
    lines += [line([format_cell(c) for c in row]) for row in table.rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.note:
        lines.append(rf"\caption{{{latex_escape(table.note)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def to_csv(table: Table) -> str:
    """CSV for analysis: full-precision numbers, an interval column split into `<col>`, `<col> low`,
    `<col> high`, a p-value column into `<col>`, `<col> test`, `<col> min`, and empty cells for no value. The
    note is not included."""
    split = [_parts(table, i) for i in range(len(table.columns))]
    header: list[str] = []
    for name, parts in zip(table.columns, split, strict=True):
        header += [name, *(f"{name} {part}" for part in parts)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for row in table.rows:
        cells: list[str] = []
        for cell, parts in zip(row, split, strict=True):
            if isinstance(cell, Interval):
                cells += [_raw(cell.value), _raw(cell.low), _raw(cell.high)]
            elif isinstance(cell, PValue):
                cells += [_raw(cell.value), cell.test, _raw(cell.floor)]
            else:
                cells += [_raw(cell), *("" for _ in parts)]
        writer.writerow(cells)
    return out.getvalue()


def _parts(table: Table, index: int) -> tuple[str, ...]:
    """The extra CSV columns of a column: ("low", "high") for intervals, ("test", "min") for p-values."""
    cells = [row[index] for row in table.rows]
    if any(isinstance(c, Interval) for c in cells):
        return ("low", "high")
    if any(isinstance(c, PValue) for c in cells):
        return ("test", "min")
    return ()


def _raw(cell: str | int | float | None) -> str:
    if cell is None:
        return ""
    return repr(cell) if isinstance(cell, float) else str(cell)


def chart_image(
    series: Sequence[Series], *, fmt: Literal["png", "svg"], title: str, ylabel: str, xlabel: str = "step"
) -> bytes:
    """The curves overlaid on one matplotlib figure (one colour per series, legend = labels), as PNG or SVG."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=120, layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for one in series:
        axes.plot([p[0] for p in one.points], [p[1] for p in one.points], label=one.label, linewidth=1.5)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(alpha=0.3)
    if series:
        axes.legend(fontsize="small")
    buffer = io.BytesIO()
    # No creation date and fixed element ids: the same curves give the same bytes.
    metadata: dict[str, str | None] = {"Date": None} if fmt == "svg" else {}
    with rc_context({"svg.hashsalt": "wmtp-studio"}):
        figure.savefig(buffer, format=fmt, metadata=metadata)
    return buffer.getvalue()


def export_path(home: Path, label: str, fmt: ExportFormat, when: datetime) -> Path:
    """`<home>/exports/compare-<label>-<YYYYmmdd-HHMMSS>.<fmt>` (label e.g. `set3` or `runs-4-5-6`)."""
    return home / "exports" / f"compare-{label}-{when:%Y%m%d-%H%M%S}.{fmt}"


def render(fmt: ExportFormat, *, table: Table, series: Sequence[Series], title: str, ylabel: str) -> bytes:
    """The bytes of one export: the results table (md, tex, csv) or the curves (png, svg)."""
    match fmt:
        case "md":
            return to_markdown(table).encode()
        case "tex":
            return to_latex(table).encode()
        case "csv":
            return to_csv(table).encode()
        case "png" | "svg":
            return chart_image(series, fmt=fmt, title=title, ylabel=ylabel)
