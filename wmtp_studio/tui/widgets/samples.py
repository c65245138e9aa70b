"""The samples of one evaluation (from its samples.jsonl): a table, failures first, and the selected one's code and
why it failed (the failed assert with expected and got, the exception, the limit hit, the end of its stderr)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Label, Static

MAX_SAMPLES = 20_000  # rows shown; a samples file is read up to this many lines


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The records of a samples.jsonl, failed ones first (file order otherwise); raises OSError/ValueError."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for n, line in enumerate(fh):
            if n >= MAX_SAMPLES:
                break
            if line.strip():
                rec = json.loads(line)
                if isinstance(rec, dict) and isinstance(rec.get("task_id"), str):
                    rows.append(rec)
    return sorted(rows, key=lambda r: bool(r.get("passed")))


def find_samples(protocol: dict[str, Any], run_dir: Path, benchmark: str) -> Path | None:
    """The evaluation's samples.jsonl: as recorded with it, else (evaluations stored before the path was) the one
    beside the run's `eval/*/results.json` for the same benchmark."""
    if isinstance(protocol.get("samples"), str):
        return Path(protocol["samples"])
    for results in sorted(run_dir.glob("eval/*/results.json")):
        try:
            if json.loads(results.read_text()).get("benchmark") == benchmark:
                return results.with_name("samples.jsonl")
        except (OSError, ValueError, AttributeError):
            continue
    return None


def why(sample: dict[str, Any]) -> str:
    """One line: why the sample failed ("" when it passed)."""
    if sample.get("passed"):
        return ""
    parts = [str(sample.get("detail") or sample.get("status", ""))]
    if sample.get("expected") or sample.get("got"):
        parts.append(f"expected {sample.get('expected', '')}, got {sample.get('got', '')}")
    if sample.get("exception") and sample["exception"] not in parts[0]:
        parts.append(str(sample["exception"]))
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

    samples: list[dict[str, Any]] = []

    def compose(self) -> ComposeResult:
        yield Label("select an evaluation to see its samples", id="samples-caption", markup=False)
        yield DataTable(id="samples-table", cursor_type="row")
        with VerticalScroll():
            yield Static("", id="sample-detail", markup=False)

    def on_mount(self) -> None:
        table = self.query_one("#samples-table", DataTable)
        for label in ("task", "#", "status", "why"):
            table.add_column(label, key=label)

    def show(self, caption: str, samples: list[dict[str, Any]]) -> None:
        self.samples = samples
        failed = sum(not s.get("passed") for s in samples)
        self.query_one("#samples-caption", Label).update(
            f"{caption}: {len(samples)} samples, {failed} failed" if samples else caption
        )
        table = self.query_one("#samples-table", DataTable)
        table.clear()
        for i, s in enumerate(samples):
            cells = (s["task_id"], str(s.get("index", "")), str(s.get("status", "")), why(s)[:120])
            table.add_row(*map(Text, cells), key=str(i))
        self.query_one("#sample-detail", Static).update("")
        if samples:
            self.show_sample(0)

    def show_sample(self, i: int) -> None:
        s = self.samples[i]
        head = Text(f"{s['task_id']} #{s.get('index', '')}  {s.get('status', '')}", style="bold")
        parts: list[Any] = [head]
        if not s.get("passed"):
            parts.append(Text(why(s)))
        if s.get("output_truncated"):
            parts.append(Text("its output went past the cap (the rest was dropped)", style="dim"))
        parts.append(Syntax(str(s.get("completion", "")), "python", line_numbers=False, word_wrap=True))
        if s.get("stderr"):
            parts += [Text("stderr (end):", style="dim"), Text(str(s["stderr"]))]
        self.query_one("#sample-detail", Static).update(Group(*parts))

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "samples-table" and event.row_key.value is not None:
            event.stop()
            self.show_sample(int(event.row_key.value))
