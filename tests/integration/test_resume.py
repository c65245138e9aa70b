"""Interrupt with SIGTERM, resume, and get exactly the run that was never interrupted."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.integration.conftest import assert_same_training, lines, make_run
from wmtp_studio.rundir.checkpoints import read_trainer_state
from wmtp_studio.train import checkpoint as ckpt
from wmtp_studio.train.loop import EXIT_INTERRUPTED, train


def test_sigterm_checkpoint_then_resume_equals_straight_run(tmp_path: Path) -> None:
    args = ("train.steps=20", "train.checkpoint_every=100")
    straight = make_run(tmp_path / "straight", "tiny-baseline-mtp.yaml", *args)
    assert train(straight) == 0

    interrupted = make_run(tmp_path / "interrupted", "tiny-baseline-mtp.yaml", *args)

    def sigterm_at_10(step: int, _total: int, _m: dict[str, float]) -> None:
        if step == 10:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train(interrupted, progress=sigterm_at_10) == EXIT_INTERRUPTED
    latest = ckpt.latest_checkpoint(interrupted)
    assert latest is not None and latest.name == "step_11"  # checkpointed at the next step boundary
    assert not (interrupted / "model").exists()
    assert train(interrupted, resume=True) == 0

    assert_same_training(straight, interrupted, 20)

    stream = lines(interrupted)
    assert [m["seq"] for m in stream] == list(range(len(stream)))  # gapless, no duplicates
    events = [m["event"] for m in stream if m["kind"] == "event"]
    assert events[0] == "start" and "resumed" in events and events[-1] == "done"
    assert "interrupted" not in events  # cut back to the checkpoint's offset on resume


def test_resume_without_checkpoint_starts_fresh_and_checkpoints_publish_atomically(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "r",
        "tiny-ntp.yaml",
        "train.steps=6",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=2",
    )
    assert train(run, resume=True) == 0
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["latest", "step_4", "step_6"]  # pruned to 2, no staging dirs left behind
    assert (run / "checkpoints" / "latest").read_text() == "step_6"
    state = read_trainer_state(run / "checkpoints" / "step_6")
    assert state.step == 6 and state.seq > 0
