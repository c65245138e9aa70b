"""What the dashboard's run tables show for a run, and what their columns sort by: pure functions of the row."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.text import Text

from wmtp_studio.models import FINISHED_STATUSES, RUN_STATUSES, Run
from wmtp_studio.store import RunOverview

STATUS_STYLE = {"running": "bold cyan", "succeeded": "green", "failed": "bold red", "cancelled": "dim"}


def duration(seconds: float) -> str:
    s = int(seconds)
    return (
        f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s // 60 % 60:02d}m"
    )


def progress_bar(run: Run, width: int = 5) -> str:
    frac = min(1.0, run.last_step / run.total_steps) if run.total_steps else 0.0
    full = round(frac * width)
    return "█" * full + "░" * (width - full) + f" {frac:4.0%}"


RATE_METRICS = ("train/tokens_seen", "train/tokens_per_s")
"""What the trainer writes on every train line that times it: tokens so far, and tokens per second since the
previous train line (wall clock, validation and histograms included)."""
RATE_LINES = 6
"""How many recent train lines the step rate is taken over (5 intervals: ~25 steps at log_every 5)."""


def seconds_per_step(
    steps: Sequence[int], tokens_seen: Sequence[float], tokens_per_s: Sequence[float]
) -> float | None:
    """Wall seconds per optimizer step over the recent train lines given (oldest first). Line i's tokens_per_s
    is the tokens since line i-1 over the time since then, so that interval took (tokens_seen[i] -
    tokens_seen[i-1]) / tokens_per_s[i] seconds for steps[i] - steps[i-1] steps. Only the recent rate counts:
    a resume, a slow start or a critic's stage 1 do not skew it (the time since the run started did)."""
    seconds = done = 0.0
    for i in range(1, min(len(steps), len(tokens_seen), len(tokens_per_s))):
        d_steps, d_tokens, rate = (
            steps[i] - steps[i - 1],
            tokens_seen[i] - tokens_seen[i - 1],
            tokens_per_s[i],
        )
        if d_steps > 0 and d_tokens > 0 and rate > 0:  # a resume can rewind the stream: skip such pairs
            seconds += d_tokens / rate
            done += d_steps
    return seconds / done if done else None


def eta_seconds(run: Run, per_step: float | None) -> float | None:
    """Remaining steps at the recent rate (running runs with a measured rate only)."""
    if run.status != "running" or per_step is None:
        return None
    return max(0, run.total_steps - run.last_step) * per_step


def failure_reason(run: Run) -> str | None:
    """Why a run failed, in one line: the last non-blank line of its stored log tail, else its exit code."""
    if run.status != "failed":
        return None
    lines = [ln.strip() for ln in (run.error_tail or "").splitlines() if ln.strip()]
    if lines:
        return lines[-1]
    return f"exit code {run.exit_code}" if run.exit_code is not None else "no reason recorded"


def set_progress(
    runs: Sequence[Run], per_step: Mapping[int, float], names: Mapping[int, str] | None = None
) -> str | None:
    """Progress of a set, e.g. "quickstart: run 3 of 5, ~6 min left" for the newest comparison set that is still going, counting the runs
    its runs depend on (the quickstart's base). Time left: the running runs' ETA plus, for each run not started,
    its steps at the mean seconds per step of the group's finished runs (else of a running one); runs are
    assumed to go one after another, as on one worker. None when no set is going."""
    by_id = {r.id: r for r in runs}
    active = [
        r.comparison_set_id
        for r in runs
        if r.comparison_set_id is not None and r.status not in FINISHED_STATUSES
    ]
    if not active:
        return None
    newest = max(i for i in active if i is not None)
    members = [r for r in runs if r.comparison_set_id == newest]
    deps = {r.depends_on_run_id for r in members} - {r.id for r in members} - {None}
    group = sorted([*members, *(by_id[d] for d in deps if d in by_id)], key=lambda r: r.id or 0)
    done = sum(r.status in FINISHED_STATUSES for r in group)
    running = [r for r in group if r.status == "running"]
    named = (names or {}).get(newest)
    text = (
        f"{named}: " if named else ""
    ) + f"run {min(done + max(len(running), 1), len(group))} of {len(group)}"
    finished = [
        (r.finished_at - r.started_at).total_seconds() / r.total_steps
        for r in members
        if r.status == "succeeded" and r.started_at and r.finished_at and r.total_steps
    ]
    rates = finished or [per_step[r.id] for r in running if r.id is not None and r.id in per_step]
    if not rates:
        return text
    mean = sum(rates) / len(rates)
    left = sum(eta_seconds(r, per_step.get(r.id or 0, mean)) or 0.0 for r in running)
    left += sum(r.total_steps * mean for r in group if r.status in ("queued", "waiting"))
    return f"{text}, ~{max(1, round(left / 60))} min left"


def status_text(run: Run) -> Text:
    label = "cancelling" if run.cancel_requested and run.status == "running" else run.status
    return Text(label, style=STATUS_STYLE.get(run.status, ""))


def group_of(o: RunOverview, group: str) -> str:
    if group == "set":
        return o.comparison_set or "(no set)"
    return o.run.algorithm if group == "algorithm" else o.run.status


def sort_value(o: RunOverview, column: str, per_step: float | None) -> Any:
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
        "eta": eta_seconds(r, per_step),
        "step": r.last_step,
        "loss": o.loss,
        "pass1": o.pass_at_1,
        "worker": r.lease_owner,
        "reason": failure_reason(r),
    }
    value = values[column]
    return (value is None, value if value is not None else 0)
