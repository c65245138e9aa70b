"""Distributed tests' ranks: spawned processes in one gloo group, rendezvous through a file (no port to race for).

torch's gloo teardown can abort a rank ("terminate called without an active exception", SIGABRT) after its work is
done, as the trainer's own entry point notes. `run_ranks` tells that apart from a failure: every rank marks the
end of its work after a barrier, before the teardown, and an abort after every mark is not the test's concern.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessExitedException


def _rank(rank: int, target: Callable[..., None], args: tuple[Any, ...], where: str, world: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{where}/rendezvous", rank=rank, world_size=world)
    try:
        target(rank, *args)
        dist.barrier()
        (Path(where) / f"done{rank}").touch()
    finally:
        dist.destroy_process_group()


def run_ranks(target: Callable[..., None], *args: Any, world: int = 2) -> None:
    """Run `target(rank, *args)` in `world` spawned processes of one gloo group (created and destroyed here)."""
    with tempfile.TemporaryDirectory() as where:
        try:
            mp.spawn(_rank, args=(target, args, where, world), nprocs=world, join=True)
        except ProcessExitedException as exc:
            finished = all((Path(where) / f"done{r}").exists() for r in range(world))
            if exc.signal_name != "SIGABRT" or not finished:
                raise
