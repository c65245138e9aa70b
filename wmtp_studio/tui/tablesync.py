"""Keep a DataTable in step with freshly polled rows while touching as little of it as possible."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

Cell = str | Text
Row = tuple[str, Sequence[Cell]]
"""A row key and its cells in column order."""


def sync_rows(table: DataTable[Cell], rows: Sequence[Row]) -> int:
    """Show `rows` in `table`. When the keys are the ones shown, in the same order, only the cells that changed
    are updated; otherwise the rows are rebuilt and the cursor stays on the row it was on. Returns the number of
    cells written."""
    shown = [key.value for key in table.rows]
    if shown == [key for key, _ in rows]:
        columns = list(table.columns)
        written = 0
        for key, cells in rows:
            for column, old, new in zip(columns, table.get_row(key), cells, strict=True):
                if old != new:
                    table.update_cell(key, column, new)
                    written += 1
        return written
    cursor = current_key(table)
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    if cursor is not None and cursor in table.rows:
        table.move_cursor(row=table.get_row_index(cursor), animate=False)
    return sum(len(cells) for _, cells in rows)


def current_key(table: DataTable[Cell]) -> str | None:
    """The key of the row under the cursor (None when the table is empty)."""
    if not table.row_count or not table.is_valid_row_index(table.cursor_row):
        return None
    return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
