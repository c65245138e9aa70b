"""The run screen on a long run: how long until every point is drawn, and how long the event loop ever stalls.

A synthetic run of `--lines` train lines (4 heads, the scalars a real critic-wmtp line carries) plus a histogram
every 10 lines is stored in a temp SQLite studio; the screen is opened headless at 120x40 and we measure
- load: seconds from mount until the loss chart holds every step;
- stall: the largest delay of a 10 ms heartbeat timer on the event loop (what a user feels as a frozen UI);
- the first-load read itself: `store.points_since` in one read against the run screen's pages of 20,000 points.

    python benchmarks/bench_run_screen.py [--lines 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from wmtp_studio import store
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.metrics import MetricLine
from wmtp_studio.settings import Settings
from wmtp_studio.tui.context import StudioContext
from wmtp_studio.tui.screens.run import RunScreen
from wmtp_studio.tui.widgets.charts import LineChart

ROOT = Path(__file__).resolve().parents[1]
HEAD_METRICS = ("ce", "acc", "w_mean", "w_std", "w_min", "w_max", "w_entropy")


def fill(ctx: StudioContext, n_lines: int) -> int:
    recipe = load_recipe(ROOT / "recipes" / "tiny-critic-wmtp.yaml", [f"train.steps={n_lines * 5}"])
    with store.submission(engine=ctx.engine, runs_dir=ctx.settings.runs_dir) as sub:
        run = sub.add_run(recipe=recipe)
    assert run.id is not None
    lines, seq = [], 0
    for i in range(n_lines):
        metrics = {"loss": 5.0 / (i + 1), "lr": 1e-3, "grad_norm": 1.0 + i % 7, "value_loss": 0.1}
        metrics |= {f"head{h}/{m}": float(h + i % 11) for h in range(4) for m in HEAD_METRICS}
        lines.append(MetricLine(seq=seq, step=5 * (i + 1), time=0.0, kind="train", metrics=metrics))
        seq += 1
        if i % 10 == 9:
            heads = [[float((b + i) % 13) for b in range(20)] for _ in range(4)]
            data = {"edges": [b * 0.25 for b in range(21)], "heads": heads}
            lines.append(MetricLine(seq=seq, step=5 * (i + 1), time=0.0, kind="hist", data=data))
            seq += 1
    for k in range(0, len(lines), 1000):
        store.ingest_metric_lines(engine=ctx.engine, run_id=run.id, lines=lines[k : k + 1000])
    return run.id


async def open_screen(ctx: StudioContext, run_id: int, n_lines: int) -> tuple[float, float]:
    from textual.app import App

    class BenchApp(App[None]):
        def on_mount(self) -> None:
            self.push_screen(RunScreen(ctx, run_id))

    app, stall, last = BenchApp(), 0.0, time.perf_counter()

    def beat() -> None:
        nonlocal stall, last
        now = time.perf_counter()
        stall, last = max(stall, now - last - 0.01), now

    t0 = time.perf_counter()
    async with app.run_test(size=(120, 40)) as pilot:
        last = time.perf_counter()
        app.set_interval(0.01, beat)
        chart = app.screen.query_one("#chart-loss", LineChart)
        while chart.drawn.get("loss", ([0], [0]))[0][-1] != 5 * n_lines:
            await pilot.pause(0.01)
        load = time.perf_counter() - t0
    return load, stall


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env({"WMTP_HOME": tmp})
        engine = store.make_engine(settings.database_url)
        store.upgrade(engine=engine)
        ctx = StudioContext(engine=engine, settings=settings, poll_s=0.5)
        run_id = fill(ctx, args.lines)
        t = time.perf_counter()
        n = len(store.points_since(engine=engine, run_id=run_id, after_seq=-1).points)
        whole = time.perf_counter() - t
        t, cursor, more = time.perf_counter(), -1, True
        while more:
            page = store.points_since(engine=engine, run_id=run_id, after_seq=cursor, limit=20_000)
            cursor, more = page.points[-1].seq, page.more
        paged = time.perf_counter() - t
        print(f"{args.lines} train lines, {n} points")
        print(
            f"first read: one read {whole:.2f} s, pages of 20,000 points {paged:.2f} s ({paged / whole:.1f}x)"
        )
        load, stall = asyncio.run(open_screen(ctx, run_id, args.lines))
        print(f"screen: every point drawn after {load:.2f} s; longest event-loop stall {stall * 1000:.0f} ms")


if __name__ == "__main__":
    main()
