"""Fault injection against real studio processes: a studio home per test, `wmtp-worker` and trainer
subprocesses, tiny CPU recipes (seconds per run). Only the faulted process is killed; everything else is real."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.integration.conftest import RECIPES, wmtp_home  # noqa: F401 - the shared tokenizer cache fixture
from tests.integration.jobs import ROOT, STUDIO, start_worker, stop_worker, studio, studio_env
from wmtp_studio import store

TINY = [
    f"--set={o}"
    for o in (
        "data.generated.num_train=600",
        "train.batch_size=16",
        "eval.benchmarks=[]",
        "train.log_every=1",
    )
]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return studio_env(tmp_path / "home")


@pytest.fixture
def engine(env: dict[str, str]) -> Engine:
    Path(env["WMTP_HOME"]).mkdir(parents=True, exist_ok=True)
    eng = store.make_engine(env["WMTP_DATABASE_URL"])
    store.upgrade(engine=eng)
    return eng


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        procs.append(start_worker(env, tmp_path / f"worker{len(procs)}.log", *args))
        return procs[-1]

    yield start
    for proc in procs:
        stop_worker(proc)


def submit(env: dict[str, str], *sets: str) -> int:
    """`wmtp-studio submit` of tiny-ntp with TINY and `sets` (key=value); the new run's id."""
    out = studio(env, "submit", str(RECIPES / "tiny-ntp.yaml"), *TINY, *(f"--set={s}" for s in sets))
    return int(out.strip().splitlines()[-1])


def studio_run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`wmtp-studio ARGS`, whatever its exit code."""
    cmd = [sys.executable, "-c", STUDIO, *args]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
