"""The multi-host set-up on real services: PostgreSQL as the studio database and a password-protected Redis as the
Huey queue (`.ci/run` starts both and exports WMTP_TEST_POSTGRES_URL and WMTP_TEST_REDIS_URL).

A run submitted with `wmtp-studio submit` is woken up through Redis, claimed from PostgreSQL by a real
`wmtp-worker` and trained to success. Each test gets its own PostgreSQL database (created and dropped here) and
its own Redis database number, so tests never see each other's rows or messages.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import Engine

from tests.integration.conftest import RECIPES, ROOT
from tests.integration.services import POSTGRES_URL, REDIS_URL, fresh_postgres_database
from wmtp_studio import store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (POSTGRES_URL and REDIS_URL), reason="WMTP_TEST_POSTGRES_URL/REDIS_URL unset"),
]

STUDIO = "from wmtp_studio.studio_cli import studio_main; studio_main()"
WORKER = "from workers.daemon import main; main()"
TINY = [
    f"--set={o}"
    for o in (
        "train.steps=12",
        "train.log_every=1",
        "data.generated.num_train=600",
        "train.batch_size=16",
        "eval.benchmarks=[]",
    )
]


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_postgres_database() as url:
        yield url


@pytest.fixture
def redis_url() -> Iterator[str]:
    """The test Redis with a database number of its own, emptied before and after."""
    import redis

    url = urlsplit(REDIS_URL or "")._replace(path=f"/{secrets.randbelow(15) + 1}").geturl()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def env(tmp_path: Path, pg_url: str, redis_url: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("WMTP_")}
    return base | {
        "WMTP_HOME": str(tmp_path / "home"),
        "WMTP_DATABASE_URL": pg_url,
        "WMTP_QUEUE_URL": redis_url,
        "HF_HUB_OFFLINE": "1",
    }


@pytest.fixture
def engine(env: dict[str, str]) -> Iterator[Engine]:
    eng = store.make_engine(env["WMTP_DATABASE_URL"])
    store.upgrade(engine=eng)
    yield eng
    eng.dispose()  # before the database is dropped


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_queue_url_with_password_builds_an_authenticated_redis_huey(redis_url: str) -> None:
    from huey import RedisHuey

    from workers.queue import make_huey

    q = make_huey(redis_url)
    assert isinstance(q, RedisHuey)

    @q.task()
    def ping() -> None: ...

    ping()  # a real round trip through the password-protected server
    assert len(q) == 1
    q.flush()
    bad = make_huey(redis_url.replace("redis://:", "redis://:wrong"))
    with pytest.raises(Exception, match=r"(?i)auth|password|WRONGPASS"):
        len(bad)


def test_cli_submission_runs_to_success_on_postgres_and_redis(
    env: dict[str, str], engine: Engine, tmp_path: Path
) -> None:
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        # --poll-s 60: the run can only be claimed through the Redis wake-up
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, "--cpu", "--poll-s", "60", "--lease-s", "10"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=log,
        )
    try:
        wait_for(lambda: len(store.list_workers(engine=engine)) == 1, 60, "the worker's registration")
        out = subprocess.run(
            [sys.executable, "-c", STUDIO, "submit", str(RECIPES / "tiny-ntp.yaml"), *TINY],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        run_id = int(out.stdout)
        finished = ("succeeded", "failed", "cancelled")
        wait_for(
            lambda: getattr(store.get_run(engine=engine, run_id=run_id), "status", "") in finished,
            180,
            "the run",
        )
        run = store.get_run(engine=engine, run_id=run_id)
        assert run is not None and (run.status, run.exit_code, run.attempts) == ("succeeded", 0, 1), (
            log_path.read_text()
        )
        losses = store.metric_points_since(engine=engine, run_id=run_id, after_seq=-1, names=["train/loss"])
        assert [p.step for p in losses] == list(range(1, 13))
        assert run.last_step == 12
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()
        assert store.list_workers(engine=engine) == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
