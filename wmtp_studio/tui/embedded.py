"""The embedded worker: a CPU `wmtp-worker` the dashboard starts when no live worker is registered, so that one
machine needs nothing else. It gets the studio's own settings as `WMTP_*` variables, logs to
`<home>/logs/embedded-worker.log`, and stops with SIGTERM when the dashboard exits (its running jobs checkpoint
and go back to the queue, as for any worker); if the dashboard dies without stopping it, the worker notices that
it was re-parented and shuts down the same way."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlalchemy.engine import Engine

from wmtp_studio import store
from wmtp_studio.settings import Settings

ALIVE_WITHIN_S = 30.0
"""A worker that heartbeated this recently counts as live (workers heartbeat every 5 s or faster)."""
STOP_TIMEOUT_S = 45.0
"""How long a stopping worker may take: the supervisor gives its trainer 30 s to checkpoint."""
WORKER = "from wmtp_studio.workers.daemon import main; main()"


def worker_env(settings: Settings) -> dict[str, str]:
    """This process's environment with the studio's settings spelled out, so the worker uses the same state."""
    return os.environ | {
        "WMTP_HOME": str(settings.home),
        "WMTP_DATABASE_URL": settings.database_url,
        "WMTP_QUEUE_URL": settings.queue_url,
        "WMTP_RUNS_DIR": str(settings.runs_dir),
        "WMTP_MLFLOW_URI": settings.mlflow_uri,
    }


class EmbeddedWorker:
    """A started worker subprocess (in its own session, so a Ctrl+C in the terminal reaches only us)."""

    def __init__(self, settings: Settings, *, poll_s: float = 2.0) -> None:
        self.log_path: Path = settings.home / "logs" / "embedded-worker.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WORKER, "--cpu", "--poll-s", str(poll_s), "--exit-with-parent"],
                env=worker_env(settings),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL if it is still there after `timeout_s`; returns its exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def start_if_needed(*, engine: Engine, settings: Settings, poll_s: float = 2.0) -> EmbeddedWorker | None:
    """Start an embedded worker unless a live one is registered."""
    if store.list_workers(engine=engine, alive_within_s=ALIVE_WITHIN_S):
        return None
    return EmbeddedWorker(settings, poll_s=poll_s)
