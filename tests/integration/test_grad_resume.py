"""grad-wmtp's running score statistics are checkpointed and restored exactly: interrupted and resumed equals
straight, loss for loss, and the EMA is logged per head at every step."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.integration.conftest import lines, make_run, train_losses
from wmtp_studio.rundir.checkpoints import read_trainer_state
from wmtp_studio.train import checkpoint as ckpt
from wmtp_studio.train.loop import EXIT_INTERRUPTED, train

ARGS = ("train.steps=8", "train.checkpoint_every=100", "train.batch_size=8")


def test_interrupted_and_resumed_equals_straight_with_the_score_ema(tmp_path: Path) -> None:
    straight = make_run(tmp_path / "straight", "tiny-grad-wmtp.yaml", *ARGS)
    assert train(straight) == 0

    interrupted = make_run(tmp_path / "interrupted", "tiny-grad-wmtp.yaml", *ARGS)

    def sigterm_at_3(step: int, _total: int, _m: dict[str, float]) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    assert train(interrupted, progress=sigterm_at_3) == EXIT_INTERRUPTED
    latest = ckpt.latest_checkpoint(interrupted)
    assert latest is not None and latest.name == "step_4"
    saved = read_trainer_state(latest).score_ema
    assert saved is not None and len(saved) == 4 and all(e is not None for e in saved)
    assert train(interrupted, resume=True) == 0

    # Loss for loss: a resume that re-initialised the EMA from step 5's batch (or lost digits) differs here.
    a, b = train_losses(straight), train_losses(interrupted)
    assert sorted(a) == list(range(1, 9)) == sorted(b)
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6 * max(1.0, abs(a[step])), step
    final = [read_trainer_state(r / "checkpoints" / "step_8").score_ema for r in (straight, interrupted)]
    assert final[0] == final[1]  # exactly: the float64 statistics round-trip through JSON digit for digit

    # Logged per head at every step: mu and sigma of the running statistics (sigma = sqrt of the variance).
    train_lines = [m for m in lines(straight) if m["kind"] == "train"]
    mu = [m["metrics"]["head1/score_mu"] for m in train_lines]
    assert len(mu) == 8 and len(set(mu)) > 1  # it moves
    last = train_lines[-1]["metrics"]
    assert final[0] is not None and final[0][1] is not None
    assert abs(last["head1/score_mu"] - final[0][1][0]) <= 1e-6  # logged as float32
    assert abs(last["head1/score_sigma"] - final[0][1][1] ** 0.5) <= 1e-6 * final[0][1][1] ** 0.5
