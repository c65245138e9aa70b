"""The worker daemon's and the trainer's command lines (typer): bad input exits 2 with a message naming the
problem and no traceback, before anything is opened or written."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = "from wmtp_studio.workers.daemon import main; main()"


def run(tmp_path: Path, *cmd: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WMTP_")} | {"WMTP_HOME": str(tmp_path)}
    return subprocess.run([sys.executable, *cmd], capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--cpu", "--gpus", "0"], "--cpu and --gpus exclude each other"),
        (["--gpus", "0,x"], "--gpus must be comma-separated integers"),
        (["--cpu", "--slots", "0"], "must be positive"),
        (["--cpu", "--lease-s", "fast"], "--lease-s"),
    ],
)
def test_the_worker_refuses_bad_options(tmp_path: Path, args: list[str], says: str) -> None:
    res = run(tmp_path, "-c", WORKER, *args)
    assert res.returncode == 2 and says in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not list(tmp_path.iterdir())  # refused before the database or the queue was opened


def test_the_trainer_entry_refuses_a_missing_run_directory(tmp_path: Path) -> None:
    res = run(tmp_path, "-m", "wmtp_studio.train", "--run-dir", str(tmp_path / "nope"))
    assert res.returncode == 2 and "nope/recipe.json does not exist" in res.stderr, res.stderr
    missing = run(tmp_path, "-m", "wmtp_studio.train", "--resume")
    assert missing.returncode == 2 and "--run-dir" in missing.stderr and "Traceback" not in missing.stderr
