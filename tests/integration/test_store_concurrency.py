"""The store under real concurrency: several processes (spawned, each with its own engine) on one SQLite file.

With `WMTP_TEST_POSTGRES_URL=postgresql+psycopg://...` set, the claim test also runs on that (emptied) database.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
import traceback
from collections import Counter
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from wmtp_studio import store
from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import Recipe, load_recipe
from wmtp_studio.rundir.metrics import MetricLine

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny-ntp.yaml"
CTX = mp.get_context("spawn")
POSTGRES_URL = os.environ.get("WMTP_TEST_POSTGRES_URL")


def _report(results: Any, name: str, fn: Any, *args: Any) -> None:
    """Run fn in this child and send ("ok", value) or ("error", traceback) to the parent."""
    try:
        results.put((name, "ok", fn(*args)))
    except BaseException:
        results.put((name, "error", traceback.format_exc()))


def _join(procs: list[Any], results: Any, timeout: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for _ in procs:
        name, kind, value = results.get(timeout=timeout)
        assert kind == "ok", f"{name} failed:\n{value}"
        out[name] = value
    for p in procs:
        p.join(timeout=10)
        assert p.exitcode == 0
    return out


# --- (a) 1000 runs submitted from 3 processes, claimed by the same 3: none lost, none claimed twice --------------


def _submit_and_claim(url: str, runs_dir: str, n: int, owner: str, barrier: Barrier) -> list[int]:
    engine = store.make_engine(url)
    store.upgrade(engine=engine)  # all three upgrade the fresh file at once, as workers do on start
    recipe = load_recipe(RECIPE, [])
    barrier.wait()
    for _ in range(n):
        with store.submission(engine=engine, runs_dir=Path(runs_dir)) as sub:
            sub.add_run(recipe=recipe)
    barrier.wait()
    claimed = []
    while (run := store.claim_next_run(engine=engine, owner=owner, gpus_free=0, lease_s=300)) is not None:
        claimed.append(run.id or 0)
    return claimed


def _claimer(url: str, runs_dir: str, n: int, owner: str, barrier: Barrier, results: Any) -> None:
    _report(results, owner, _submit_and_claim, url, runs_dir, n, owner, barrier)


@pytest.mark.slow
@pytest.mark.parametrize(
    "dialect",
    [
        "sqlite",
        pytest.param("postgresql", marks=pytest.mark.skipif(not POSTGRES_URL, reason="no PostgreSQL")),
    ],
)
def test_1000_runs_three_processes_each_claimed_once(tmp_path: Path, dialect: str) -> None:
    url = f"sqlite:///{tmp_path / 'studio.db'}" if dialect == "sqlite" else POSTGRES_URL or ""
    if dialect == "postgresql":
        with store.make_engine(url).begin() as conn:
            conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    barrier, results = CTX.Barrier(3), CTX.Queue()
    shares = {"w0": 334, "w1": 333, "w2": 333}
    procs = [
        CTX.Process(target=_claimer, args=(url, str(tmp_path / "runs"), n, owner, barrier, results))
        for owner, n in shares.items()
    ]
    for p in procs:
        p.start()
    claims = _join(procs, results, timeout=120)

    all_claims = [run_id for ids in claims.values() for run_id in ids]
    counts = Counter(all_claims)
    assert len(all_claims) == 1000 and max(counts.values()) == 1  # none lost, none twice
    engine = store.make_engine(url)
    runs = store.list_runs(engine=engine, limit=2000)
    assert sorted(counts) == sorted(r.id or 0 for r in runs)
    assert {(r.status, r.attempts, r.fencing_token) for r in runs} == {("running", 1, 1)}
    owner_of = {run_id: owner for owner, ids in claims.items() for run_id in ids}
    assert all(owner_of[r.id or 0] == r.lease_owner for r in runs)
    assert all(len(ids) > 0 for ids in claims.values())  # all three really competed


# --- (b) 4 writers + 1 reader at once: no OperationalError reaches any caller, every write is there -----------
# Each writer does a fixed amount of work (a fixed duration made the checks depend on the machine's speed).

CREATES = 15  # runs each creator submits
BATCHES = 6  # metric batches each ingester streams
BATCH = 50


def _create_runs(url: str, runs_dir: str, start: Event) -> list[int]:
    engine, recipe = store.make_engine(url), load_recipe(RECIPE, [])
    start.wait()
    ids = []
    for _ in range(CREATES):
        with store.submission(engine=engine, runs_dir=Path(runs_dir)) as sub:
            ids.append(sub.add_run(recipe=recipe).id or 0)
    return ids


def _ingest(url: str, run_id: int, start: Event) -> int:
    """Stream metric batches like the supervisor does; each batch is ingested twice (a tailer restart)."""
    engine = store.make_engine(url)
    start.wait()
    seq = 0
    for _ in range(BATCHES):
        batch = [
            MetricLine(
                seq=s, step=s, time=time.time(), kind="train", metrics={"loss": 1.0 / (s + 1), "lr": 1e-3}
            )
            for s in range(seq, seq + BATCH)
        ]
        assert store.ingest_metric_lines(engine=engine, run_id=run_id, lines=batch) == 2 * BATCH
        assert store.ingest_metric_lines(engine=engine, run_id=run_id, lines=batch) == 0
        seq += BATCH
    return seq


def _poll(url: str, run_ids: list[int], start: Event, stop: Event) -> dict[int, int]:
    """Poll with a cursor like the TUI; check every poll returns seqs in order, continuing the cursor."""
    engine = store.make_engine(url)
    cursors = dict.fromkeys(run_ids, -1)
    start.wait()
    while True:
        done = stop.is_set()
        for run_id in run_ids:
            points = store.points_since(engine=engine, run_id=run_id, after_seq=cursors[run_id]).points
            seqs = [p.seq for p in points]
            assert seqs == sorted(seqs) and all(s > cursors[run_id] for s in seqs)
            cursors[run_id] = max(seqs, default=cursors[run_id])
        store.list_runs(engine=engine, limit=20)
        if done:
            return cursors
        time.sleep(0.02)


def _writer(kind: str, name: str, args: tuple[Any, ...], results: Any) -> None:
    fn = {"create": _create_runs, "ingest": _ingest, "poll": _poll}[kind]
    _report(results, name, fn, *args)


@pytest.mark.slow
def test_writers_and_reader_never_see_locked_database(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'studio.db'}"
    engine = store.make_engine(url)
    store.upgrade(engine=engine)
    recipe: Recipe = load_recipe(RECIPE, [])
    with store.submission(engine=engine, runs_dir=tmp_path / "runs") as sub:
        streams = [sub.add_run(recipe=recipe).id or 0 for _ in "ab"]
    start, stop, results = CTX.Event(), CTX.Event(), CTX.Queue()
    jobs: list[tuple[str, str, tuple[Any, ...]]] = [
        ("create", "create0", (url, str(tmp_path / "runs"), start)),
        ("create", "create1", (url, str(tmp_path / "runs"), start)),
        ("ingest", "ingest0", (url, streams[0], start)),
        ("ingest", "ingest1", (url, streams[1], start)),
    ]
    writers = [CTX.Process(target=_writer, args=(*job, results)) for job in jobs]
    reader = CTX.Process(target=_writer, args=("poll", "reader", (url, streams, start, stop), results))
    for p in [*writers, reader]:
        p.start()
    time.sleep(1.0)  # let the spawned interpreters import before the clock starts
    start.set()
    written = _join(writers, results, timeout=120)
    stop.set()
    cursors = _join([reader], results, timeout=60)["reader"]

    created = written["create0"] + written["create1"]
    assert len(created) == 2 * CREATES and len(set(created)) == len(created)
    assert {r.id for r in store.list_runs(engine=engine, limit=100_000)} == {*streams, *created}
    for i, run_id in enumerate(streams):
        n_lines = written[f"ingest{i}"]
        assert n_lines == BATCHES * BATCH
        points = store.points_since(engine=engine, run_id=run_id, after_seq=-1).points
        assert len(points) == 2 * n_lines and store.last_seq(engine=engine, run_id=run_id) == n_lines - 1
        assert cursors[run_id] == n_lines - 1  # the reader's last poll saw the whole stream


# --- (c) models.py and the migrations agree ------------------------------------------------------------------


def test_models_match_migrations(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    store.upgrade(engine=engine)
    store.check_models_match_migrations(engine=engine)
    # The check does catch drift: drop an index the models declare.
    with engine.begin() as conn:
        conn.execute(sa.text("DROP INDEX ix_metricpoint_run_name_step"))
    with pytest.raises(StudioError, match="ix_metricpoint_run_name_step"):
        store.check_models_match_migrations(engine=engine)
