"""`wmtp_studio.workers.supervise` with real trainer subprocesses on a real SQLite store: completion, cancel, worker
shutdown and resume, failure, fencing."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.integration.conftest import FAST, RECIPES
from tests.integration.jobs import session_left, wait_for
from wmtp_studio import store
from wmtp_studio.models import Run, utcnow
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.metrics import read_metrics
from wmtp_studio.train import checkpoint as ckpt
from wmtp_studio.workers.supervise import JobOutcome, MetricsTail, launch_command, supervise

OWNER = "worker-a"


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = store.make_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    store.upgrade(engine=eng)
    return eng


def _claim(engine: Engine, tmp_path: Path, *overrides: str) -> Run:
    recipe = load_recipe(RECIPES / "tiny-ntp.yaml", [*FAST, *overrides])
    with store.submission(engine=engine, runs_dir=tmp_path / "runs") as sub:
        sub.add_run(recipe=recipe)
    run = store.claim_next_run(engine=engine, owner=OWNER, gpus_free=0, lease_s=30)
    assert run is not None
    return run


def _wait_for(cond: Callable[[], bool], fut: Future[JobOutcome], what: str) -> None:
    """jobs.wait_for, failing at once if supervise ends first."""

    def ready() -> bool:
        assert not fut.done(), f"supervise ended early, before {what}: {fut.result()}"
        return cond()

    wait_for(ready, 60, what)


def _has_train_points(engine: Engine, run_id: int) -> bool:
    return bool(store.points_since(engine=engine, run_id=run_id, after_seq=-1, names=["train/loss"]).points)


def test_launch_command() -> None:
    run = Run(recipe_json="{}", recipe_sha256="", algorithm="ntp", seed=0, run_dir="runs/7")
    assert launch_command(run, gpus=(), processes=1)[1:] == [
        *("-m", "wmtp_studio.train", "--run-dir", "runs/7", "--resume")
    ]
    two = launch_command(run, gpus=(0, 1), processes=2)
    assert two[1:7] == [
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "2",
        "--multi_gpu",
        "--mixed_precision",
    ]
    assert "--multi_gpu" not in launch_command(run, gpus=(3,), processes=1)


def test_tail_reads_complete_lines_skips_malformed_and_restarts_after_truncation(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    line = '{"seq": %d, "step": 0, "time": 0, "kind": "event", "event": "start"}\n'
    tail = MetricsTail(path)
    assert tail.read() == []  # no file yet
    path.write_text(line % 0 + "not json\n" + line % 1 + '{"seq": 2')
    assert [ln.seq for ln in tail.read()] == [0, 1] and tail.malformed == 1
    with open(path, "a") as fh:
        fh.write(', "step": 0, "time": 0, "kind": "train"}\n')
    assert [ln.seq for ln in tail.read()] == [2]
    path.write_text(line % 0)  # cut back by a resume: read again from the start
    assert [ln.seq for ln in tail.read()] == [0]


def test_run_to_completion_ingests_every_line(engine: Engine, tmp_path: Path) -> None:
    run = _claim(engine, tmp_path, "train.steps=30")
    assert run.id is not None
    out = supervise(engine=engine, run=run, owner=OWNER, token=run.fencing_token, lease_s=30, poll_s=0.2)
    assert (out.status, out.exit_code, out.malformed) == ("succeeded", 0, 0), out
    lines = read_metrics(Path(run.run_dir) / "metrics.jsonl")
    assert store.last_seq(engine=engine, run_id=run.id) == lines[-1].seq == len(lines) - 1
    points = store.points_since(engine=engine, run_id=run.id, after_seq=-1, names=["train/loss"]).points
    assert len(points) == sum(ln.kind == "train" for ln in lines) == 30
    assert store.ingest_metric_lines(engine=engine, run_id=run.id, lines=lines) == 0
    row = store.get_run(engine=engine, run_id=run.id)
    assert row is not None and (row.status, row.exit_code, row.lease_owner) == ("succeeded", 0, None)
    assert (Path(run.run_dir) / "train.log").exists()
    assert out.pid is not None and not session_left(out.pid)


def test_cancel_stops_the_whole_session(engine: Engine, tmp_path: Path) -> None:
    run = _claim(engine, tmp_path, "train.steps=2000")
    assert run.id is not None
    grace = 20.0
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(
            supervise, engine=engine, run=run, owner=OWNER, token=run.fencing_token, poll_s=0.2, grace_s=grace
        )
        _wait_for(lambda: _has_train_points(engine, run.id or 0), fut, "train points")
        # the trainer's progress lines reach train.log (the Log tab) while it trains, not at the end
        log = Path(run.run_dir) / "train.log"
        _wait_for(
            lambda: log.exists() and " step " in log.read_text() and "loss" in log.read_text(),
            fut,
            "a step in the log",
        )
        store.request_cancel(engine=engine, run_id=run.id)
        asked = time.monotonic()
        out = fut.result(timeout=grace + 10)
    assert time.monotonic() - asked < grace
    assert (out.status, out.exit_code) == ("cancelled", 143), out
    assert out.pid is not None and not session_left(out.pid)
    row = store.get_run(engine=engine, run_id=run.id)
    assert row is not None and (row.status, row.exit_code) == ("cancelled", 143)


def test_shutdown_hands_back_then_resumes_gapless(engine: Engine, tmp_path: Path) -> None:
    run = _claim(engine, tmp_path, "train.steps=40", "train.checkpoint_every=1000")
    assert run.id is not None
    stop = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(
            supervise, engine=engine, run=run, owner=OWNER, token=run.fencing_token, poll_s=0.2, stop=stop
        )
        _wait_for(lambda: _has_train_points(engine, run.id or 0), fut, "train points")
        stop.set()
        out = fut.result(timeout=40)
    assert (out.status, out.exit_code) == ("queued", 143), out
    assert ckpt.latest_checkpoint(Path(run.run_dir)) is not None  # checkpointed on SIGTERM
    row = store.get_run(engine=engine, run_id=run.id)
    assert row is not None and (row.status, row.lease_owner) == ("queued", None)

    again = store.claim_next_run(engine=engine, owner="worker-b", gpus_free=0, lease_s=30)
    assert again is not None and again.id == run.id
    out = supervise(engine=engine, run=again, owner="worker-b", token=again.fencing_token, poll_s=0.2)
    assert (out.status, out.exit_code) == ("succeeded", 0), out
    lines = read_metrics(Path(run.run_dir) / "metrics.jsonl")
    assert "resumed" in [ln.event for ln in lines]
    assert [ln.seq for ln in lines] == list(range(len(lines)))
    point_seqs = {p.seq for p in store.points_since(engine=engine, run_id=run.id, after_seq=-1).points}
    blob_seqs = [b.seq for b in store.metric_blobs_since(engine=engine, run_id=run.id, after_seq=-1)]
    assert len(blob_seqs) == len(set(blob_seqs))
    assert sorted(point_seqs | set(blob_seqs)) == list(range(len(lines)))  # gapless 0..N
    steps = [
        p.step
        for p in store.points_since(engine=engine, run_id=run.id, after_seq=-1, names=["train/loss"]).points
    ]
    assert steps == list(range(1, 41))  # every step exactly once
    stored = {
        b.seq: b.payload["event"]
        for b in store.metric_blobs_since(engine=engine, run_id=run.id, after_seq=-1)
    }
    assert {ln.seq: ln.event for ln in lines if ln.kind == "event"} == {
        k: v for k, v in stored.items() if v is not None
    }  # the store holds the resumed stream, not the lines the trainer cut back


def test_failing_run_records_the_log_tail(engine: Engine, tmp_path: Path) -> None:
    run = _claim(engine, tmp_path, "data.source=jsonl", f"data.path={tmp_path / 'missing.jsonl'}")
    assert run.id is not None
    out = supervise(engine=engine, run=run, owner=OWNER, token=run.fencing_token, poll_s=0.2)
    assert (out.status, out.exit_code) == ("failed", 2), out
    assert "missing.jsonl" in out.error_tail
    row = store.get_run(engine=engine, run_id=run.id)
    assert row is not None and row.status == "failed" and "missing.jsonl" in (row.error_tail or "")
    assert "missing.jsonl" in (store.failure_reason(row) or "")  # the one line the dashboard shows


def test_stale_token_kills_the_child_and_records_nothing(engine: Engine, tmp_path: Path) -> None:
    run = _claim(engine, tmp_path, "train.steps=2000")
    assert run.id is not None
    assert store.requeue_expired_leases(engine=engine, now=utcnow() + timedelta(hours=1)) == [run.id]
    newer = store.claim_next_run(engine=engine, owner="worker-b", gpus_free=0, lease_s=30)
    assert newer is not None and newer.fencing_token == run.fencing_token + 1
    started = time.monotonic()
    out = supervise(engine=engine, run=run, owner=OWNER, token=run.fencing_token, poll_s=0.2)
    assert out.status == "fenced" and time.monotonic() - started < 10, out
    assert out.pid is not None and not session_left(out.pid)
    row = store.get_run(engine=engine, run_id=run.id)
    assert row is not None
    assert (row.status, row.lease_owner, row.fencing_token, row.exit_code) == (
        "running",
        "worker-b",
        newer.fencing_token,
        None,
    )


def test_the_recipes_evaluations_run_after_training_and_are_stored(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker's environment names this very studio (as a daemon's does): the evaluation is still stored
    # once, by the worker (an evaluator that also stored it, as `wmtp eval` of a studio run does, doubled it).
    monkeypatch.setenv("WMTP_DATABASE_URL", str(engine.url))
    monkeypatch.setenv("WMTP_RUNS_DIR", str(tmp_path / "runs"))
    run = _claim(
        engine,
        tmp_path,
        "train.steps=30",
        "eval.benchmarks=[generated:basic:10]",
        "eval.k=[1]",
        "eval.timeout_s=4",
    )
    out = supervise(engine=engine, run=run, owner=OWNER, token=run.fencing_token, poll_s=0.2)
    assert (out.status, out.exit_code) == ("succeeded", 0), out
    (ev,) = store.list_evaluations(engine=engine, run_id=run.id or 0)
    assert (ev.benchmark, ev.k, ev.n_problems) == ("generated:basic:10", 1, 10)
    assert ev.ci_low <= ev.pass_at_k <= ev.ci_high and ev.protocol["isolation_tier"]
    assert (
        ev.protocol["protocol"]["timeout_s"] == 4.0
    )  # the recipe's limit reached the sandbox and the record
    samples = (
        Path(ev.protocol["samples"]).read_text().splitlines()
    )  # where the dashboard finds why each failed
    assert len(samples) == 10 and all("detail" in json.loads(line) for line in samples)
    names = {p.name for p in store.points_since(engine=engine, run_id=run.id or 0, after_seq=-1).points}
    assert "eval/generated:basic:10/pass@1" in names  # the eval line, keyed by its benchmark, was ingested
    assert "eval/pass@1" not in names
