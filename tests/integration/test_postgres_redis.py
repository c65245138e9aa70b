"""The multi-host set-up on real services: PostgreSQL as the studio database and a password-protected Redis as the
Huey queue (`.ci/run` starts both and exports WMTP_TEST_POSTGRES_URL and WMTP_TEST_REDIS_URL).

A run submitted with `wmtp-studio submit` is woken up through Redis, claimed from PostgreSQL by a real
`wmtp-worker` and trained to success. Each test gets its own PostgreSQL database (created and dropped here) and
its own Redis database number, so tests never see each other's rows or messages.
"""

from __future__ import annotations

import secrets
import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from sqlalchemy.engine import Engine

from tests.integration.conftest import RECIPES
from tests.integration.jobs import start_worker, stop_worker, studio, studio_env, wait_for
from tests.integration.services import POSTGRES_URL, REDIS_URL, fresh_postgres_database
from wmtp_studio import store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (POSTGRES_URL and REDIS_URL), reason="WMTP_TEST_POSTGRES_URL/REDIS_URL unset"),
]

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
    return studio_env(tmp_path / "home", database_url=pg_url, queue_url=redis_url)


@pytest.fixture
def engine(env: dict[str, str]) -> Iterator[Engine]:
    eng = store.make_engine(env["WMTP_DATABASE_URL"])
    store.upgrade(engine=eng)
    yield eng
    eng.dispose()  # before the database is dropped


def test_queue_url_with_password_builds_an_authenticated_redis_huey(redis_url: str) -> None:
    from huey import RedisHuey

    from wmtp_studio.taskqueue import make_huey

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
    # --poll-s 60: the run can only be claimed through the Redis wake-up
    worker = start_worker(env, log_path, "--cpu", "--poll-s", "60", "--lease-s", "10")
    try:
        wait_for(lambda: len(store.list_workers(engine=engine)) == 1, 60, "the worker's registration")
        run_id = int(studio(env, "submit", str(RECIPES / "tiny-ntp.yaml"), *TINY))
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
        losses = store.points_since(engine=engine, run_id=run_id, after_seq=-1, names=["train/loss"]).points
        assert [p.step for p in losses] == list(range(1, 13))
        assert run.last_step == 12
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()
        assert store.list_workers(engine=engine) == []
    finally:
        stop_worker(worker)
