"""The samples of one evaluation (from its samples.jsonl): a table, failures first, and the selected one's code and
why it failed (the failed assert with expected and got, the exception, the limit hit, the end of its stderr)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Group
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Label, Static

import wmtp_studio.rundir.results as evalfiles
from wmtp_studio.errors import StudioError
from wmtp_studio.models import Evaluation
from wmtp_studio.rundir.results import SampleVerdict

MAX_SAMPLES = 20_000  # rows shown; a samples file is read up to this many lines


def read_samples(path: Path) -> list[SampleVerdict]:
    """The verdicts of a samples.jsonl, failed ones first (file order otherwise); raises OSError/ValueError."""
    return sorted(evalfiles.read_samples(path, limit=MAX_SAMPLES), key=lambda v: v.passed)


def find_samples(protocol: dict[str, Any], run_dir: Path, benchmark: str) -> Path | None:
    """The evaluation's samples.jsonl: as recorded with it, else (evaluations stored before the path was) the one
    beside the run's `eval/*/results.json` for the same benchmark."""
    if isinstance(protocol.get("samples"), str):
        return Path(protocol["samples"])
    for out_dir in sorted(p.parent for p in run_dir.glob(f"{evalfiles.EVAL}/*/{evalfiles.RESULTS}")):
        try:
            if evalfiles.read_results(out_dir).benchmark == benchmark:
                return out_dir / evalfiles.SAMPLES
        except (OSError, StudioError):
            continue
    return None


def load_samples(evaluation: Evaluation, run_dir: Path) -> tuple[str, list[SampleVerdict]]:
    """An evaluation's samples and the caption saying where they came from, or why there are none."""
    caption = f"{evaluation.benchmark} (k={evaluation.k})"
    path = find_samples(evaluation.protocol, run_dir, evaluation.benchmark)
    if path is None:
        return f"{caption}: no samples file found", []
    try:
        samples = read_samples(path)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid JSON lines"
        return f"{caption}: {path}: {reason}", []
    return f"{caption}, {path}", samples


def why(sample: SampleVerdict) -> str:
    """One line: why the sample failed ("" when it passed)."""
    if sample.passed:
        return ""
    parts = [sample.detail or sample.status]
    if sample.expected or sample.got:
        parts.append(f"expected {sample.expected}, got {sample.got}")
    if sample.exception and sample.exception not in parts[0]:
        parts.append(sample.exception)
    return "; ".join(p for p in parts if p)


class SamplesView(Vertical):
    """`show(path)` fills the table; highlighting a row shows that sample below it."""

    DEFAULT_CSS = """
    SamplesView { height: 2fr; }
    SamplesView #samples-caption { padding: 0 1; color: $text-muted; }
    SamplesView DataTable { height: 1fr; }
    SamplesView VerticalScroll { height: 1fr; border-top: solid $panel; }
    SamplesView #sample-detail { padding: 0 1; }
    """

    samples: list[SampleVerdict] = []

    def compose(self) -> ComposeResult:
        yield Label("select an evaluation to see its samples", id="samples-caption", markup=False)
        yield DataTable(id="samples-table", cursor_type="row")
        with VerticalScroll():
            yield Static("", id="sample-detail", markup=False)

    def on_mount(self) -> None:
        table = self.query_one("#samples-table", DataTable)
        for label in ("task", "#", "status", "why"):
            table.add_column(label, key=label)

    def show(self, caption: str, samples: list[SampleVerdict]) -> None:
        self.samples = samples
        failed = sum(not s.passed for s in samples)
        self.query_one("#samples-caption", Label).update(
            f"{caption}: {len(samples)} samples, {failed} failed" if samples else caption
        )
        table = self.query_one("#samples-table", DataTable)
        table.clear()
        for i, s in enumerate(samples):
            cells = (s.task_id, str(s.index), s.status, why(s)[:120])
            table.add_row(*map(Text, cells), key=str(i))
        self.query_one("#sample-detail", Static).update("")
        if samples:
            self.show_sample(0)

    def show_sample(self, i: int) -> None:
        s = self.samples[i]
        head = Text(f"{s.task_id} #{s.index}  {s.status}", style="bold")
        parts: list[Any] = [head]
        if not s.passed:
            parts.append(Text(why(s)))
        if s.output_truncated:
            parts.append(Text("its output went past the cap (the rest was dropped)", style="dim"))
        parts.append(Syntax(s.completion, "python", line_numbers=False, word_wrap=True))
        if s.stderr:
            parts += [Text("stderr (end):", style="dim"), Text(s.stderr)]
        self.query_one("#sample-detail", Static).update(Group(*parts))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "samples-table" and event.row_key.value is not None:
            event.stop()
            self.show_sample(int(event.row_key.value))
