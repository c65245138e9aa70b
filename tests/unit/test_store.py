"""The store on a real SQLite file: claims with fencing, priorities, dependencies, the reaper, metric ingestion.

With `WMTP_TEST_POSTGRES_URL=postgresql+psycopg://...` set, every test also runs on a fresh database of its own
on that server.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.integration.services import fresh_postgres_database
from wmtp_studio import store
from wmtp_studio.errors import StudioError
from wmtp_studio.models import Evaluation, Run, utcnow
from wmtp_studio.recipe import Recipe, load_recipe
from wmtp_studio.rundir.metrics import MetricLine
from wmtp_studio.settings import Settings

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


POSTGRES_URL = os.environ.get("WMTP_TEST_POSTGRES_URL")


@pytest.fixture(
    params=[
        "sqlite",
        pytest.param(
            "postgresql", marks=pytest.mark.skipif(not POSTGRES_URL, reason="WMTP_TEST_POSTGRES_URL unset")
        ),
    ]
)
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    with ExitStack() as stack:
        if request.param == "sqlite":
            url = f"sqlite:///{tmp_path / 'studio.db'}"
        else:
            url = stack.enter_context(fresh_postgres_database())
        engine = store.make_engine(url)
        store.upgrade(engine=engine)
        yield engine
        engine.dispose()


def recipe(*overrides: str) -> Recipe:
    return load_recipe(RECIPES / "tiny-ntp.yaml", list(overrides))


def new_run(engine: Engine, tmp_path: Path, **kw: Any) -> Run:
    """One run of the tiny recipe, stored on its own (`kw` goes to `Submission.add_run`)."""
    with store.submission(engine=engine, runs_dir=tmp_path / "runs") as sub:
        return sub.add_run(recipe=recipe(), **kw)


def test_settings_defaults_and_env(tmp_path: Path) -> None:
    s = Settings.from_env({"WMTP_HOME": str(tmp_path)})
    assert s.database_url == f"sqlite:///{tmp_path}/studio.db"
    assert s.queue_url == f"sqlite:///{tmp_path}/queue.db"
    assert s.runs_dir == tmp_path / "runs"
    assert s.mlflow_uri == f"sqlite:///{tmp_path}/mlflow.db"
    pg = Settings.from_env(
        {"WMTP_HOME": str(tmp_path), "WMTP_DATABASE_URL": "postgresql+psycopg://db/studio"}
    )
    assert pg.database_url == "postgresql+psycopg://db/studio"


def test_sqlite_pragmas(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_add_run_freezes_recipe(engine: Engine, tmp_path: Path) -> None:
    r = recipe("train.seed=7")
    with store.submission(engine=engine, runs_dir=tmp_path / "runs") as sub:
        cs = sub.add_comparison_set(name="c", base=r, factor="seed", diff={"seed": [7]})
        run = sub.add_run(recipe=r, comparison_set_id=cs.id)
    assert (run.status, run.algorithm, run.seed, run.recipe_sha256) == ("queued", "ntp", 7, r.sha256())
    assert run.run_dir == str(tmp_path / "runs" / str(run.id))
    assert json.loads((Path(run.run_dir) / "recipe.json").read_text()) == json.loads(r.canonical_json())
    assert run.created_at.tzinfo is not None
    assert [x.id for x in store.list_runs(engine=engine, comparison_set_id=cs.id)] == [run.id]
    assert store.list_runs(engine=engine, status="running") == []


def test_claim_renew_finish_with_fencing(engine: Engine, tmp_path: Path) -> None:
    run = new_run(engine, tmp_path)
    assert run.id is not None
    claimed = store.claim_next_run(engine=engine, owner="w1", gpus_free=0, lease_s=60)
    assert claimed is not None and claimed.id == run.id
    assert (claimed.status, claimed.lease_owner, claimed.fencing_token, claimed.attempts) == (
        "running",
        "w1",
        1,
        1,
    )
    assert store.claim_next_run(engine=engine, owner="w2", gpus_free=0, lease_s=60) is None
    assert store.renew_lease(engine=engine, run_id=run.id, owner="w1", token=1, lease_s=60)
    assert not store.renew_lease(engine=engine, run_id=run.id, owner="w1", token=0, lease_s=60)
    assert not store.renew_lease(engine=engine, run_id=run.id, owner="w2", token=1, lease_s=60)

    # The lease expires, the reaper re-queues, w2 claims: w1's token (1) is now stale.
    assert store.requeue_expired_leases(engine=engine, now=utcnow() + timedelta(seconds=61)) == [run.id]
    again = store.claim_next_run(engine=engine, owner="w2", gpus_free=0, lease_s=60)
    assert again is not None and again.fencing_token == 2 and again.attempts == 2
    assert not store.finish_run(engine=engine, run_id=run.id, owner="w1", token=1, status="succeeded")
    assert store.finish_run(
        engine=engine, run_id=run.id, owner="w2", token=2, status="failed", exit_code=1, error_tail="boom"
    )
    done = store.get_run(engine=engine, run_id=run.id)
    assert done is not None
    assert (done.status, done.exit_code, done.error_tail, done.lease_owner) == ("failed", 1, "boom", None)
    assert done.finished_at is not None
    with pytest.raises(StudioError):
        store.finish_run(engine=engine, run_id=run.id, owner="w2", token=2, status="running")


def test_priority_then_oldest_and_gpu_fit(engine: Engine, tmp_path: Path) -> None:
    low = new_run(engine, tmp_path)
    big = new_run(engine, tmp_path, priority=5, gpus_requested=4)
    high_old = new_run(engine, tmp_path, priority=5)
    high_new = new_run(engine, tmp_path, priority=5)
    order = []
    while (run := store.claim_next_run(engine=engine, owner="w", gpus_free=2, lease_s=60)) is not None:
        order.append(run.id)
    assert order == [high_old.id, high_new.id, low.id]  # `big` needs 4 GPUs, only 2 are free
    assert store.set_priority(engine=engine, run_id=big.id or 0, priority=9).priority == 9
    claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=4, lease_s=60)
    assert claimed is not None and claimed.id == big.id


def test_dependency_waits_then_queues(engine: Engine, tmp_path: Path) -> None:
    base = new_run(engine, tmp_path)
    child = new_run(engine, tmp_path, depends_on_run_id=base.id)
    grandchild = new_run(engine, tmp_path, depends_on_run_id=child.id)
    assert child.status == grandchild.status == "waiting"
    claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=60)
    assert claimed is not None and claimed.id == base.id
    assert store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=60) is None
    assert store.finish_run(engine=engine, run_id=base.id or 0, owner="w", token=1, status="succeeded")
    assert store.get_run(engine=engine, run_id=child.id or 0).status == "queued"  # type: ignore[union-attr]
    claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=60)
    assert claimed is not None and claimed.id == child.id
    # The child fails: the grandchild fails with it, without ever starting.
    assert store.finish_run(engine=engine, run_id=child.id or 0, owner="w", token=1, status="failed")
    gc = store.get_run(engine=engine, run_id=grandchild.id or 0)
    assert gc is not None and gc.status == "failed" and gc.attempts == 0
    assert gc.error_tail == f"dependency run {child.id} failed; this run never started"
    # A run created on an already-succeeded dependency is queued at once.
    assert new_run(engine, tmp_path, depends_on_run_id=base.id).status == "queued"


def test_reaper_gives_up_after_k_crashes(engine: Engine, tmp_path: Path) -> None:
    run = new_run(engine, tmp_path, max_attempts=3)
    later = utcnow() + timedelta(seconds=10)
    assert store.requeue_expired_leases(engine=engine, now=later) == []  # nothing is running
    for crash in (1, 2, 3):
        claimed = store.claim_next_run(engine=engine, owner=f"w{crash}", gpus_free=0, lease_s=1)
        assert claimed is not None and claimed.id == run.id
        assert store.requeue_expired_leases(engine=engine, now=utcnow()) == []  # lease still valid
        requeued = store.requeue_expired_leases(engine=engine, now=utcnow() + timedelta(seconds=2))
        assert requeued == ([run.id] if crash < 3 else [])
    dead = store.get_run(engine=engine, run_id=run.id or 0)
    assert dead is not None
    assert (dead.status, dead.consecutive_crashes, dead.attempts) == ("failed", 3, 3)
    assert dead.error_tail == "gave up: the lease expired 3 times in a row without progress"
    retried = store.retry_run(engine=engine, run_id=run.id or 0)
    assert (retried.status, retried.consecutive_crashes, retried.error_tail) == ("queued", 0, None)
    with pytest.raises(StudioError):
        store.retry_run(engine=engine, run_id=run.id or 0)


def _train_line(seq: int, step: int) -> MetricLine:
    return MetricLine(seq=seq, step=step, time=0.0, kind="train", metrics={"loss": 1.0})


def test_only_crashes_without_progress_count_toward_giving_up(engine: Engine, tmp_path: Path) -> None:
    run = new_run(engine, tmp_path, max_attempts=3)
    assert run.id is not None
    # Three attempts killed in a row, each after training 5 more steps: none counts, the run is re-queued.
    for attempt in range(3):
        claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=60)
        assert claimed is not None and claimed.claim_step == 5 * attempt
        store.ingest_metric_lines(engine=engine, run_id=run.id, lines=[_train_line(attempt, 5 * attempt + 5)])
        status = store.requeue_crashed_run(
            engine=engine,
            run_id=run.id,
            owner="w",
            token=claimed.fencing_token,
            exit_code=-9,
            error_tail=None,
        )
        assert status == "queued"
    again = store.get_run(engine=engine, run_id=run.id)
    assert again is not None and (again.consecutive_crashes, again.attempts, again.last_step) == (0, 3, 15)
    # Then three that advance nothing (killed before passing step 15): the third gives up.
    for crash in (1, 2, 3):
        claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=1)
        assert claimed is not None
        requeued = store.requeue_expired_leases(engine=engine, now=utcnow() + timedelta(seconds=2))
        assert requeued == ([run.id] if crash < 3 else [])
    dead = store.get_run(engine=engine, run_id=run.id)
    assert dead is not None and (dead.status, dead.consecutive_crashes) == ("failed", 3)


def test_a_new_run_never_adopts_another_runs_directory(engine: Engine, tmp_path: Path) -> None:
    first = new_run(engine, tmp_path)
    run_dir = Path(first.run_dir)
    assert json.loads((run_dir / "run.json").read_text()) == {
        "uid": first.uid,
        "recipe_sha256": first.recipe_sha256,
    }
    (run_dir / "checkpoints").mkdir()  # the old run trained
    # The studio database is reset: ids start at 1 again, runs/1 still holds the old run.
    fresh = store.make_engine(f"sqlite:///{tmp_path / 'reset.db'}")
    store.upgrade(engine=fresh)
    with store.submission(engine=fresh, runs_dir=tmp_path / "runs") as sub:
        second = sub.add_run(recipe=recipe())
        moved = sub.moved_aside
    assert second.id == first.id and second.uid != first.uid
    assert moved == [(run_dir, run_dir.with_name(f"{first.id}.orphan-{first.uid[:12]}"))]
    assert (moved[0][1] / "checkpoints").is_dir()  # the old files are kept, aside
    assert sorted(p.name for p in run_dir.iterdir()) == ["recipe.json", "run.json"]
    assert json.loads((run_dir / "run.json").read_text())["uid"] == second.uid


def test_cancel(engine: Engine, tmp_path: Path) -> None:
    queued = new_run(engine, tmp_path)
    running = new_run(engine, tmp_path)
    dependent = new_run(engine, tmp_path, depends_on_run_id=running.id)
    assert store.request_cancel(engine=engine, run_id=queued.id or 0).status == "cancelled"
    claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=60)
    assert claimed is not None and claimed.id == running.id
    flagged = store.request_cancel(engine=engine, run_id=running.id or 0)
    assert (flagged.status, flagged.cancel_requested) == ("running", True)
    assert store.finish_run(engine=engine, run_id=running.id or 0, owner="w", token=1, status="cancelled")
    assert store.get_run(engine=engine, run_id=dependent.id or 0).status == "failed"  # type: ignore[union-attr]
    with pytest.raises(StudioError):
        store.request_cancel(engine=engine, run_id=999)


def lines() -> list[MetricLine]:
    t = 1.0e9
    return [
        MetricLine(seq=0, step=0, time=t, kind="event", event="start"),
        MetricLine(seq=1, step=1, time=t, kind="train", metrics={"loss": 2.5, "head1/ce": 3.0}),
        MetricLine(seq=2, step=1, time=t, kind="hist", data={"edges": [0, 1], "counts": [[3]]}),
        MetricLine(seq=3, step=2, time=t, kind="train", metrics={"loss": 2.0, "head1/ce": 2.75}),
        MetricLine(seq=4, step=2, time=t, kind="val", metrics={"loss": 2.25}),
        MetricLine(seq=5, step=2, time=t, kind="eval", metrics={"pass@1": 0.5}, data={"n": 10}),
    ]


def test_ingestion_is_idempotent_and_cursor_works(engine: Engine, tmp_path: Path) -> None:
    run_id = new_run(engine, tmp_path).id or 0
    assert store.last_seq(engine=engine, run_id=run_id) == -1
    # 6 points (2 + 2 + 1 + 1) and 3 blobs (event, hist, the eval line's data).
    assert store.ingest_metric_lines(engine=engine, run_id=run_id, lines=lines()) == 9
    assert store.ingest_metric_lines(engine=engine, run_id=run_id, lines=lines()) == 0
    assert store.ingest_metric_lines(engine=engine, run_id=run_id, lines=lines()[2:4]) == 0
    assert store.last_seq(engine=engine, run_id=run_id) == 5
    points = store.points_since(engine=engine, run_id=run_id, after_seq=-1).points
    assert [(p.seq, p.name, p.value) for p in points] == [
        (1, "train/head1/ce", 3.0),
        (1, "train/loss", 2.5),
        (3, "train/head1/ce", 2.75),
        (3, "train/loss", 2.0),
        (4, "val/loss", 2.25),
        (5, "eval/pass@1", 0.5),
    ]
    since = store.points_since(engine=engine, run_id=run_id, after_seq=1, names=["train/loss"]).points
    assert [(p.seq, p.step, p.value) for p in since] == [(3, 2, 2.0)]
    blobs = store.metric_blobs_since(engine=engine, run_id=run_id, after_seq=-1)
    assert [(b.seq, b.kind) for b in blobs] == [(0, "event"), (2, "hist"), (5, "eval")]
    assert blobs[1].payload == {"event": None, "data": {"edges": [0, 1], "counts": [[3]]}}
    more = [MetricLine(seq=6, step=3, time=1.0, kind="train", metrics={"loss": 1.5})]
    assert store.ingest_metric_lines(engine=engine, run_id=run_id, lines=more) == 1
    assert store.last_seq(engine=engine, run_id=run_id) == 6


def test_truncate_metrics_cuts_the_stream_back_to_a_checkpoint(engine: Engine, tmp_path: Path) -> None:
    run_id = new_run(engine, tmp_path).id or 0
    store.ingest_metric_lines(engine=engine, run_id=run_id, lines=lines())  # seq 0..5: 6 points, 3 blobs
    # A checkpoint recorded seq 3 as the next line: rows with seq 3, 4, 5 go (2 + 1 points, 1 blob).
    assert store.truncate_metrics(engine=engine, run_id=run_id, from_seq=3) == 5
    assert store.last_seq(engine=engine, run_id=run_id) == 2
    resumed = [MetricLine(seq=3, step=1, time=1.0, kind="event", event="resumed")]
    assert store.ingest_metric_lines(engine=engine, run_id=run_id, lines=resumed) == 1
    events = [
        b.payload["event"] for b in store.metric_blobs_since(engine=engine, run_id=run_id, after_seq=-1)
    ]
    assert events == ["start", None, "resumed"]


def test_evaluations_and_workers(engine: Engine, tmp_path: Path) -> None:
    run_id = new_run(engine, tmp_path).id or 0
    result = Evaluation(
        run_id=run_id, benchmark="humaneval", k=1, pass_at_k=0.25, ci_low=0.2, ci_high=0.3, n_problems=164
    )
    ev = store.record_evaluation(engine=engine, evaluation=result)
    assert [e.id for e in store.list_evaluations(engine=engine, run_id=run_id)] == [ev.id]
    store.register_worker(engine=engine, worker_id="h:1", host="h", pid=1, slots=["0", "1"], version="0.1.0")
    assert store.heartbeat(engine=engine, worker_id="h:1", current_run_ids=[run_id])
    assert not store.heartbeat(engine=engine, worker_id="nobody", current_run_ids=[])
    (w,) = store.list_workers(engine=engine, alive_within_s=60)
    assert (w.slots, w.current_run_ids, w.heartbeat_at.tzinfo is not None) == (["0", "1"], [run_id], True)
    store.unregister_worker(engine=engine, worker_id="h:1")
    assert store.list_workers(engine=engine) == []


def test_saved_recipes(engine: Engine) -> None:
    store.save_recipe(engine=engine, name="a", yaml_text="x: 1", recipe=recipe())
    store.save_recipe(engine=engine, name="a", yaml_text="x: 2", recipe=recipe("train.seed=3"))
    (saved,) = store.list_saved_recipes(engine=engine)
    assert (saved.yaml_text, saved.sha256) == ("x: 2", recipe("train.seed=3").sha256())


def test_paused_queue_claims_nothing_until_resumed(engine: Engine, tmp_path: Path) -> None:
    run = new_run(engine, tmp_path)
    assert (run.name, run.total_steps, run.last_step) == ("tiny-ntp", 600, 0)
    store.set_flag(engine=engine, name="queue_paused", value=True)
    assert store.queue_paused(engine=engine)
    assert store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30) is None
    store.set_flag(engine=engine, name="queue_paused", value=False)
    claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30)
    assert claimed is not None and claimed.id == run.id


def test_ingest_advances_last_step_monotonically(engine: Engine, tmp_path: Path) -> None:
    run = new_run(engine, tmp_path)
    assert run.id is not None
    lines = [
        MetricLine(seq=i, step=s, time=0.0, kind="train", metrics={"loss": 1.0})
        for i, s in enumerate((5, 10))
    ]
    store.ingest_metric_lines(engine=engine, run_id=run.id, lines=lines)
    # a val line at a later step does not count as training progress; an old train line does not go back
    later = [MetricLine(seq=2, step=50, time=0.0, kind="val", metrics={"loss": 1.0})]
    store.ingest_metric_lines(engine=engine, run_id=run.id, lines=later)
    store.ingest_metric_lines(engine=engine, run_id=run.id, lines=lines[:1])
    stored = store.get_run(engine=engine, run_id=run.id)
    assert stored is not None and stored.last_step == 10


def test_killed_job_is_requeued_until_it_has_crashed_max_attempts_times(
    engine: Engine, tmp_path: Path
) -> None:
    run = new_run(engine, tmp_path, max_attempts=2)
    first = store.claim_next_run(engine=engine, owner="w1", gpus_free=0, lease_s=60)
    assert first is not None
    assert (  # a stale token changes nothing
        store.requeue_crashed_run(
            engine=engine, run_id=run.id or 0, owner="w1", token=0, exit_code=-9, error_tail=None
        )
        is None
    )
    status = store.requeue_crashed_run(
        engine=engine, run_id=run.id or 0, owner="w1", token=first.fencing_token, exit_code=-9, error_tail="x"
    )
    row = store.get_run(engine=engine, run_id=run.id or 0)
    assert row is not None and status == row.status == "queued"
    assert (row.consecutive_crashes, row.lease_owner, row.exit_code, row.finished_at) == (1, None, -9, None)
    second = store.claim_next_run(engine=engine, owner="w2", gpus_free=0, lease_s=60)
    assert second is not None and second.id == run.id
    status = store.requeue_crashed_run(
        engine=engine,
        run_id=run.id or 0,
        owner="w2",
        token=second.fencing_token,
        exit_code=-9,
        error_tail="y",
    )
    row = store.get_run(engine=engine, run_id=run.id or 0)
    assert row is not None and status == row.status == "failed" and row.finished_at is not None
    assert row.error_tail == "gave up: the job was killed 2 times in a row without progress\ny"
    assert store.claim_next_run(engine=engine, owner="w3", gpus_free=0, lease_s=60) is None


def test_dead_workers_are_recognised_and_forgotten(engine: Engine) -> None:
    store.register_worker(engine=engine, worker_id="h:1", host="h", pid=1, slots=["cpu"], version="0")
    store.register_worker(engine=engine, worker_id="h:2", host="h", pid=2, slots=["cpu"], version="0")
    store.heartbeat(engine=engine, worker_id="h:2", current_run_ids=[])
    (w1, _w2) = store.list_workers(engine=engine)
    now = utcnow()
    assert store.worker_alive(worker=w1, now=now)
    later = now + timedelta(seconds=store.WORKER_DEAD_AFTER_S + 1)
    assert not store.worker_alive(worker=w1, now=later)
    assert store.forget_dead_workers(engine=engine, now=later) == []  # dead, but not forgotten yet
    much_later = now + timedelta(seconds=store.WORKER_FORGET_AFTER_S + 1)
    assert sorted(store.forget_dead_workers(engine=engine, now=much_later)) == ["h:1", "h:2"]
    assert store.list_workers(engine=engine) == []
    # a forgotten worker that was only slow finds out at its next heartbeat (and registers again)
    assert not store.heartbeat(engine=engine, worker_id="h:1", current_run_ids=[])
