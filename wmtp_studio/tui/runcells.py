"""What the dashboard's run tables show for a run, and what their columns sort by: pure functions of the row."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from rich.text import Text

from wmtp_studio.models import RUN_STATUSES, Run
from wmtp_studio.store import RunOverview

STATUS_STYLE = {"running": "bold cyan", "succeeded": "green", "failed": "bold red", "cancelled": "dim"}


def duration(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s // 60 % 60:02d}m"
    )


def progress_bar(run: Run, width: int = 8) -> str:
    frac = min(1.0, run.last_step / run.total_steps) if run.total_steps else 0.0
    full = round(frac * width)
    return "█" * full + "░" * (width - full) + f" {frac:4.0%}"


def eta_seconds(run: Run, now: datetime) -> float | None:
    """Remaining steps at the rate of last_step over the time since the run started (running runs only)."""
    if run.status != "running" or run.started_at is None or run.last_step <= 0:
        return None
    elapsed = (now - run.started_at).total_seconds()
    return max(0.0, run.total_steps - run.last_step) * elapsed / run.last_step if elapsed > 0 else None


def status_text(run: Run) -> Text:
    label = "cancelling" if run.cancel_requested and run.status == "running" else run.status
    return Text(label, style=STATUS_STYLE.get(run.status, ""))


def group_of(o: RunOverview, group: str) -> str:
    if group == "set":
        return o.comparison_set or "(no set)"
    return o.run.algorithm if group == "algorithm" else o.run.status


def sort_value(o: RunOverview, column: str, now: datetime) -> Any:
    """What a column sorts by (missing values after the others in ascending order)."""
    r = o.run
    values: dict[str, Any] = {
        "id": r.id,
        "name": r.name,
        "set": o.comparison_set,
        "algorithm": r.algorithm,
        "seed": r.seed,
        "status": RUN_STATUSES.index(r.status) if r.status in RUN_STATUSES else 99,
        "prio": r.priority,
        "progress": r.last_step / r.total_steps if r.total_steps else 0.0,
        "eta": eta_seconds(r, now),
        "step": r.last_step,
        "loss": o.loss,
        "pass1": o.pass_at_1,
        "worker": r.lease_owner,
    }
    value = values[column]
    return (value is None, value if value is not None else 0)
