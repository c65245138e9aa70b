"""kill -9 of the worker only (its trainer is left to itself): the trainer checkpoints and exits on its own, never
two trainers train one run directory, and the next worker finishes the run with a gapless stream. A trainer never
resumes another run's checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.integration.conftest import lines, make_run
from tests.integration.jobs import ROOT, trainer_pids, wait_for
from tests.integration.studio_fixtures import submit
from wmtp_studio import store
from wmtp_studio.errors import StudioError
from wmtp_studio.rundir.metrics import read_metrics
from wmtp_studio.train.loop import train

pytestmark = pytest.mark.slow
STEPS = 60


def _events(run_dir: Path) -> list[str]:
    if not (run_dir / "metrics.jsonl").exists():  # killed before it wrote anything
        return []
    return [ln.event or "" for ln in read_metrics(run_dir / "metrics.jsonl") if ln.kind == "event"]


def _wait_for_moment(run_dir: Path, moment: str) -> None:
    if moment == "start":  # the trainer process exists, still importing torch or building the model
        wait_for(lambda: bool(trainer_pids(run_dir)), 120, "the trainer")
    elif moment == "mid-train":
        wait_for(lambda: (run_dir / "checkpoints" / "latest").is_file(), 120, "a first checkpoint")
    else:  # a checkpoint being written: its staging directory exists (briefly: look often)
        staging = run_dir / "checkpoints"
        wait_for(lambda: any(staging.glob(".tmp-step_*")), 120, "a checkpoint in progress", every=0.005)


@pytest.mark.parametrize("moment", ["start", "mid-train", "mid-checkpoint"])
def test_a_killed_workers_trainer_stops_and_the_next_worker_finishes_the_run(
    moment: str,
    env: dict[str, str],
    engine: Engine,
    worker: Callable[..., subprocess.Popen[bytes]],
    tmp_path: Path,
) -> None:
    every = 5 if moment == "mid-checkpoint" else 10
    run_id = submit(env, f"train.steps={STEPS}", f"train.checkpoint_every={every}")
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None
    run_dir = Path(run.run_dir)
    first = worker("--cpu", "--lease-s", "3", "--poll-s", "0.5")
    _wait_for_moment(run_dir, moment)
    first.send_signal(signal.SIGKILL)  # the worker only: its trainer runs in a session of its own
    first.wait()
    # Old behaviour: the orphan trained on to the end (or alongside the next worker's trainer).
    wait_for(lambda: not trainer_pids(run_dir), 60, "the orphaned trainer to exit")
    assert "done" not in _events(run_dir)
    if moment != "start" and _events(run_dir):
        assert _events(run_dir)[-1] == "interrupted"  # it checkpointed at the next step boundary
    second = worker("--cpu", "--lease-s", "3", "--poll-s", "0.5")
    trainers = [0]  # how many trainers train the run directory, at each look

    def finished() -> bool:
        trainers.append(len(trainer_pids(run_dir)))
        return getattr(store.get_run(engine=engine, run_id=run_id), "status", "") in ("succeeded", "failed")

    wait_for(finished, 240, "the run", every=0.1, log=tmp_path / "worker1.log")
    log = (tmp_path / "worker1.log").read_text()
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None and (run.status, run.exit_code) == ("succeeded", 0), log + (run.error_tail or "")
    assert max(trainers) <= 1 and second.poll() is None
    stream = read_metrics(run_dir / "metrics.jsonl")
    assert [ln.seq for ln in stream] == list(range(len(stream)))  # gapless, no duplicates
    assert [ln.step for ln in stream if ln.kind == "train"] == list(range(1, STEPS + 1))  # every step once
    stored = store.points_since(engine=engine, run_id=run_id, after_seq=-1, names=["train/loss"]).points
    assert [p.step for p in stored] == list(range(1, STEPS + 1))


def test_a_second_trainer_of_a_run_directory_refuses_and_exits_75(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", "tiny-ntp.yaml", "train.steps=5000", "train.checkpoint_every=1000")
    cmd = [sys.executable, "-m", "wmtp_studio.train", "--run-dir", str(run), "--resume"]
    first = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(
            lambda: "start" in _events(run) if (run / "metrics.jsonl").exists() else False, 120, "training"
        )
        second = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert second.returncode == 75, second.stderr
        assert f"run directory {run} is in use by another trainer (pid {first.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        assert first.poll() is None  # undisturbed
        assert _events(run).count("start") == 1
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 143 and _events(run)[-1] == "interrupted"


def test_a_checkpoint_of_another_run_is_never_resumed(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", "tiny-ntp.yaml", "train.steps=2", "train.checkpoint_every=1")
    assert train(run) == 0
    stamp = json.loads((run / "run.json").read_text())
    # The directory now claims to belong to another run (what a reset database's new run 1 would be).
    (run / "run.json").write_text(json.dumps(stamp | {"uid": "0" * 32}))
    with pytest.raises(StudioError, match=f"refusing to resume .*step_2: it belongs to run {stamp['uid']}"):
        train(run, resume=True)
    # Same identity, but the frozen recipe was changed under it: refused too.
    (run / "run.json").write_text(json.dumps(stamp | {"recipe_sha256": "f" * 64}))
    with pytest.raises(StudioError, match=r"refusing to resume .*trained with recipe"):
        train(run, resume=True)
    assert [m["event"] for m in lines(run) if m["kind"] == "event"][-1] == "done"  # nothing more was written
    assert os.path.isdir(run / "checkpoints" / "step_2")
