"""Checkpoints published atomically: `checkpoints/step_<n>/` appears complete or not at all.

Every rank writes its RNG state into a temporary directory; rank 0 writes the model (HF files + extra heads),
the value head, optimiser, scheduler and trainer state, fsyncs everything, renames the directory into place and
then replaces the `latest` pointer. A reader that follows `latest` always finds a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmtp_studio.errors import StudioError

LATEST = "latest"


def checkpoints_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def staging_dir(run_dir: Path, step: int) -> Path:
    return checkpoints_dir(run_dir) / f".tmp-step_{step}"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with open(path, "rb") as fh:
                os.fsync(fh.fileno())
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish(run_dir: Path, step: int, keep: int) -> Path:
    """Rank 0, after every rank wrote into the staging dir: fsync, rename, move `latest`, prune old ones."""
    staging, final = staging_dir(run_dir, step), checkpoints_dir(run_dir) / f"step_{step}"
    _fsync_tree(staging)
    if final.exists():
        shutil.rmtree(final)
    os.replace(staging, final)
    pointer = checkpoints_dir(run_dir) / f".{LATEST}.tmp"
    pointer.write_text(final.name)
    with open(pointer, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(pointer, checkpoints_dir(run_dir) / LATEST)
    done = sorted(
        (p for p in checkpoints_dir(run_dir).glob("step_*") if p.is_dir()),
        key=lambda p: int(p.name.split("_")[1]),
    )
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = checkpoints_dir(run_dir) / LATEST
    if not pointer.is_file():
        return None
    path = checkpoints_dir(run_dir) / pointer.read_text().strip()
    if not (path / "trainer_state.json").is_file():
        raise StudioError(f"checkpoint pointer {pointer} names {path.name}, which is incomplete")
    return path


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


def read_json(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def assert_finite(module: torch.nn.Module, what: str) -> None:
    """Refuse to checkpoint non-finite parameters."""
    for name, p in module.named_parameters():
        if not torch.isfinite(p).all():
            raise StudioError(f"refusing to checkpoint {what}: parameter {name} is not finite")
