"""`wmtp-studio serve`: the dashboard in web browsers through textual-serve.

Each browser tab gets its own dashboard process (`wmtp-studio --no-worker --no-quickstart`) on the same studio
database; the server itself starts the one embedded worker they share when no live worker is registered. It
binds the loopback address unless told otherwise: whoever reaches the page controls the studio.
"""

from __future__ import annotations

import shlex
import sys

from textual_serve.server import Server

from wmtp_studio import store
from wmtp_studio.settings import Settings
from wmtp_studio.tui.embedded import start_if_needed

DASHBOARD = "from wmtp_studio.studio_cli import studio_main; studio_main()"


def dashboard_command() -> str:
    """The shell command textual-serve runs per browser session (this interpreter, so the same environment)."""
    return shlex.join([sys.executable, "-c", DASHBOARD, "--no-worker", "--no-quickstart"])


def serve(
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    public_url: str | None = None,
    settings: Settings | None = None,
    embedded_worker: bool = True,
) -> None:
    """Serve until SIGINT/SIGTERM, then stop the embedded worker (its jobs go back to the queue)."""
    settings = settings or Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine=engine)
    worker = start_if_needed(engine=engine, settings=settings) if embedded_worker else None
    try:
        Server(dashboard_command(), host=host, port=port, title="WMTP Studio", public_url=public_url).serve()
    finally:
        if worker is not None:
            worker.stop()
