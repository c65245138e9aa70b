"""What the compare screen exports (`e`): the results table as Markdown, LaTeX or CSV, or the chart of the
selected metric as PNG or SVG, to a file under the studio home named after the set or the picked runs."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from wmtp_studio.compare.export import ExportFormat, Series, Table, export_path, render

EXPORTS: tuple[tuple[ExportFormat, str], ...] = (
    ("md", "Results table as Markdown"),
    ("tex", "Results table as LaTeX (booktabs)"),
    ("csv", "Results table as CSV"),
    ("png", "Chart of the selected metric as PNG"),
    ("svg", "Chart of the selected metric as SVG"),
)


def export_target(
    home: Path, set_id: int | None, run_ids: Sequence[int], fmt: ExportFormat, when: datetime
) -> Path:
    """Where an export goes: named after the comparison set, else after the picked runs."""
    label = f"set{set_id}" if set_id is not None else "-".join(["runs", *map(str, run_ids)])
    return export_path(home, label, fmt, when)


def write_export_file(fmt: ExportFormat, path: Path, table: Table, series: list[Series], title: str) -> None:
    """Render the table or the chart in `fmt` and write it to `path`; raises OSError."""
    data = render(fmt, table=table, series=series, title=title, ylabel="value")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
