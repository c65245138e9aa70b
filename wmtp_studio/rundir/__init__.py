"""The run directory: the one contract between the studio, the worker, the trainer and the evaluator.

Everything that crosses processes goes through files in `runs/<id>/`, named here and typed with pydantic models
in this package (torch-free, so the store, the worker and the dashboard read them without loading the trainer):

- `recipe.json`: the frozen `Recipe` (recipe.py); `run.json`: the identity stamp, below;
- `metrics.jsonl`: the trainer's and the evaluator's `MetricLine`s (metrics.py);
- `checkpoints/step_<n>/` and the `checkpoints/latest` pointer, each with its `TrainerState` (checkpoints.py);
- `eval/<i>-<benchmark>/results.json` and `samples.jsonl`: an evaluation's `EvalResults` (results.py);
- `model/`: the exported model; `train.log`: the jobs' output.

Ownership: the directory's identity stamp (`run.json`) and the lock a trainer holds for its whole life.

A run directory outlives the database row that made it: a reset studio database numbers runs from 1 again, and
`runs/1/` may still hold another run's checkpoints. So every run directory is stamped with the run's unique id
and its frozen recipe's sha256; a new run never adopts a directory stamped for another run (the old one is moved
aside), and the trainer never resumes a checkpoint stamped for another run.

One trainer at a time: the trainer holds an exclusive `flock` on `run_dir/.trainer.lock` while it runs (the
kernel drops it when the process dies, however it dies). A second trainer waits a few seconds, then refuses
with `RunDirBusy` (exit code EXIT_BUSY): whoever launched it treats that as "not mine now", not as a crash.
Torch-free: the store, the worker and the trainer all use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from uuid import uuid4

from pydantic import BaseModel, ConfigDict, ValidationError

from wmtp_studio.errors import StudioError

RECIPE = "recipe.json"
METRICS = "metrics.jsonl"
TRAIN_LOG = "train.log"
MODEL = "model"
STAMP = "run.json"
LOCK = ".trainer.lock"
EXIT_BUSY = 75  # EX_TEMPFAIL: another trainer owns the run directory; try again later
FRESH = {RECIPE, STAMP, LOCK}
"""What a run directory holds before any training: a submission that was rolled back may leave these behind."""


class RunStamp(BaseModel):
    """The identity of the run that owns a directory (also copied into each of its checkpoints)."""

    model_config = ConfigDict(extra="ignore", frozen=True)
    uid: str
    recipe_sha256: str


class RunDirBusy(StudioError):
    """Another live trainer holds the run directory's lock."""


def recipe_sha256(run_dir: Path) -> str:
    """sha256 of the frozen recipe.json (canonical JSON, so equal to `Recipe.sha256()` of the recipe)."""
    return hashlib.sha256((run_dir / RECIPE).read_bytes()).hexdigest()


def read_stamp(path: Path) -> RunStamp | None:
    """The stamp in `path` (a run directory or a checkpoint), None if it has none."""
    try:
        return RunStamp.model_validate_json((path / STAMP).read_bytes())
    except FileNotFoundError:
        return None
    except ValidationError as exc:
        raise StudioError(f"{path / STAMP} is not a run identity stamp: {exc.errors()[0]['msg']}") from None


def write_stamp(path: Path, stamp: RunStamp) -> None:
    """Write `path/run.json` atomically."""
    tmp = path / f".{STAMP}.tmp"
    tmp.write_text(stamp.model_dump_json())
    os.replace(tmp, path / STAMP)


def ensure_stamp(run_dir: Path) -> RunStamp:
    """The directory's stamp; a directory without one (`wmtp train`, or made before stamps existed) gets one now."""
    stamp = read_stamp(run_dir)
    if stamp is None:
        stamp = RunStamp(uid=uuid4().hex, recipe_sha256=recipe_sha256(run_dir))
        write_stamp(run_dir, stamp)
    return stamp


def check_checkpoint(run_dir: Path, checkpoint: Path) -> None:
    """Refuse to resume a checkpoint written by another run, or for another recipe (checkpoints written before
    stamps existed carry none and are accepted)."""
    mine, theirs = ensure_stamp(run_dir), read_stamp(checkpoint)
    if theirs is None:
        return
    if theirs.uid != mine.uid:
        raise StudioError(
            f"refusing to resume {checkpoint}: it belongs to run {theirs.uid}, not to this run {mine.uid} "
            f"(stamped in {run_dir / STAMP}); the directory holds another run's files: move them away"
        )
    if theirs.recipe_sha256 != mine.recipe_sha256:
        raise StudioError(
            f"refusing to resume {checkpoint}: it was trained with recipe {theirs.recipe_sha256[:12]}, "
            f"and {run_dir / RECIPE} is now {mine.recipe_sha256[:12]}"
        )


def take_for_new_run(run_dir: Path, stamp: RunStamp) -> Path | None:
    """Prepare `run_dir` for a newly created run and stamp it. A directory that already holds another run's work
    (a reset database reuses ids) is never adopted: it is renamed to `<id>.orphan-<its uid or time>` and that new
    path is returned. A directory holding only a rolled-back submission's files is reused."""
    moved = None
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} - FRESH:
        old = read_stamp(run_dir)
        suffix = old.uid[:12] if old else datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
        moved = run_dir.with_name(f"{run_dir.name}.orphan-{suffix}")
        os.replace(run_dir, moved)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_stamp(run_dir, stamp)
    return moved


def _holder(lock_path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return f"pid {int(lock_path.read_text().strip())}"
    return "another process"


@contextlib.contextmanager
def owned(run_dir: Path, wait_s: float = 5.0) -> Iterator[None]:
    """Hold the run directory's trainer lock for the block; RunDirBusy if another trainer keeps it for `wait_s`."""
    path = run_dir / LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RunDirBusy(
                        f"run directory {run_dir} is in use by another trainer ({_holder(path)}); "
                        "not starting a second one"
                    ) from None
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def wait_until_free(run_dir: Path, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for no trainer to hold the run directory; True when none does."""
    path = run_dir / LOCK
    if not path.exists():
        return True
    deadline = time.monotonic() + timeout_s
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.2)
    finally:
        os.close(fd)
