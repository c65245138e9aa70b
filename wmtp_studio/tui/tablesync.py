"""Keep a DataTable in step with freshly polled rows while touching as little of it as possible.

Columns get explicit widths, measured here from the rows: DataTable measures auto-width columns only when idle and
does not re-render rows it already cached with the old widths, so a table whose own size stays fixed (height 1fr)
would show cells cut short. A column that needs more room rebuilds the table (rare: widths only grow).

A table computed whole (the compare screen's results and config diff) is shown whole instead: `fill`.
"""

from __future__ import annotations

from collections.abc import Sequence

from rich.cells import cell_len
from rich.text import Text
from textual.widgets import DataTable

from wmtp_studio.compare.export import Table, format_cell

ShownCell = str | Text
"""A cell as a DataTable shows it (the results tables' values are `export.Cell`)."""
Row = tuple[str, Sequence[ShownCell]]
"""A row key and its cells in column order (strings are shown as plain text, never as markup)."""


def sync_rows(table: DataTable[Text], columns: Sequence[tuple[str, str]], rows: Sequence[Row]) -> int:
    """Show `rows` under `columns` ((key, label) pairs). When the columns and the row keys (in order) are the ones
    shown, only the cells that changed are updated; otherwise the rows are rebuilt and the cursor stays on the row
    it was on. Returns the number of cells written."""
    texts = [(key, [c if isinstance(c, Text) else Text(c) for c in cells]) for key, cells in rows]
    cursor = current_key(table)
    _fit_columns(table, columns, texts)
    if [key.value for key in table.rows] == [key for key, _ in texts]:
        written = 0
        for key, cells in texts:
            for (column, _), old, new in zip(columns, table.get_row(key), cells, strict=True):
                if old != new:
                    table.update_cell(key, column, new)
                    written += 1
        return written
    table.clear()
    for key, cells in texts:
        table.add_row(*cells, key=key)
    if cursor is not None and cursor in table.rows:
        table.move_cursor(row=table.get_row_index(cursor), animate=False)
    return sum(len(cells) for _, cells in texts)


def _fit_columns(
    table: DataTable[Text], columns: Sequence[tuple[str, str]], rows: Sequence[tuple[str, list[Text]]]
) -> None:
    """(Re)create the columns when they differ from `columns` or a cell needs a wider one."""
    needed = [
        max([cell_len(label), *(cells[i].cell_len for _, cells in rows)])
        for i, (_, label) in enumerate(columns)
    ]
    shown = list(table.columns.values())
    same = [(str(c.key.value), c.label.plain) for c in shown] == list(columns)
    if same and all(n <= c.width for n, c in zip(needed, shown, strict=True)):
        return
    if same:  # grow only, so that columns do not jump back and forth
        needed = [max(n, c.width) for n, c in zip(needed, shown, strict=True)]
    table.clear(columns=True)  # and the rows: sync_rows adds them back
    for (key, label), width in zip(columns, needed, strict=True):
        table.add_column(label, key=key, width=width)


def current_key(table: DataTable[Text]) -> str | None:
    """The key of the row under the cursor (None when the table is empty)."""
    if not table.row_count or not table.is_valid_row_index(table.cursor_row):
        return None
    return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value


def fill(table: DataTable, data: Table) -> None:
    """Replace a DataTable's columns and rows with a Table's (column keys are their indices)."""
    table.clear(columns=True)
    for i, name in enumerate(data.columns):
        table.add_column(name, key=str(i))
    for row in data.rows:
        table.add_row(*(format_cell(c) for c in row))
