"""Studio back end: submit -> job start latency, metric ingestion throughput, and how soon a metric line the
trainer writes is visible through the store. Real parts only: a `wmtp-worker` subprocess, the real supervisor and
trainer, a SQLite studio database in a temporary home (and PostgreSQL for ingestion when WMTP_TEST_POSTGRES_URL
is set: a throw-away database is created there and dropped).

    python benchmarks/bench_studio.py [--submissions 10] [--steps 60] [--lines 2000] [--json OUT]

(a) latency: each submission goes through the path `wmtp-studio submit` takes (submit.submit_run, then
    wake_workers on the Huey queue) to a running worker that polls the store only every 2 s (its default), so
    the Huey wake-up is what is measured. Reported from the submission: the claim (Run.started_at), the
    trainer's process start (/proc starttime) and the trainer's `start` event (its own timestamp). Each run is
    cancelled once started. The `wmtp-studio submit` process itself is timed separately.
(b) ingestion: store.ingest_metric_lines of train lines with 40 scalars each, in batches of 1, 10 and 100 lines.
(c) visibility: a real tiny training supervised by wmtp_studio.workers.supervise (poll 0.5 s, as in wmtp-worker) while
    this process polls store.points_since every 20 ms; latency = first seen - the line's write time.
    The trainer's side of it is one JSON line appended and flushed per log: its cost per line is timed too.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "tiny-ntp.yaml"
FAST = ["data.generated.num_train=600", "train.batch_size=16", "eval.benchmarks=[]", "train.log_every=1"]
STUDIO = "from wmtp_studio.studio_cli import studio_main; studio_main()"
HEAD_METRICS = ("ce", "acc", "w_mean", "w_std", "w_min", "w_max", "w_entropy", "excess")
GLOBAL_METRICS = (
    "loss",
    "grad_norm",
    "lr",
    "tokens_per_s",
    "tokens_seen",
    "epoch",
    "nonfinite_total",
    "value",
)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait_for(cond: Callable[[], Any], timeout: float = 300, poll: float = 0.005) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step timed out")
        time.sleep(poll)
    return value


def process_start_time(run_dir: Path) -> float | None:
    """Wall-clock start of the oldest live process whose command line names run_dir (from /proc: its start in
    clock ticks since boot, set against the uptime now)."""
    now, uptime = time.time(), float(Path("/proc/uptime").read_text().split()[0])
    ticks = os.sysconf("SC_CLK_TCK")
    starts = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if str(run_dir).encode() in Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0"):
                stat = Path(f"/proc/{entry}/stat").read_text()
                starts.append(now - uptime + int(stat.rsplit(")", 1)[1].split()[19]) / ticks)
        except OSError:
            continue
    return min(starts, default=None)


def run_value(engine: Any, run_id: int, name: str) -> Any:
    from wmtp_studio import store

    return getattr(store.get_run(engine=engine, run_id=run_id), name, None)


def first_line(path: Path) -> str | None:
    """The first complete line of the file, once there is one."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    return text.split("\n", 1)[0] if "\n" in text else None


def bench_latency(home: Path, submissions: int) -> dict[str, list[float]]:
    from wmtp_studio import store
    from wmtp_studio.recipe import load_recipe
    from wmtp_studio.settings import Settings
    from wmtp_studio.submit import submit_run, wake_workers

    env = {k: v for k, v in os.environ.items() if not k.startswith("WMTP_")} | {"WMTP_HOME": str(home)}
    settings = Settings.from_env(env)
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine=engine)
    recipe = load_recipe(RECIPE, [*FAST, "train.steps=100000"])
    worker = subprocess.Popen(
        [sys.executable, "-c", "from wmtp_studio.workers.daemon import main; main()", "--cpu"],
        env=env | {"HF_HUB_OFFLINE": "1"},
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out: dict[str, list[float]] = {"claimed": [], "process started": [], "start event": []}
    try:
        wait_for(lambda: store.list_workers(engine=engine), timeout=120)
        for _ in range(submissions):
            t0 = time.time()
            run = submit_run(engine=engine, settings=settings, recipe=recipe)
            run_id, run_dir = run.id or 0, Path(run.run_dir)
            assert wake_workers(settings, [run_id]) is None
            started = wait_for(partial(run_value, engine, run_id, "started_at"))
            spawned = wait_for(partial(process_start_time, run_dir), poll=0.02)
            first = wait_for(partial(first_line, run_dir / "metrics.jsonl"), poll=0.02)
            out["claimed"].append(started.timestamp() - t0)
            out["process started"].append(spawned - t0)
            out["start event"].append(json.loads(first)["time"] - t0)
            store.request_cancel(engine=engine, run_id=run_id)
            wait_for(partial(run_value, engine, run_id, "finished_at"))
        store.set_flag(engine=engine, name="queue_paused", value=True)  # the CLI's runs are only stored
        cli: list[float] = []
        for _ in range(3):
            t0 = time.time()
            subprocess.run(
                [sys.executable, "-c", STUDIO, "submit", str(RECIPE), "--priority", "-1"],
                env=env,
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            cli.append(time.time() - t0)
        out["`wmtp-studio submit` process"] = cli
    finally:
        worker.terminate()
        worker.wait(timeout=60)
    return out


def train_lines(n: int, start_seq: int = 0) -> list[Any]:
    from wmtp_studio.rundir.metrics import MetricLine

    names = [*GLOBAL_METRICS, *(f"head{k}/{m}" for k in range(4) for m in HEAD_METRICS)]  # 40 scalars
    return [
        MetricLine(
            seq=s,
            step=s,
            time=time.time(),
            kind="train",
            metrics={k: 0.001 * s + i for i, k in enumerate(names)},
        )
        for s in range(start_seq, start_seq + n)
    ]


@contextmanager
def postgres_database(url: str) -> Iterator[str]:
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    name = f"wmtp_bench_{secrets.token_hex(4)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def bench_ingest(url: str, runs_dir: Path, lines: int) -> dict[int, float]:
    """Points per second for each batch size (lines per transaction)."""
    from wmtp_studio import store
    from wmtp_studio.recipe import load_recipe

    engine = store.make_engine(url)
    store.upgrade(engine=engine)
    result = {}
    for batch in (1, 10, 100):
        with store.submission(engine=engine, runs_dir=runs_dir) as sub:
            run = sub.add_run(recipe=load_recipe(RECIPE, FAST))
        todo = train_lines(lines if batch > 1 else lines // 4)
        t0, points = time.perf_counter(), 0
        for i in range(0, len(todo), batch):
            points += store.ingest_metric_lines(engine=engine, run_id=run.id or 0, lines=todo[i : i + batch])
        result[batch] = points / (time.perf_counter() - t0)
    engine.dispose()
    return result


def bench_write_cost(path: Path, lines: int) -> float:
    """Seconds per MetricsWriter.write of a 40-scalar train line (append + flush, as the trainer does)."""
    from wmtp_studio.train.events import MetricsWriter

    metrics = train_lines(1)[0].metrics
    writer = MetricsWriter(path)
    t0 = time.perf_counter()
    for step in range(lines):
        writer.write("train", step, metrics=metrics)
    elapsed = time.perf_counter() - t0
    writer.close()
    return elapsed / lines


def bench_visibility(home: Path, steps: int) -> list[float]:
    """Seconds from each train line's write (its `time`) to its first sight through points_since."""
    from wmtp_studio import store
    from wmtp_studio.recipe import load_recipe
    from wmtp_studio.workers.supervise import supervise

    os.environ["WMTP_HOME"] = str(home)
    engine = store.make_engine(f"sqlite:///{home / 'visibility.db'}")
    store.upgrade(engine=engine)
    recipe = load_recipe(
        RECIPE, [*FAST, f"train.steps={steps}", "eval.val_every=1000", "train.hist_every=1000"]
    )
    with store.submission(engine=engine, runs_dir=home / "vis-runs") as sub:
        sub.add_run(recipe=recipe)
    run = store.claim_next_run(engine=engine, owner="bench", gpus_free=0, lease_s=60)
    assert run is not None and run.id is not None
    job = threading.Thread(
        target=supervise, kwargs={"engine": engine, "run": run, "owner": "bench", "token": run.fencing_token}
    )
    job.start()
    seen: dict[int, float] = {}
    cursor, running = -1, True
    while running:
        running = job.is_alive()  # one more poll after the job ended
        for p in store.points_since(
            engine=engine, run_id=run.id, after_seq=cursor, names=["train/loss"]
        ).points:
            seen.setdefault(p.seq, time.time())
            cursor = max(cursor, p.seq)
        time.sleep(0.02)
    job.join()
    written = {
        ln["seq"]: ln["time"]
        for ln in map(json.loads, (Path(run.run_dir) / "metrics.jsonl").read_text().splitlines())
        if ln["kind"] == "train"
    }
    return [seen[s] - t for s, t in written.items() if s in seen]


def row(name: str, values: list[float], unit: float = 1.0) -> str:
    v = [x * unit for x in values]
    return f"{name:32s} {len(v):4d} {statistics.median(v):9.3f} {pct(v, 0.95):9.3f} {max(v):9.3f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--submissions", type=int, default=10)
    p.add_argument("--steps", type=int, default=60, help="train steps of the visibility run (one line each)")
    p.add_argument("--lines", type=int, default=2000, help="train lines per ingestion measurement")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="wmtp-bench-") as tmp:
        home = Path(tmp)
        latency = bench_latency(home / "latency", args.submissions)
        print("\n(a) submit -> job start, seconds      n       p50       p95       max")
        for name, values in latency.items():
            print(row(name, values))
        report["latency_s"] = latency

        print(f"\n(b) ingestion, points/s ({len(train_lines(1)[0].metrics)} scalars per line)")
        print(f"{'database':12s} {'1 line/txn':>12s} {'10 lines/txn':>13s} {'100 lines/txn':>14s}")
        targets = {"sqlite": f"sqlite:///{home / 'ingest.db'}"}
        pg = os.environ.get("WMTP_TEST_POSTGRES_URL")
        with postgres_database(pg) if pg else nullcontext("") as pg_url:
            if pg_url:
                targets["postgresql"] = pg_url
            for name, url in targets.items():
                rates = bench_ingest(url, home / f"runs-{name}", args.lines)
                print(f"{name:12s} " + " ".join(f"{rates[b]:12.0f} " for b in (1, 10, 100)))
                report[f"ingest_points_per_s_{name}"] = rates

        write_s = bench_write_cost(home / "write" / "metrics.jsonl", args.lines)
        visible = bench_visibility(home / "visibility", args.steps)
        print("\n(c) metric line written -> visible      n       p50       p95       max")
        print(row("written -> store (s)", visible))
        print(
            f"trainer-side write per line: {write_s * 1e6:.1f} µs (append + flush; no database, no network)"
        )
        report |= {"visible_s": visible, "trainer_write_us_per_line": write_s * 1e6}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
