"""rho1 `select` across processes: two gloo ranks holding 4 rows each keep exactly what one batch of 8 keeps."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.unit.test_rho1_select import CPU, RECIPE, batch_of_8, kept_in_one_batch, rows, tiny
from wmtp_studio.train.rho1 import rho1_step_selection


def _rank(rank: int, out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29541"}
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        model, full = tiny(), batch_of_8()
        selection = rho1_step_selection(RECIPE, model, [rows(full, 4 * rank, 4 * rank + 4)], None, 2, CPU)
        assert selection is not None
        torch.save([selection[0].kept[k] for k in (1, 2)] + [selection[0].scale], f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_select_like_one_batch_of_8(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    mp.spawn(_rank, args=(str(tmp_path),), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    model, full = tiny(), batch_of_8()
    for i, k in enumerate((1, 2)):
        assert torch.equal(torch.cat([parts[0][i], parts[1][i]]), kept_in_one_batch(model, full, k))
    assert parts[0][2] == parts[1][2]  # both ranks scale by the global N_k / K_k
