"""Checkpoints published atomically: `checkpoints/step_<n>/` appears complete or not at all.

Every rank writes its RNG state into a temporary directory; rank 0 writes the model (HF files + extra heads),
the value head, optimiser, scheduler and trainer state, fsyncs everything, renames the directory into place and
then replaces the `latest` pointer. A reader that follows `latest` always finds a complete checkpoint. The
layout, the pointer and the trainer state are the run directory's contract (rundir/checkpoints.py).
"""

from __future__ import annotations

import os
import random
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wmtp_studio.errors import StudioError
from wmtp_studio.rundir.checkpoints import checkpoints_dir, point_latest
from wmtp_studio.rundir.checkpoints import latest_checkpoint as latest_checkpoint


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
    point_latest(run_dir, final)
    done = sorted(
        (p for p in checkpoints_dir(run_dir).glob("step_*") if p.is_dir()),
        key=lambda p: int(p.name.split("_")[1]),
    )
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def assert_finite(named: Iterable[tuple[str, torch.Tensor]], what: str) -> None:
    """Refuse to checkpoint non-finite parameters (`named`: a module's named_parameters or a state dict's items)."""
    for name, p in named:
        if not torch.isfinite(p).all():
            raise StudioError(f"refusing to checkpoint {what}: parameter {name} is not finite")
