"""Faults under a real `wmtp-worker` on a real SQLite store: the trainer killed with SIGKILL mid-run (the worker
lives on), started directly or through `accelerate launch`, is re-queued and resumed from its checkpoint with a
gapless stream; dead workers' rows are shown as dead and forgotten by the reaper. (kill -9 of the whole worker:
tests/integration/test_worker.py.)"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col

from tests.integration.conftest import RECIPES
from tests.integration.jobs import studio, trainer_pids, wait_for
from tests.integration.studio_fixtures import TINY
from wmtp_studio import store
from wmtp_studio.models import Worker, utcnow
from wmtp_studio.rundir.metrics import read_metrics
from wmtp_studio.workers.supervise import killed_by_signal

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("gpus", [0, 1], ids=["python", "accelerate-launch"])
def test_trainer_killed_mid_run_is_resumed_from_its_checkpoint(
    gpus: int,
    env: dict[str, str],
    engine: Engine,
    worker: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    # gpus=1: the run asks for a GPU and the worker offers GPU 0, so the job goes through `accelerate launch`
    # (on a machine without CUDA the trainer ignores CUDA_VISIBLE_DEVICES and trains on the CPU).
    sets = ["--set=train.steps=30", "--set=train.checkpoint_every=5", f"--gpus={gpus}"]
    run_id = int(studio(env, "submit", str(RECIPES / "tiny-ntp.yaml"), *TINY, *sets).strip().splitlines()[-1])
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None
    run_dir = Path(run.run_dir)
    daemon = worker("--gpus=0" if gpus else "--cpu", "--slots", "1", "--lease-s", "5", "--poll-s", "0.5")
    wait_for(lambda: (run_dir / "checkpoints" / "latest").is_file(), 120, "a first checkpoint")
    checkpoint = int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    pids = trainer_pids(run_dir)
    assert len(pids) == 1, pids
    os.kill(pids[0], signal.SIGKILL)  # only the trainer: its worker (and launcher) live on

    finished = ("succeeded", "failed", "cancelled")
    wait_for(
        lambda: getattr(store.get_run(engine=engine, run_id=run_id), "status", "") in finished, 180, "the run"
    )
    log = (tmp_path / "worker0.log").read_text()
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None and (run.status, run.exit_code) == ("succeeded", 0), log
    assert (run.attempts, run.consecutive_crashes) == (2, 0), log
    assert daemon.poll() is None  # the same worker took it up again
    lines = read_metrics(run_dir / "metrics.jsonl")
    assert 0 < checkpoint < 30
    assert [ln.seq for ln in lines] == list(range(len(lines)))  # gapless, no duplicates after the resume
    assert [ln.event for ln in lines if ln.event in ("start", "resumed")] == ["start", "resumed"]
    assert [ln.step for ln in lines if ln.kind == "train"] == list(range(1, 31))  # every step once
    point_seqs = {p.seq for p in store.points_since(engine=engine, run_id=run_id, after_seq=-1).points}
    blob_seqs = [b.seq for b in store.metric_blobs_since(engine=engine, run_id=run_id, after_seq=-1)]
    assert len(blob_seqs) == len(set(blob_seqs))
    assert sorted(point_seqs | set(blob_seqs)) == list(range(len(lines)))  # the store holds the same stream
    steps = [
        p.step
        for p in store.points_since(engine=engine, run_id=run_id, after_seq=-1, names=["train/loss"]).points
    ]
    assert steps == list(range(1, 31))


def _backdated_worker(engine: Engine, worker_id: str, silent_for: timedelta) -> None:
    store.register_worker(engine=engine, worker_id=worker_id, host="gone", pid=1, slots=["cpu"], version="0")
    with engine.begin() as conn:  # a host that died that long ago
        conn.execute(
            sa.update(Worker).where(col(Worker.id) == worker_id).values(heartbeat_at=utcnow() - silent_for)
        )


def test_dead_workers_are_shown_dead_and_forgotten_by_the_reaper(
    env: dict[str, str], engine: Engine, worker: Callable[..., subprocess.Popen[bytes]]
) -> None:
    _backdated_worker(engine, "gone:1", timedelta(minutes=5))
    _backdated_worker(engine, "gone:2", timedelta(hours=2))
    rows = {w["id"]: w for w in json.loads(studio(env, "workers", "--json"))}
    assert {k: w["alive"] for k, w in rows.items()} == {"gone:1": False, "gone:2": False}
    assert "dead" in studio(env, "workers")
    daemon = worker("--cpu", "--lease-s", "5", "--poll-s", "0.5")
    wait_for(lambda: "gone:2" not in {w.id for w in store.list_workers(engine=engine)}, 60, "the reaper")
    rows = {w["id"]: w for w in json.loads(studio(env, "workers", "--json"))}
    assert {k: w["alive"] for k, w in rows.items()} == {
        "gone:1": False,
        f"{socket.gethostname()}:{daemon.pid}": True,
    }


def test_only_deaths_by_signal_count_as_crashes() -> None:
    accelerate = (
        "Traceback ...\nsubprocess.CalledProcessError: Command '[...]' died with <Signals.SIGKILL: 9>.\n"
    )
    torchrun = "  exitcode  : -9 (pid: 4242)\n  traceback : Signal 9 (SIGKILL) received by PID 4242\n=====\n"
    assert killed_by_signal(-9, "") and killed_by_signal(137, "")  # the trainer itself, or through a shell
    assert killed_by_signal(1, accelerate) and killed_by_signal(1, torchrun)  # its launcher reports it
    assert not killed_by_signal(1, "error: training aborted: 5 consecutive steps with a non-finite loss")
    assert not killed_by_signal(2, "error: data.path: no such file") and not killed_by_signal(0, accelerate)
    assert not killed_by_signal(1, accelerate + "\n".join(["later output"] * 20))  # an older attempt's death
