"""`checkpoints/`: where each checkpoint lives, the `latest` pointer to the newest complete one, and the
`TrainerState` each one holds in `trainer_state.json`.

The trainer writes them (train/checkpoint.py publishes a checkpoint atomically, then moves the pointer); the
trainer on resume, the worker (which cuts metrics.jsonl back to where the trainer will resume) and the evaluator
read them, through the functions here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from wmtp_studio.errors import StudioError

CHECKPOINTS = "checkpoints"
LATEST = "latest"
TRAINER_STATE = "trainer_state.json"


class TrainerState(BaseModel):
    """Everything in the trainer that advances; saved in each checkpoint and restored on resume."""

    model_config = ConfigDict(extra="forbid")

    step: int = 0
    """Optimiser steps done."""
    epoch: int = 0
    batch_index: int = 0
    """Next global micro-batch of the epoch plan."""
    tokens_seen: int = 0
    nonfinite_streak: int = 0
    """Consecutive steps skipped for a non-finite loss."""
    nonfinite_total: int = 0
    stage1_done: bool = False
    """critic-wmtp: the value head's Stage 1 is behind us."""
    seq: int = 0
    """The metrics.jsonl `seq` the resumed stream continues from."""
    metrics_offset: int = 0
    """metrics.jsonl's length in bytes at the checkpoint: a resume cuts the file back to it."""
    score_ema: list[tuple[float, float] | None] | None = None
    """grad-wmtp: per head, the running (EMA) mean and variance of the gradient-norm score (null: no valid entry
    yet), exact float64 values (JSON keeps every digit); None for the other algorithms (then not written)."""


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / CHECKPOINTS


def write_trainer_state(checkpoint: Path, state: TrainerState) -> None:
    """`checkpoint/trainer_state.json` (indented, sorted keys: the format every version has written; an unset
    optional field is left out, so a state without one is written as before it existed)."""
    data = state.model_dump(exclude_none=True)
    (checkpoint / TRAINER_STATE).write_text(json.dumps(data, indent=2, sort_keys=True))


def read_trainer_state(checkpoint: Path) -> TrainerState:
    """The state saved in a checkpoint; a StudioError naming the file if it is not one."""
    path = checkpoint / TRAINER_STATE
    try:
        return TrainerState.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise StudioError(f"{path} is not a trainer state: {exc.errors()[0]['msg']}") from None


def point_latest(run_dir: Path, checkpoint: Path) -> None:
    """Make `checkpoints/latest` name `checkpoint` (a complete one), atomically and durably."""
    pointer = checkpoints_dir(run_dir) / f".{LATEST}.tmp"
    pointer.write_text(checkpoint.name)
    with open(pointer, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer, checkpoints_dir(run_dir) / LATEST)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = checkpoints_dir(run_dir) / LATEST
    if not pointer.is_file():
        return None
    path = checkpoints_dir(run_dir) / pointer.read_text().strip()
    if not (path / TRAINER_STATE).is_file():
        raise StudioError(f"checkpoint pointer {pointer} names {path.name}, which is incomplete")
    return path


def resume_state(run_dir: Path) -> TrainerState:
    """The state a resumed trainer starts from: its latest checkpoint's, or a fresh one."""
    latest = latest_checkpoint(run_dir)
    return read_trainer_state(latest) if latest is not None else TrainerState()
