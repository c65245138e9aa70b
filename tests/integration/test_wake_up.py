"""The Huey wake-up a submitter sends is the task a worker's consumer runs (two real processes, one queue file)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SEND = "import sys; from wmtp_studio.taskqueue import announce; announce([int(a) for a in sys.argv[1:]])"
# the worker's side: its own queue module, its registry, its hook; dequeue and run what was sent
CONSUME = """
from wmtp_studio.workers import tasks
tasks.on_wake(lambda run_id: print("woken", run_id))
while (task := tasks.huey.dequeue()) is not None:
    tasks.huey.execute(task)
"""


def test_a_wake_up_sent_by_the_library_runs_the_workers_hook(tmp_path: Path) -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "WMTP_HOME": str(tmp_path),
        "WMTP_QUEUE_URL": f"sqlite:///{tmp_path / 'q.db'}",
    }
    subprocess.run([sys.executable, "-c", SEND, "7", "9"], env=env, cwd=ROOT, check=True, timeout=60)
    out = subprocess.run(
        [sys.executable, "-c", CONSUME], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    # before: "wmtp_studio.taskqueue.workers.tasks.run_job not found in TaskRegistry" for each message
    assert out.returncode == 0 and "not found" not in out.stderr, out.stderr
    assert out.stdout.split("\n")[:2] == ["woken 7", "woken 9"], (out.stdout, out.stderr)
