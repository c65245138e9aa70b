"""The dashboard on a big studio: 200 runs x 10k metric points each, driven headless with Pilot at 120x40.

Measured (p50 / p95 / max, no assertions):
- keys: a key press on the runs screen (cursor, sort, group, filter) and on a run screen (next head, tabs),
  from the press until the app has handled it and refreshed the screen (`pilot.press` then `pilot.pause()`);
- visibility: a train/loss line written to the store (`store.ingest_metric_lines`, from another thread, as a
  worker's supervisor does) until the runs table shows the new value; goal p95 <= 1 s at the default 0.5 s poll;
- the poll itself: `store.runs_overview` over the 200 runs, and the longest event-loop stall seen meanwhile.

    python benchmarks/bench_tui.py [--runs 200] [--points 10000] [--writes 20] [--poll-s 0.5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from textual.widgets import DataTable

from wmtp_studio import store
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.metrics import MetricLine
from wmtp_studio.settings import Settings
from wmtp_studio.tui.app import StudioApp, create_app

ROOT = Path(__file__).resolve().parents[1]
ALGORITHMS = ("ntp", "baseline-mtp", "critic-wmtp", "rho1-wmtp", "grad-wmtp")


def fill(engine: Engine, settings: Settings, n_runs: int, n_points: int) -> None:
    """n_runs runs (mixed algorithms and statuses) with n_points points each (train/loss and train/lr per step),
    inserted with one executemany per run."""
    recipes = {a: load_recipe(ROOT / "recipes" / f"tiny-{a}.yaml", ["train.steps=50000"]) for a in ALGORITHMS}
    steps = n_points // 2
    with store.submission(engine=engine, runs_dir=settings.runs_dir) as sub:
        runs = [sub.add_run(recipe=recipes[ALGORITHMS[i % len(ALGORITHMS)]]) for i in range(n_runs)]
    with engine.begin() as conn:
        for i, run in enumerate(runs):
            rows = [
                (run.id, seq, name, 10 * (seq + 1), value)
                for seq in range(steps)
                for name, value in (("train/loss", 5.0 / (seq + 1)), ("train/lr", 1e-3))
            ]
            conn.exec_driver_sql(
                "INSERT INTO metricpoint (run_id, seq, name, step, value) VALUES (?, ?, ?, ?, ?)", rows
            )
            status = ("succeeded", "failed", "cancelled", "running")[i % 4] if i < n_runs - 8 else "queued"
            conn.exec_driver_sql(
                "UPDATE run SET status = ?, last_step = ?, lease_owner = ? WHERE id = ?",
                (status, 10 * steps, "bench:1" if status == "running" else None, run.id),
            )


def stats(samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"p50 {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms  max {ms[-1]:7.1f} ms  (n={len(ms)})"


async def keys(pilot: Any, presses: list[str]) -> list[float]:
    times = []
    for key in presses:
        t = time.perf_counter()
        await pilot.press(key)
        await pilot.pause()
        times.append(time.perf_counter() - t)
    return times


async def until(pilot: Any, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError("the dashboard never showed what was expected")
        await pilot.pause(0.005)


async def drive(app: StudioApp, n_runs: int, n_writes: int) -> None:
    engine = app.ctx.engine
    stall, last = 0.0, time.perf_counter()

    def beat() -> None:
        nonlocal stall, last
        now = time.perf_counter()
        stall, last = max(stall, now - last - 0.01), now

    async with app.run_test(size=(120, 40)) as pilot:
        table: DataTable[Any] = app.screen.query_one("#runs", DataTable)
        t = time.perf_counter()
        await until(pilot, lambda: table.row_count == n_runs)
        print(f"runs screen: {n_runs} rows shown {time.perf_counter() - t:.2f} s after start")
        app.set_interval(0.01, beat)

        print("runs screen keys")
        print("  cursor down/up  ", stats(await keys(pilot, ["down", "up"] * 15)))
        print("  sort (rebuild)  ", stats(await keys(pilot, ["s"] * 13)))
        print("  group (rebuild) ", stats(await keys(pilot, ["g"] * 8)))
        typing = await keys(pilot, ["slash", *"rho1", *["backspace"] * 4, "escape"])
        print("  filter typing   ", stats(typing))

        top = int(str(table.get_row_at(0)[1]))
        seq = store.last_seq(engine=engine, run_id=top)
        latencies = []
        for k in range(n_writes):
            seq += 1
            value = 0.5 + k / 1000
            line = MetricLine(
                seq=seq, step=10 * (seq + 1), time=time.time(), kind="train", metrics={"loss": value}
            )
            await asyncio.to_thread(store.ingest_metric_lines, engine=engine, run_id=top, lines=[line])
            written = time.perf_counter()
            shown = f"{value:.4f}"
            await until(pilot, lambda: str(table.get_cell(str(top), "loss")) == shown)  # noqa: B023
            latencies.append(time.perf_counter() - written)
        print(f"metric written -> visible in the runs table (poll {app.ctx.poll_s} s)")
        print("  ", stats(latencies))
        print(f"longest event-loop stall on the runs screen: {stall * 1000:.0f} ms")

        await pilot.press("enter")
        await until(pilot, lambda: type(app.screen).__name__ == "RunScreen")
        await pilot.pause(1.0)
        print(f"run screen of run {top} ({store.last_seq(engine=engine, run_id=top) + 1} lines)")
        print(
            "  next/prev head  ",
            stats(await keys(pilot, ["right_square_bracket", "left_square_bracket"] * 10)),
        )
        print("  tabs            ", stats(await keys(pilot, ["2", "1"] * 10)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--points", type=int, default=10_000, help="metric points per run")
    parser.add_argument("--writes", type=int, default=20)
    parser.add_argument("--poll-s", type=float, default=0.5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({"WMTP_HOME": tmp})
        engine = store.make_engine(settings.database_url)
        store.upgrade(engine=engine)
        t = time.perf_counter()
        fill(engine, settings, args.runs, args.points)
        print(f"filled {args.runs} runs x {args.points} points in {time.perf_counter() - t:.1f} s")
        polls = []
        for _ in range(10):
            t = time.perf_counter()
            store.runs_overview(engine=engine)
            polls.append(time.perf_counter() - t)
        print("store.runs_overview (one poll)", stats(polls))
        app = create_app(settings=settings, embedded_worker=False, offer_quickstart=False, poll_s=args.poll_s)
        asyncio.run(drive(app, args.runs, args.writes))


if __name__ == "__main__":
    main()
