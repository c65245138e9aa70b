"""`wmtp-worker` as a real subprocess (with its in-process Huey consumer) on a real SQLite store and SqliteHuey
queue in a temp home: runs submitted from the CLI are woken up through Huey and run to completion; SIGTERM
unregisters and exits 0; after kill -9 of the worker and its trainer a new worker reaps the lease and resumes."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.integration.jobs import ROOT, child_sessions, wait_for
from tests.integration.studio_fixtures import submit
from wmtp_studio import store
from wmtp_studio.rundir.metrics import read_metrics
from wmtp_studio.workers.supervise import kill_stragglers

pytestmark = pytest.mark.slow

ENQUEUE = "import sys; from wmtp_studio.taskqueue import announce; announce([int(a) for a in sys.argv[1:]])"


def status(engine: Engine, run_id: int) -> str:
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None
    return run.status


def test_worker_runs_huey_woken_jobs_and_stops_on_sigterm(
    env: dict[str, str], engine: Engine, worker, tmp_path
):
    # --poll-s 60: within this test the runs can only be claimed through the Huey wake-up (or a finished slot).
    daemon = worker("--cpu", "--slots", "1", "--poll-s", "60")
    wait_for(lambda: len(store.list_workers(engine=engine)) == 1, 30, "registration")
    (row,) = store.list_workers(engine=engine)
    assert (row.pid, row.slots) == (daemon.pid, ["cpu"])
    ids = [submit(env, "train.steps=20"), submit(env, "train.steps=20")]
    subprocess.run([sys.executable, "-c", ENQUEUE, *map(str, ids)], env=env, cwd=ROOT, check=True, timeout=60)
    wait_for(lambda: all(status(engine, i) in ("succeeded", "failed") for i in ids), 120, "both runs")
    log = (tmp_path / "worker0.log").read_text()
    assert [status(engine, i) for i in ids] == ["succeeded", "succeeded"], log
    for run_id in ids:
        run = store.get_run(engine=engine, run_id=run_id)
        assert run is not None and run.attempts == 1 and run.exit_code == 0
        assert store.last_seq(engine=engine, run_id=run_id) > 0
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=30) == 0, log
    assert store.list_workers(engine=engine) == []


def test_dead_worker_lease_is_reaped_and_the_run_resumes(
    env: dict[str, str], engine: Engine, worker, tmp_path
):
    run_id = submit(env, "train.steps=60", "train.checkpoint_every=10", "train.log_every=1")
    first = worker("--cpu", "--slots", "1", "--lease-s", "3", "--poll-s", "0.5")
    run_dir = Path(store.get_run(engine=engine, run_id=run_id).run_dir)  # type: ignore[union-attr]
    wait_for(lambda: (run_dir / "checkpoints" / "latest").is_file(), 90, "a first checkpoint")
    killed_at = int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    (sid,) = child_sessions(first.pid)  # the trainer's session
    first.kill()  # a dead host: the worker and its trainer die without a word
    first.wait()
    assert kill_stragglers(sid), f"session {sid} survived SIGKILL"
    assert status(engine, run_id) == "running"
    second = worker("--cpu", "--slots", "1", "--lease-s", "3", "--poll-s", "0.5")
    wait_for(lambda: status(engine, run_id) in ("succeeded", "failed"), 150, "the resumed run")
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None and run.status == "succeeded", (tmp_path / "worker1.log").read_text()
    assert run.attempts == 2 and run.exit_code == 0
    steps = [m.step for m in read_metrics(run_dir / "metrics.jsonl") if m.kind == "train"]
    assert 0 < killed_at < 60 and steps == sorted(set(steps)) and steps[-1] == 60
    seqs = [m.seq for m in read_metrics(run_dir / "metrics.jsonl")]
    assert seqs == list(range(len(seqs)))  # gapless, no duplicates after the resume
    assert store.last_seq(engine=engine, run_id=run_id) == seqs[-1]
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    # only the dead worker's row is left (it never unregistered; its heartbeat goes stale)
    assert [w.pid for w in store.list_workers(engine=engine)] == [first.pid]
