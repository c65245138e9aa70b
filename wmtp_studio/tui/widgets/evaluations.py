"""pass@k of one run per benchmark and k, with its 95% confidence interval and the sandbox tier it ran under."""

from __future__ import annotations

from collections.abc import Sequence

from rich.text import Text
from textual.widgets import DataTable

from wmtp_studio.models import Evaluation

COLUMNS = (
    ("benchmark", "benchmark"),
    ("k", "k"),
    ("pass@k", "pass"),
    ("95% CI", "ci"),
    ("problems", "problems"),
    ("isolation tier", "tier"),
)


def tier_of(protocol: dict[str, object]) -> str:
    """The sandbox isolation tier recorded with a result (several when the samples ran under more than one)."""
    tier = protocol.get("isolation_tier", "")
    return ", ".join(map(str, tier)) if isinstance(tier, list) else str(tier or "?")


class EvaluationTable(DataTable[Text]):
    """One row per (benchmark, k); rebuilt only when the stored evaluations change."""

    shown: tuple[int | None, ...] = ()
    """The ids of the evaluations in the table."""

    def on_mount(self) -> None:
        self.cursor_type = "row"
        for label, key in COLUMNS:
            self.add_column(label, key=key)

    def show(self, evaluations: Sequence[Evaluation]) -> None:
        ids = tuple(e.id for e in evaluations)
        if ids == self.shown:
            return
        self.shown = ids
        self.clear()
        for e in evaluations:
            cells = (
                e.benchmark,
                str(e.k),
                f"{e.pass_at_k:.3f}",
                f"[{e.ci_low:.3f}, {e.ci_high:.3f}]",
                str(e.n_problems),
                tier_of(e.protocol),
            )
            self.add_row(*map(Text, cells), key=str(e.id))  # Text: brackets are not markup
