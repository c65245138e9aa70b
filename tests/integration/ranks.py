"""Distributed tests' ranks: spawned processes in one gloo group, rendezvous through a file (no port to race for).

A rank whose work is done leaves as the trainer's does (`setup.leave_process_group`): past torch's teardown, which
can abort a finished process ("terminate called without an active exception", SIGABRT). A rank that raises is
reported by `mp.spawn` and fails the test.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp

from wmtp_studio.train.setup import leave_process_group


def _rank(rank: int, target: Callable[..., None], args: tuple[Any, ...], where: str, world: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{where}/rendezvous", rank=rank, world_size=world)
    target(rank, *args)
    leave_process_group(0)


def run_ranks(target: Callable[..., None], *args: Any, world: int = 2) -> None:
    """Run `target(rank, *args)` in `world` spawned processes of one gloo group (created and destroyed here)."""
    with tempfile.TemporaryDirectory() as where:
        mp.spawn(_rank, args=(target, args, where, world), nprocs=world, join=True)
