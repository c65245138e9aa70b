"""`wmtp-worker` as a real subprocess (with its in-process Huey consumer) on a real SQLite store and SqliteHuey
queue in a temp home: runs submitted from the CLI are woken up through Huey and run to completion; SIGTERM
unregisters and exits 0; after kill -9 of the worker and its trainer a new worker reaps the lease and resumes."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.integration.conftest import RECIPES, ROOT
from wmtp_studio import store
from wmtp_studio.rundir.metrics import read_metrics
from wmtp_studio.workers.supervise import session_pids

pytestmark = pytest.mark.slow

STUDIO = "from wmtp_studio.studio_cli import studio_main; studio_main()"
WORKER = "from wmtp_studio.workers.daemon import main; main()"
ENQUEUE = "import sys; from wmtp_studio.taskqueue import announce; announce([int(a) for a in sys.argv[1:]])"
TINY = [
    "--set",
    "data.generated.num_train=600",
    "--set",
    "train.batch_size=16",
    "--set",
    "eval.benchmarks=[]",
]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    base = {k: v for k, v in os.environ.items() if not k.startswith("WMTP_")}
    return base | {
        "WMTP_HOME": str(home),
        "WMTP_DATABASE_URL": f"sqlite:///{home / 'studio.db'}",
        "WMTP_QUEUE_URL": f"sqlite:///{home / 'queue.db'}",
    }


@pytest.fixture
def engine(env: dict[str, str]) -> Engine:
    Path(env["WMTP_HOME"]).mkdir(parents=True, exist_ok=True)
    eng = store.make_engine(env["WMTP_DATABASE_URL"])
    store.upgrade(engine=eng)
    return eng


@pytest.fixture
def workers(env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"worker{len(procs)}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, *args], env=env, cwd=ROOT, stdout=log, stderr=log
        )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def submit(env: dict[str, str], *overrides: str) -> int:
    sets = [x for o in overrides for x in ("--set", o)]
    out = subprocess.run(
        [sys.executable, "-c", STUDIO, "submit", str(RECIPES / "tiny-ntp.yaml"), *TINY, *sets],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(out.stdout)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def status(engine: Engine, run_id: int) -> str:
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None
    return run.status


def test_worker_runs_huey_woken_jobs_and_stops_on_sigterm(
    env: dict[str, str], engine: Engine, workers, tmp_path
):
    # --poll-s 60: within this test the runs can only be claimed through the Huey wake-up (or a finished slot).
    worker = workers("--cpu", "--slots", "1", "--poll-s", "60")
    wait_for(lambda: len(store.list_workers(engine=engine)) == 1, 30, "registration")
    (row,) = store.list_workers(engine=engine)
    assert (row.pid, row.slots) == (worker.pid, ["cpu"])
    ids = [submit(env, "train.steps=20"), submit(env, "train.steps=20")]
    subprocess.run([sys.executable, "-c", ENQUEUE, *map(str, ids)], env=env, cwd=ROOT, check=True, timeout=60)
    wait_for(lambda: all(status(engine, i) in ("succeeded", "failed") for i in ids), 120, "both runs")
    log = (tmp_path / "worker0.log").read_text()
    assert [status(engine, i) for i in ids] == ["succeeded", "succeeded"], log
    for run_id in ids:
        run = store.get_run(engine=engine, run_id=run_id)
        assert run is not None and run.attempts == 1 and run.exit_code == 0
        assert store.last_seq(engine=engine, run_id=run_id) > 0
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0, log
    assert store.list_workers(engine=engine) == []


def _trainer_sid(worker_pid: int) -> int | None:
    """The session of the trainer the worker started (a child of the worker leading its own session)."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        _state, ppid, _pgrp, session = stat[stat.rfind(")") + 2 :].split()[:4]
        if int(ppid) == worker_pid and int(session) == int(entry):
            return int(entry)
    return None


def _kill_session(sid: int) -> None:
    for _ in range(50):
        left = session_pids(sid)
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
    raise AssertionError(f"session {sid} survived SIGKILL")


def test_dead_worker_lease_is_reaped_and_the_run_resumes(
    env: dict[str, str], engine: Engine, workers, tmp_path
):
    run_id = submit(env, "train.steps=60", "train.checkpoint_every=10", "train.log_every=1")
    first = workers("--cpu", "--slots", "1", "--lease-s", "3", "--poll-s", "0.5")
    run_dir = Path(store.get_run(engine=engine, run_id=run_id).run_dir)  # type: ignore[union-attr]
    wait_for(lambda: (run_dir / "checkpoints" / "latest").is_file(), 90, "a first checkpoint")
    killed_at = int((run_dir / "checkpoints" / "latest").read_text().strip().removeprefix("step_"))
    sid = _trainer_sid(first.pid)
    assert sid is not None
    first.kill()  # a dead host: the worker and its trainer die without a word
    first.wait()
    _kill_session(sid)
    assert status(engine, run_id) == "running"
    second = workers("--cpu", "--slots", "1", "--lease-s", "3", "--poll-s", "0.5")
    wait_for(lambda: status(engine, run_id) in ("succeeded", "failed"), 150, "the resumed run")
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None and run.status == "succeeded", (tmp_path / "worker1.log").read_text()
    assert run.attempts == 2 and run.exit_code == 0
    steps = [m.step for m in read_metrics(run_dir / "metrics.jsonl") if m.kind == "train"]
    assert 0 < killed_at < 60 and steps == sorted(set(steps)) and steps[-1] == 60
    seqs = [m.seq for m in read_metrics(run_dir / "metrics.jsonl")]
    assert seqs == list(range(len(seqs)))  # gapless, no duplicates after the resume
    assert store.last_seq(engine=engine, run_id=run_id) == seqs[-1]
    second.send_signal(signal.SIGTERM)
    assert second.wait(timeout=30) == 0
    # only the dead worker's row is left (it never unregistered; its heartbeat goes stale)
    assert [w.pid for w in store.list_workers(engine=engine)] == [first.pid]
