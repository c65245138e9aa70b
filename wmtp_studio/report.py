"""`wmtp-studio quickstart --report`: the README's quickstart table as the output of one command.

It runs the quickstart headless (a worker subprocess on a fresh temporary studio home, or on the current studio
with `--existing`), waits for every run, and prints Markdown: the base's pass@1, then the fine-tunes' table with
the paired tests against ntp as the compare screen computes them (`compare.tables.compare_tables`, whose note names
the test), and what it was made with (commit, cores, torch threads per run, wall time). Torch-free.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from wmtp_studio import __version__, store
from wmtp_studio.compare.export import Interval, format_cell, to_markdown
from wmtp_studio.compare.tables import CompareTables, compare_tables
from wmtp_studio.errors import StudioError
from wmtp_studio.models import FINISHED_STATUSES, ComparisonSet, Run
from wmtp_studio.settings import Settings
from wmtp_studio.submit import QUICKSTART_ALGORITHMS, submit_quickstart

QUICKSTART_SET = "quickstart"
"""The name of the quickstart's comparison set (wmtp_studio/quickstart/finetune.yaml)."""


@dataclass(frozen=True)
class Quickstart:
    """A quickstart in the store: its comparison set, its base run and its fine-tunes."""

    cset: ComparisonSet
    base: Run
    finetunes: list[Run]

    @property
    def runs(self) -> list[Run]:
        return [self.base, *self.finetunes]


def load_quickstart(engine: Engine, set_id: int) -> Quickstart:
    """The set, its runs (id order) and the base they were fine-tuned from, as stored now."""
    cset = store.get_comparison_set(engine=engine, comparison_set_id=set_id)
    runs = sorted(
        store.list_runs(engine=engine, comparison_set_id=set_id, limit=1000), key=lambda r: r.id or 0
    )
    base_id = next((r.depends_on_run_id for r in runs if r.depends_on_run_id is not None), None)
    base = store.get_run(engine=engine, run_id=base_id) if base_id is not None else None
    if cset is None or base is None or not runs:
        raise StudioError(f"comparison set {set_id} is not a quickstart (a base run and its fine-tunes)")
    return Quickstart(cset, base, runs)


def latest_quickstart(engine: Engine) -> int | None:
    """The id of the newest quickstart set in the studio, if any."""
    for run in store.list_runs(engine=engine, limit=10000):
        if run.comparison_set_id is None or run.depends_on_run_id is None:
            continue
        cset = store.get_comparison_set(engine=engine, comparison_set_id=run.comparison_set_id)
        if cset is not None and cset.name == QUICKSTART_SET:
            return cset.id
    return None


def wait_for(
    engine: Engine, set_id: int, on_change: Callable[[Run, int, int], None], poll_s: float = 2.0
) -> Quickstart:
    """Block until every run of the quickstart has finished; `on_change(run, index, total)` on each new status.
    A failed or cancelled run ends the wait with a StudioError giving its reason."""
    seen: dict[int, str] = {}
    while True:
        qs = load_quickstart(engine, set_id)
        for i, run in enumerate(qs.runs, start=1):
            if seen.get(run.id or 0) != run.status:
                seen[run.id or 0] = run.status
                on_change(run, i, len(qs.runs))
            if run.status in ("failed", "cancelled"):
                reason = store.failure_reason(run) or run.status
                raise StudioError(f"run {run.id} ({run.name}) {run.status}: {reason}")
        if all(r.status in FINISHED_STATUSES for r in qs.runs):
            return qs
        time.sleep(poll_s)


def commit() -> str:
    """`git rev-parse --short HEAD` of the checkout this package runs from (`+dirty` with local changes), else
    the package version."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return f"wmtp-studio {__version__}"
    if sha.returncode != 0 or not sha.stdout.strip():
        return f"wmtp-studio {__version__}"
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


_THREADS = re.compile(r"train\.num_threads (?:auto: )?(\d+)")


def threads_used(run: Run) -> str:
    """The torch threads the run's trainer chose (from its train.log), or `?`."""
    try:
        found = _THREADS.findall((Path(run.run_dir) / "train.log").read_text(errors="replace"))
    except OSError:
        return "?"
    return "/".join(dict.fromkeys(found)) or "?"  # a resumed run may have chosen differently


def _duration(seconds: float) -> str:
    return f"{int(seconds) // 60}m{int(seconds) % 60:02d}s"


def _pass1(engine: Engine, run: Run) -> str:
    cells = [
        f"{e.benchmark} pass@{e.k} {format_cell(Interval(e.pass_at_k, e.ci_low, e.ci_high))}"
        for e in store.list_evaluations(engine=engine, run_id=run.id or 0)
    ]
    return "; ".join(cells) or "no evaluation"


def set_tables(engine: Engine, runs: Sequence[Run]) -> CompareTables:
    """The compare screen's tables of a comparison set's runs: pass@k with CIs, and Δ, CI and p against the
    ntp row (the first row without one)."""
    evaluations = {r.id or 0: store.list_evaluations(engine=engine, run_id=r.id or 0) for r in runs}
    return compare_tables(runs, evaluations, None, is_set=True)


def render(engine: Engine, qs: Quickstart, overrides: Sequence[str] = ()) -> str:
    """The Markdown report of a finished quickstart."""
    tables = set_tables(engine, qs.finetunes)
    started = [r.started_at for r in qs.runs if r.started_at]
    finished = [r.finished_at for r in qs.runs if r.finished_at]
    wall = (max(finished) - min(started)).total_seconds() if started and finished else 0.0
    per_run = ", ".join(
        f"{r.algorithm if r is not qs.base else 'base'} "
        f"{_duration((r.finished_at - r.started_at).total_seconds()) if r.started_at and r.finished_at else '?'}"
        for r in qs.runs
    )
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    lines = [
        f"Quickstart at commit {commit()}, {platform.machine()} with {affinity} usable core(s) "
        f"({os.cpu_count()} logical CPU(s)); torch threads per run: "
        + ", ".join(f"{'base' if r is qs.base else r.algorithm} {threads_used(r)}" for r in qs.runs)
        + ".",
        f"Wall time {_duration(wall)} from the base's start to the last run's end ({per_run}).",
    ]
    if overrides:
        lines.append(f"Overrides (not the shipped quickstart): {' '.join(overrides)}.")
    lines += [
        "",
        f"Base model (run {qs.base.id}, {qs.base.algorithm}, pre-trained): {_pass1(engine, qs.base)}.",
        "",
        f"Fine-tunes of the base (comparison set {qs.cset.id}), paired against {tables.labels[tables.baseline]}:",
        "",
        to_markdown(tables.results).rstrip("\n"),
    ]
    return "\n".join(lines) + "\n"


def fresh_home() -> Settings:
    """Settings of a new temporary studio home (the user's studio and WMTP_* variables are left alone)."""
    import tempfile

    home = Path(tempfile.mkdtemp(prefix="wmtp-quickstart-"))
    return Settings.from_env({"WMTP_HOME": str(home)})


def run_and_report(
    engine: Engine,
    settings: Settings,
    *,
    existing: bool,
    overrides: Sequence[str],
    seeds: int = 1,
    algorithms: Sequence[str] = QUICKSTART_ALGORITHMS,
) -> tuple[str, int]:
    """(Markdown report, set id) of the studio's latest quickstart (`existing`) or of a new one queued now, after
    waiting for all its runs with a worker: a worker of its own on a fresh home, else an embedded one unless a
    live worker is registered. Progress goes to stderr."""
    import sys

    from wmtp_studio.tui.embedded import EmbeddedWorker, start_if_needed

    started = time.monotonic()

    def on_change(run: Run, index: int, total: int) -> None:
        took = _duration(time.monotonic() - started)
        print(
            f"[{took}] run {index} of {total} (#{run.id} {run.name}): {run.status}",
            file=sys.stderr,
            flush=True,
        )

    set_id = latest_quickstart(engine) if existing else None
    if set_id is None:
        cset, _ = submit_quickstart(
            engine=engine, settings=settings, seeds=seeds, overrides=overrides, algorithms=algorithms
        )
        set_id = cset.id or 0
    worker = (
        start_if_needed(engine=engine, settings=settings, poll_s=1.0)
        if existing
        else EmbeddedWorker(settings, poll_s=1.0)
    )
    try:
        qs = wait_for(engine, set_id, on_change)
    finally:
        if worker is not None:
            worker.stop()
    return render(engine, qs, overrides), set_id
