"""grad-wmtp's running statistics across processes: two gloo ranks holding 4 rows each start from, and update to,
the statistics of one batch of 8 (the step's score sums are reduced over every process, as the trainer does)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from tests.integration.ranks import run_ranks
from tests.unit.test_grad_wmtp import CPU, batch_of_8, recipe, rows, step, tiny


def _all_reduce(v: torch.Tensor) -> list[float]:
    v = v.to(torch.float64)  # as step._reduce: a float64 sum over processes, then one host read
    dist.all_reduce(v)
    return [float(x) for x in v.tolist()]


def _rank(rank: int, out: str) -> None:
    from wmtp_studio.train.grad import grad_step_scores

    model, full = tiny(), batch_of_8()
    mine = [rows(full, 4 * rank, 4 * rank + 4)]
    scores = grad_step_scores(recipe(), model, mine, None, _all_reduce, 2, CPU)  # the first step's statistics
    assert scores is not None
    torch.save(scores.ema, f"{out}/rank{rank}.pt")


def test_two_gloo_ranks_start_from_the_statistics_of_one_batch_of_8(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run_ranks(_rank, str(tmp_path))
    parts = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert parts[0] == parts[1]  # every rank holds the same running statistics
    _, _, one = step(tiny(), [batch_of_8()], "logit", False, None)  # one process, the whole batch
    for got, want in zip(parts[0], one, strict=True):
        assert got == pytest.approx(want, rel=1e-5)


def _one_micro_batch_each(rank: int, out: str, first: list) -> None:  # type: ignore[type-arg]
    """One micro-batch of 4 rows on each of two ranks, whole heads and chunked: loss, summed gradients and the
    updated statistics, as train_step makes them (global denominators, gradients summed over processes)."""
    from wmtp_studio.train.algorithms import StepDiagnostics, algorithm_hooks
    from wmtp_studio.train.grad import grad_step_scores
    from wmtp_studio.train.loss import forward_backward, head_mask

    results = {}
    for chunk in (None, 5):
        model, mine = tiny(), rows(batch_of_8(), 4 * rank, 4 * rank + 4)
        r = recipe()
        counts = [float(head_mask(mine.token_mask, mine.segment_ids, k).sum()) for k in range(3)]
        dens = _all_reduce(torch.tensor(counts))
        scores = grad_step_scores(r, model, [mine], first, _all_reduce, 2, CPU)
        assert scores is not None and scores.across and scores.before is None  # no pass before the step
        trunk = model.trunk(mine.input_ids, mine.segment_ids)
        wf, _ = algorithm_hooks(r, mine, trunk, None, None, StepDiagnostics(), 1.0, scores=(scores, 0))
        stats = forward_backward(
            model, trunk, mine.input_ids, mine.token_mask, mine.segment_ids, wf, [1.0, 0.5, 0.25], dens,
            score_for=scores.score_fn, ce_chunk=chunk,
        )  # fmt: skip
        loss = _all_reduce(stats.loss.detach().reshape(1))[0]
        grads = {}
        for name, p in model.named_parameters():
            if p.grad is not None:
                g = p.grad.double()
                dist.all_reduce(g)
                grads[name] = g.float()
        results[chunk] = (loss, grads, scores.updated(_all_reduce(scores.sums.flatten())))
    if rank == 0:
        torch.save(results, f"{out}/results.pt")


def test_one_micro_batch_on_each_of_two_ranks_trains_as_one_batch_of_8(tmp_path: Path) -> None:
    """mean_one over the step with one micro-batch per process: each head's weight mean is all-reduced in the pass
    that trains (no pass before the step), so 2 processes x batch 4 give one process's loss, gradients and running
    statistics on the batch of 8, whole heads and chunked (each rank's own mean: the loss differs, ~4e-4)."""
    torch.set_num_threads(1)
    first = step(tiny(), [batch_of_8()], "logit", False, None)[2]  # some history, the same on both ranks
    run_ranks(_one_micro_batch_each, str(tmp_path), first)
    results = torch.load(tmp_path / "results.pt", weights_only=False)
    for chunk in (None, 5):
        g_one, loss_one, ema_one = step(tiny(), [batch_of_8()], "logit", False, first, chunk=chunk)
        loss, grads, ema = results[chunk]
        assert loss == pytest.approx(loss_one, rel=1e-6), chunk
        assert set(grads) == set(g_one)
        for name, g in g_one.items():
            torch.testing.assert_close(grads[name], g, atol=2e-6, rtol=1e-5, msg=f"{chunk} {name}")
        for a, b in zip(ema, ema_one, strict=True):
            assert a == pytest.approx(b, rel=1e-5)
