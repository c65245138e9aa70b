"""Finding a run's job processes in /proc (no psutil): to kill only the trainer, or read the GPUs it was given."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path


def job_processes(run_dir: Path) -> dict[int, list[str]]:
    """Live processes whose command line names `run_dir` (the launcher and the trainer ranks), with their argv."""
    procs = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace").split("\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue  # exited meanwhile
        if str(run_dir) in argv and state != "Z":
            procs[int(entry)] = argv
    return procs


def trainer_pids(run_dir: Path) -> list[int]:
    """The `python -m wmtp_studio.train` ranks of the run, not the `accelerate launch` parent."""
    return [
        pid
        for pid, argv in job_processes(run_dir).items()
        if "wmtp_studio.train" in argv and "accelerate.commands.launch" not in argv
    ]


def visible_devices(run_dir: Path) -> set[str]:
    """CUDA_VISIBLE_DEVICES of every live process of the run (one value when they agree)."""
    values = set()
    for pid in job_processes(run_dir):
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in environ:
            if item.startswith(b"CUDA_VISIBLE_DEVICES="):
                values.add(item.split(b"=", 1)[1].decode())
    return values


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
