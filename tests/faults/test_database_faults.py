"""The studio database deleted, truncated, read-only or on a full disk: every front end (the CLI, the worker,
`wmtp train`) exits 2 with a message naming the file and the cause, never a traceback, and nothing is lost: a
worker whose database was deleted stops its trainer with a checkpoint and claims nothing more, and the next run
created with that id never adopts the old run's directory."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.integration.conftest import RECIPES
from tests.integration.jobs import ROOT, WORKER, studio_env, studio_run, trainer_pids, wait_for
from tests.integration.studio_fixtures import TINY, submit
from wmtp_studio import store
from wmtp_studio.rundir.metrics import read_metrics
from wmtp_studio.workers import mlflow_sync

pytestmark = pytest.mark.slow
WMTP = "from wmtp_studio.cli import wmtp_main; wmtp_main()"


def _worker_exit(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", WORKER, "--cpu", "--poll-s", "0.5"]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)


def _can_mount() -> str | None:
    """Why a tmpfs cannot be mounted here (None if it can): needs root (CAP_SYS_ADMIN)."""
    if os.geteuid() != 0:
        return "mounting a small tmpfs needs root"
    return None


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_deleted_database_stops_the_worker_and_its_run_directory_is_never_taken_over(
    env: dict[str, str], engine: Engine, worker: Callable[..., subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    run_id = submit(env, "train.steps=400", "train.checkpoint_every=10")
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None
    run_dir, old_uid = Path(run.run_dir), getattr(run, "uid", "")
    daemon = worker("--cpu", "--lease-s", "3", "--poll-s", "0.5")
    wait_for(lambda: (run_dir / "checkpoints" / "latest").is_file(), 120, "a first checkpoint")
    db = Path(env["WMTP_HOME"]) / "studio.db"
    for path in (db, db.with_name("studio.db-wal"), db.with_name("studio.db-shm")):
        path.unlink(missing_ok=True)
    # Old behaviour: the worker kept writing to the deleted file and reported the run succeeded.
    assert daemon.wait(timeout=120) == 2
    log = (tmp_path / "worker0.log").read_text()
    assert f"the studio database {db} was deleted or replaced" in log and "Traceback" not in log
    assert not trainer_pids(run_dir)
    events = [ln.event for ln in read_metrics(run_dir / "metrics.jsonl") if ln.kind == "event"]
    assert events[-1] == "interrupted" and "done" not in events  # stopped with a checkpoint
    # A new studio database numbers runs from 1 again: the old directory is moved aside, not resumed.
    done = studio_run(env, "submit", str(RECIPES / "tiny-ntp.yaml"), *TINY)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == str(run_id), done.stderr
    aside = run_dir.with_name(f"{run_id}.orphan-{old_uid[:12]}")
    assert (
        f"{run_dir} held another run's files (a reset studio database?): moved them to {aside}" in done.stderr
    )
    assert (aside / "checkpoints" / "latest").is_file()
    assert sorted(p.name for p in run_dir.iterdir()) == ["recipe.json", "run.json"]


def test_a_truncated_database_is_named_with_its_cause(env: dict[str, str], engine: Engine) -> None:
    db = Path(env["WMTP_HOME"]) / "studio.db"
    engine.dispose()
    with open(db, "r+b") as fh:  # a torn copy: half a header
        fh.truncate(50)
    for path in (db.with_name("studio.db-wal"), db.with_name("studio.db-shm")):
        path.unlink(missing_ok=True)
    cli = studio_run(env, "runs")
    want = f"studio database {db}: the file is not a valid SQLite database"
    assert cli.returncode == 2 and want in cli.stderr and "Traceback" not in cli.stderr, cli.stderr
    daemon = _worker_exit(env)
    assert daemon.returncode == 2 and want in daemon.stderr and "Traceback" not in daemon.stderr, (
        daemon.stderr
    )


@pytest.mark.skipif(_can_mount() is not None, reason=_can_mount() or "")
def test_a_read_only_home_is_named_with_its_cause(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "ro", "16m") as home:
        env = studio_env(home, queue_url=f"sqlite:///{home}/q.db")
        assert studio_run(env, "runs").returncode == 0  # a working studio
        subprocess.run(["mount", "-o", "remount,ro", str(home)], check=True)
        want = f"studio database {home / 'studio.db'}: the file system holding {home} is mounted read-only"
        for args in (("submit", str(RECIPES / "tiny-ntp.yaml"), *TINY), ("runs",)):
            cli = studio_run(env, *args)
            assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
            assert want in cli.stderr or "read-only" in cli.stderr, cli.stderr
        daemon = _worker_exit(env)
        assert daemon.returncode == 2 and want in daemon.stderr and "Traceback" not in daemon.stderr, (
            daemon.stderr
        )
        cmd = [sys.executable, "-c", WMTP, "train", str(RECIPES / "tiny-ntp.yaml"), "--run-dir", f"{home}/r"]
        trained = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert trained.returncode == 2 and "Traceback" not in trained.stderr, trained.stderr
        assert f"{home}/r" in trained.stderr and "Read-only file system" in trained.stderr


@pytest.mark.skipif(_can_mount() is not None, reason=_can_mount() or "")
def test_a_full_disk_is_named_with_its_cause_and_nothing_is_stored(tmp_path: Path) -> None:
    with _tmpfs(tmp_path / "full", "4m") as home:
        env = studio_env(home, queue_url=f"sqlite:///{home}/q.db")
        assert studio_run(env, "runs").returncode == 0
        with open(home / "filler", "wb") as fh, contextlib.suppress(OSError):
            while True:  # fill the disk to the last block
                fh.write(b"\0" * 65536)
                fh.flush()
        with contextlib.suppress(OSError), open(home / "filler2", "wb") as fh:
            for _ in range(64):
                fh.write(b"\0" * 512)
                fh.flush()
        cli = studio_run(env, "submit", str(RECIPES / "tiny-ntp.yaml"), *TINY)
        assert cli.returncode == 2 and "Traceback" not in cli.stderr, cli.stderr
        assert str(home) in cli.stderr and ("is full" in cli.stderr or "No space left" in cli.stderr), (
            cli.stderr
        )
        (home / "filler").unlink()
        listed = studio_run(env, "runs", "--json")
        assert listed.returncode == 0 and listed.stdout.strip() == "[]"  # the failed submit stored nothing


def test_a_corrupted_studio_database_is_not_blamed_on_mlflow(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    db = Path(str(engine.url.database))
    engine.dispose()
    db.write_bytes(b"this is not a database" * 100)  # overwritten in place (same inode)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with caplog.at_level(logging.WARNING, logger="wmtp_worker.mlflow"):
        assert mlflow_sync.Forwarder(engine=engine, uri=uri).sync_pending() == 0
    (report,) = [r.getMessage() for r in caplog.records if r.name == "wmtp_worker.mlflow"]
    assert report.startswith(f"studio database {db}: the file is not a valid SQLite database"), report
    assert "mlflow.db" not in report
