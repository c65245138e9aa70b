"""Fault injection against real studio processes: a studio home per test, `wmtp-worker` and trainer
subprocesses, tiny CPU recipes (seconds per run). Only the faulted process is killed; everything else is real."""

from __future__ import annotations

import subprocess
import sys

from tests.integration.conftest import RECIPES, wmtp_home  # noqa: F401 - the shared tokenizer cache fixture
from tests.integration.jobs import ROOT, STUDIO, studio
from tests.integration.studio_fixtures import TINY, engine, env, worker  # noqa: F401 - fixtures


def submit(env: dict[str, str], *sets: str) -> int:
    """`wmtp-studio submit` of tiny-ntp with TINY and `sets` (key=value); the new run's id."""
    out = studio(env, "submit", str(RECIPES / "tiny-ntp.yaml"), *TINY, *(f"--set={s}" for s in sets))
    return int(out.strip().splitlines()[-1])


def studio_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`wmtp-studio ARGS`, whatever its exit code."""
    cmd = [sys.executable, "-c", STUDIO, *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
