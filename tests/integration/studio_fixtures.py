"""Fixtures of a real studio home for tests that drive `wmtp-worker` subprocesses (integration and fault tests):
import the ones a module needs into it (or into a conftest) and pytest finds them there."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.integration.jobs import ROOT, start_worker, stop_worker, studio, studio_env
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
"""`--set` overrides that make tiny-ntp a run of seconds with a metric line per step and no evaluation."""


def submit(env: dict[str, str], *sets: str) -> int:
    """`wmtp-studio submit` of tiny-ntp with TINY and `sets` (key=value); the new run's id."""
    out = studio(env, "submit", str(ROOT / "recipes" / "tiny-ntp.yaml"), *TINY, *(f"--set={s}" for s in sets))
    return int(out.strip().splitlines()[-1])


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
    """Start workers with `worker(*args)`; each is stopped when the test ends."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        procs.append(start_worker(env, tmp_path / f"worker{len(procs)}.log", *args))
        return procs[-1]

    yield start
    for proc in procs:
        stop_worker(proc)
