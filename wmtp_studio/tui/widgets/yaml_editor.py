"""The recipe editor: a YAML text area that never traps the keyboard.

Tab and shift+tab move the focus on and back, as in every other widget of the dashboard, and Escape leaves the
editor; inside it every printable key is text (digits included, so the mode keys 1-4 only work outside it).
Indentation has keys of its own, vim's insert-mode pair: ctrl+t indents the lines under the cursor or selection
by one level, ctrl+d takes one level off; Enter keeps the current line's indentation (one level more after a
`key:` that opens a block).
"""

from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.widgets import TextArea

INDENT = 2
"""Spaces per indentation level: the recipes' own YAML style."""


class YamlEditor(TextArea):
    BINDINGS = [
        Binding("escape", "leave", "Leave editor"),
        Binding("ctrl+t", "indent", "Indent"),
        Binding("ctrl+d", "dedent", "Dedent"),
    ]

    def __init__(self, text: str = "", *, id: str | None = None) -> None:
        super().__init__(
            text,
            language="yaml",
            theme="monokai",
            soft_wrap=False,
            tab_behavior="focus",
            show_line_numbers=True,
            id=id,
        )
        self.indent_width = INDENT

    def action_leave(self) -> None:
        self.screen.focus_next()

    def _rows(self) -> range:
        start, end = sorted((self.selection.start[0], self.selection.end[0]))
        return range(start, end + 1)

    def action_indent(self) -> None:
        for row in self._rows():
            self.insert(" " * INDENT, (row, 0))

    def action_dedent(self) -> None:
        for row in self._rows():
            line = self.document.get_line(row)
            spaces = len(line) - len(line.lstrip(" "))
            if spaces:
                self.delete((row, 0), (row, min(INDENT, spaces)))

    async def _on_key(self, event: events.Key) -> None:
        """Enter starts the new line at the current line's indentation, one level deeper after `key:` (Textual's
        documented way to change what a key types: handle it here and prevent the default)."""
        if event.key == "enter" and not self.read_only:
            event.stop()
            event.prevent_default()
            row = self.cursor_location[0]
            line = self.document.get_line(row)[: self.cursor_location[1]]
            indent = len(line) - len(line.lstrip(" ")) + (INDENT if line.rstrip().endswith(":") else 0)
            start, end = sorted(self.selection)
            self.replace("\n" + " " * indent, start, end, maintain_selection_offset=False)
            return
        await super()._on_key(event)
