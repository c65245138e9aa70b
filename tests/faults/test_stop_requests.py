"""Stop requests (SIGTERM) are honoured at every step boundary, also during a streak of skipped non-finite steps,
and an aborted run reports how many non-finite steps it skipped."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import lines, make_run
from tests.integration.jobs import ROOT, wait_for
from wmtp_studio.errors import TrainingAborted
from wmtp_studio.train.loop import train

pytestmark = pytest.mark.slow
# lr 1e30 turns the weights into inf/NaN after the first update: every later step is non-finite and skipped.
DIVERGING = ("optim.lr=1e30", "optim.warmup_steps=0", "train.checkpoint_every=1")


def _nonfinite(run: Path) -> int:
    if not (run / "metrics.jsonl").exists():
        return 0
    return sum(m["event"] == "nonfinite" for m in lines(run) if m["kind"] == "event")


def test_sigterm_during_a_nonfinite_streak_stops_the_trainer(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "r", "tiny-ntp.yaml", *DIVERGING, "train.steps=50", "train.max_nonfinite=1000000"
    )
    cmd = [sys.executable, "-m", "wmtp_studio.train", "--run-dir", str(run), "--resume"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _nonfinite(run) >= 3, 120, "a streak of non-finite steps")
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)  # old behaviour: ignored until max_nonfinite
    finally:
        proc.kill()
        proc.wait()
    events = [m for m in lines(run) if m["kind"] == "event"]
    assert code == 143 and events[-1]["event"] == "interrupted"
    last = [m for m in events if m["event"] != "checkpoint"][-2]  # the step it stopped after
    assert last["event"] == "nonfinite" and last["data"]["streak"] >= 3
    assert (run / "checkpoints" / "latest").read_text() == "step_1"  # no step was taken since


def test_an_aborted_run_logs_its_nonfinite_total(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r", "tiny-ntp.yaml", *DIVERGING, "train.steps=20", "train.max_nonfinite=3")
    with pytest.raises(TrainingAborted, match="3 consecutive steps"):
        train(run)
    totals = [m["metrics"]["nonfinite_total"] for m in lines(run) if m["kind"] == "train"]
    # step 1 is finite (total 0); steps 2, 3, 4 are skipped: the abort logs the total, 3 (old behaviour: 0)
    assert totals == [0.0, 3.0]
