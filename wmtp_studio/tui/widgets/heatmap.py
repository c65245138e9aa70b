"""A heatmap of one head's weight histograms over time: bins up the side, one column per histogram step."""

from __future__ import annotations

import math

from rich.color import Color
from rich.color_triplet import ColorTriplet
from rich.style import Style
from rich.text import Text
from textual.app import RenderResult
from textual.events import Resize
from textual.widget import Widget

from wmtp_studio.series import HistHistory

LOW, HIGH = ColorTriplet(20, 30, 60), ColorTriplet(250, 210, 60)
AXIS = 7
"""Columns taken by the bin labels on the left."""


def shade(fraction: float) -> Color:
    """A colour from dark blue (0) to yellow (1); a square root spreads the small counts apart."""
    f = math.sqrt(min(max(fraction, 0.0), 1.0))
    return Color.from_rgb(*(round(lo + (hi - lo) * f) for lo, hi in zip(LOW, HIGH, strict=True)))


def merge_bins(counts: list[float], rows: int) -> list[float]:
    """Sum neighbouring bins so that at most `rows` remain."""
    group = max(1, math.ceil(len(counts) / max(rows, 1)))
    return [sum(counts[i : i + group]) for i in range(0, len(counts), group)]


class Heatmap(Widget):
    """Each column is the weight histogram at one step, normalised to its own largest bin."""

    DEFAULT_CSS = """
    Heatmap { height: 1fr; min-height: 6; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.hists = HistHistory()
        self.head = 0
        self.steps: list[int] = []
        """The steps of the columns shown (at most one per terminal column)."""
        self._columns: list[list[float]] = []

    def show(self, hists: HistHistory, head: int) -> None:
        self.hists, self.head = hists, head
        self._layout()

    def on_resize(self, event: Resize) -> None:
        self._layout()

    def _layout(self) -> None:
        width = max((self.size.width or 80) - AXIS, 1)
        self.steps, self._columns = self.hists.columns(self.head, width)
        self.refresh()

    def render(self) -> RenderResult:
        if not self.steps:
            return Text("no weight histograms yet", style="dim")
        rows = max(self.size.height - 2, 1)  # title and step axis
        cols = [merge_bins(c, rows) for c in self._columns]
        n_rows = len(cols[0])
        group = max(1, math.ceil(len(self._columns[0]) / max(rows, 1)))
        edges = self.hists.edges
        cell = max(1, min(6, (max(self.size.width, AXIS + 1) - AXIS) // len(cols)))
        out = Text(f"head {self.head}: weight histogram (rows) per step (columns)\n")
        for r in reversed(range(n_rows)):
            edge = edges[r * group] if r * group < len(edges) else float("nan")
            out.append(f"{edge:>6.2f} ", style="dim")
            for col in cols:
                peak = max(col) or 1.0
                out.append(" " * cell, style=Style(bgcolor=shade(col[r] / peak)))
            out.append("\n")
        first, last = f"step {self.steps[0]}", str(self.steps[-1])
        gap = max(1, cell * len(cols) - len(first) - len(last))
        out.append(" " * AXIS + first + " " * gap + last, style="dim")
        return out
