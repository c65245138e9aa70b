"""The dashboard's embedded worker does not outlive the dashboard, even when the dashboard is killed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.jobs import studio_env, wait_for
from wmtp_studio import store
from wmtp_studio.settings import Settings

PARENT = """
import sys, time
from wmtp_studio.settings import Settings
from wmtp_studio.tui.embedded import EmbeddedWorker
print(EmbeddedWorker(Settings.from_env(), poll_s=0.2).pid, flush=True)
time.sleep(600)
"""


def gone(pid: int) -> bool:
    """No such process, or only its zombie (nobody may reap a re-parented child in a container)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def test_embedded_worker_shuts_down_when_the_dashboard_is_killed(tmp_path: Path) -> None:
    env = studio_env(tmp_path)
    settings = Settings.from_env(env)
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine=engine)
    parent = subprocess.Popen([sys.executable, "-c", PARENT], env=env, stdout=subprocess.PIPE, text=True)
    assert parent.stdout is not None
    worker_pid = int(parent.stdout.readline())
    try:
        wait_for(lambda: store.list_workers(engine=engine), 60, "the embedded worker to register")
        parent.kill()  # SIGKILL: the dashboard gets no chance to stop its worker
        parent.wait()
        wait_for(lambda: gone(worker_pid), 60, "the embedded worker to go with the dashboard")
        assert store.list_workers(engine=engine) == []  # it shut down gracefully: unregistered itself
        log = (tmp_path / "logs" / "embedded-worker.log").read_text()
        assert f"parent process {parent.pid} is gone" in log
    finally:
        parent.kill()
        if not gone(worker_pid):
            os.kill(worker_pid, 9)
