"""rho1 `select` across processes: two gloo ranks holding 4 rows each keep exactly what one batch of 8 keeps."""

from __future__ import annotations

from pathlib import Path

import torch

from tests.integration.ranks import run_ranks
from tests.unit.test_rho1_select import CPU, RECIPE, batch_of_8, kept_in_one_batch, rows, tiny
from wmtp_studio.train.rho1 import rho1_step_selection


def _rank(rank: int, out: str) -> None:
    model, full = tiny(), batch_of_8()
    selection = rho1_step_selection(RECIPE, model, [rows(full, 4 * rank, 4 * rank + 4)], None, 2, CPU)
    assert selection is not None
    torch.save([selection[0].kept[k] for k in (1, 2)] + [selection[0].scale], f"{out}/rank{rank}.pt")


def test_two_gloo_ranks_select_like_one_batch_of_8(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run_ranks(_rank, str(tmp_path))
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    model, full = tiny(), batch_of_8()
    for i, k in enumerate((1, 2)):
        assert torch.equal(torch.cat([parts[0][i], parts[1][i]]), kept_in_one_batch(model, full, k))
    assert parts[0][2] == parts[1][2]  # both ranks scale by the global N_k / K_k
