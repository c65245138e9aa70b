"""grad-wmtp's running statistics across processes: two gloo ranks holding 4 rows each start from, and update to,
the statistics of one batch of 8 (the step's score sums are reduced over every process, as the trainer does)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.unit.test_grad_wmtp import CPU, batch_of_8, recipe, rows, step, tiny


def _all_reduce(v: torch.Tensor) -> list[float]:
    v = v.to(torch.float64)  # as step._reduce: a float64 sum over processes, then one host read
    dist.all_reduce(v)
    return [float(x) for x in v.tolist()]


def _rank(rank: int, out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29547"}
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        from wmtp_studio.train.grad import grad_step_scores

        model, full = tiny(), batch_of_8()
        mine = [rows(full, 4 * rank, 4 * rank + 4)]
        scores = grad_step_scores(
            recipe(), model, mine, None, _all_reduce, 2, CPU
        )  # the first step's statistics
        assert scores is not None
        torch.save(scores.ema, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_start_from_the_statistics_of_one_batch_of_8(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert parts[0] == parts[1]  # every rank holds the same running statistics
    _, _, one = step(tiny(), [batch_of_8()], "logit", False, None)  # one process, the whole batch
    for got, want in zip(parts[0], one, strict=True):
        assert got == pytest.approx(want, rel=1e-5)
