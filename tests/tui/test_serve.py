"""`wmtp-studio serve` as a real subprocess: the textual-serve page, a browser session's websocket that runs the
dashboard, and (where a `chromium` binary exists) a headless browser loading the page."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import anyio
import pytest

from tests.integration.jobs import STUDIO, wait_for
from tests.tui.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

ANSI = re.compile(r"\x1b(\[[0-9;?$]*[A-Za-z]|\][^\x07]*\x07)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A running `wmtp-studio serve` on a free loopback port: (its URL, its log file)."""
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WMTP_")} | {
        "WMTP_HOME": str(tmp_path / "home")
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", STUDIO, "serve", "--port", str(port), "--no-worker"],
            env=env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        assert proc.poll() is None, log.read_text()
        try:
            urllib.request.urlopen(url, timeout=1).close()
        except OSError:
            return False
        return True

    wait_for(answers, 30, f"{url} to answer", log=log)
    yield url, log
    proc.terminate()
    assert proc.wait(timeout=30) == 0, log.read_text()


def test_serve_answers_with_the_textual_serve_page_on_loopback(served: tuple[str, Path]) -> None:
    url, _log = served
    with urllib.request.urlopen(url, timeout=5) as response:
        page = response.read().decode()
    assert response.status == 200
    assert "<div>WMTP Studio</div>" in page
    assert f"{url}/static/js/textual.js" in page
    assert f"ws://127.0.0.1:{url.rsplit(':', 1)[1]}/ws" in page


async def test_a_browser_session_runs_the_dashboard(served: tuple[str, Path]) -> None:
    url, _log = served
    output = ""
    async with aiohttp.ClientSession() as http, http.ws_connect(f"{url}/ws?width=120&height=30") as ws:
        with anyio.fail_after(60):
            while not all(word in ANSI.sub("", output) for word in ("WMTP Studio", "Mark", "Cancel")):
                msg = await ws.receive()
                assert msg.type in (aiohttp.WSMsgType.BINARY, aiohttp.WSMsgType.TEXT), output[-2000:]
                output += msg.data.decode(errors="replace") if isinstance(msg.data, bytes) else msg.data


def test_headless_chromium_loads_the_terminal_page(served: tuple[str, Path]) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip(
            "no chromium binary (Debian package `chromium`); the websocket session test covers the server"
        )
    url, log = served
    out = subprocess.run(
        [
            browser,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--virtual-time-budget=10000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "xterm" in out.stdout  # textual.js built its terminal
    # and the page opened its session's websocket
    wait_for(lambda: "GET /ws" in log.read_text(), 10, "the page's websocket (GET /ws)", log=log)
