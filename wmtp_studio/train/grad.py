"""grad-wmtp over one optimiser step (formulas: weights.py): the running statistics of the gradient-norm scores
its weights read, initialised from the first step's own scores, and the sums that update them once a step is
done. `GradScores.weights` is the loss's `EntryWeights` (loss.py), which scores whole heads or chunk by chunk in
the pass that trains on them. The mean-one rescale divides by the mean over the whole step, as critic's and grpo's
do (METHOD.md, Fair comparison), so that grad_accum 2 x batch 4 (or 2 processes x batch 4) weighs each token as one
batch of 8 does: with one micro-batch per process, each head's mean is all-reduced in that pass before its backward;
a step of several micro-batches scores them all first (one pass without gradients), and its weights are then known
before the pass (`UpFrontWeights`). `mean_one_over: micro-batch` keeps each micro-batch's own mean on each process.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from wmtp_studio.recipe import Recipe
from wmtp_studio.recipe_algorithms import GradConfig
from wmtp_studio.train.data import Batch
from wmtp_studio.train.loss import EntryWeights, ScoreFn, UpFrontWeights, head_mask, head_scores, head_targets
from wmtp_studio.train.model import MTPModel
from wmtp_studio.train.weights import (
    ema_update,
    grad_scores,
    grad_weights,
    masked_mean,
    rescale_mean_one,
    score_sums,
)


@dataclass
class GradScores:
    """grad-wmtp over one optimiser step (formulas: weights.py): the running statistics its weights use (those of
    the steps before it) and the sums of its own valid scores, for the EMA update once the step is done."""

    algo: GradConfig
    # per head the running (mean, variance) before this step; None: no history yet
    ema: list[tuple[float, float] | None]
    stats: Tensor  # (n, 2) per head (mu, sigma) on the device; (0, 0) without history: z = 0
    sums: Tensor  # (n, 3) per head (N, sum s, sum s^2) of this step's valid scores, this process
    # scored before the step (several micro-batches, `mean_one`): per micro-batch, per head the clipped weights
    # (B, S), and per head their mean over the step's valid entries, every process
    before: list[list[Tensor]] | None = None
    w_mean: list[float] | None = None
    # one micro-batch in each of several processes: each head's mean is all-reduced in the pass instead
    across: bool = False

    @property
    def score_fn(self) -> ScoreFn | None:
        """What `forward_backward` scores the heads with in the pass that trains on them: None once scored."""
        return None if self.before is not None else self.score_for

    def score_for(self, _k: int, logits: Tensor, targets: Tensor, w_out: Tensor) -> Tensor:
        """loss.ScoreFn; `w_out` (V, D): the unembedding weight, which `score: hidden` reads."""
        return grad_scores(logits, targets, w_out if self.algo.score == "hidden" else None)

    def weights_for(self, k: int, score: Tensor, m: Tensor) -> Tensor:
        u = self.entry(k, score, m)
        return rescale_mean_one(u, m, self.divisor(k, score, m, u))

    def entry(self, k: int, score: Tensor, m: Tensor) -> Tensor:
        """The clipped weights before the mean-one rescale (B, c): each entry's from its own score."""
        a = self.algo
        mu, sigma = self.stats[k, 0], self.stats[k, 1]
        return grad_weights(
            score, m, mu, sigma, beta=a.beta, w_min=a.w_min, w_max=a.w_max, norm=a.norm, mean_one=False
        )

    def divisor(self, k: int, score: Tensor, m: Tensor, u: Tensor) -> Tensor:
        """The mean-one rescale's divisor of head k's clipped weights u (1 without `mean_one`): their mean over
        the valid entries, of every process with `across` (one small all-reduce per head, in head order on every
        process). Adds the scores to the step's sums."""
        self.sums[k] += score_sums(score, m)
        if not self.algo.mean_one:
            return torch.ones((), device=u.device)
        if not self.across:
            return masked_mean(u, m)
        total = torch.stack([(u.double() * m).sum(), m.double().sum()])
        dist.all_reduce(total)
        return (total[0] / total[1].clamp(min=1)).clamp(min=1e-30).to(u.dtype)

    def weights(self, i: int) -> EntryWeights | UpFrontWeights:
        """Micro-batch i's weights: from the scores made before the step, rescaled by the step's mean
        (`before`); else loss.EntryWeights, `weights_for` on a whole head or chunk by chunk (`train.ce_chunk`)."""
        if self.before is None:
            return EntryWeights(self.algo.score, self.weights_for, self.entry, self.divisor)
        clipped, w_mean = self.before[i], self.w_mean
        assert w_mean is not None
        return UpFrontWeights(lambda k, m: rescale_mean_one(clipped[k], m, w_mean[k]))

    def updated(self, step_sums: list[float]) -> list[tuple[float, float] | None]:
        """The running statistics after this step; `step_sums`: `sums` flattened and summed over processes."""
        rows = [tuple(step_sums[3 * k : 3 * k + 3]) for k in range(len(self.ema))]
        return [
            ema_update(e, (r[0], r[1], r[2]), self.algo.momentum) for e, r in zip(self.ema, rows, strict=True)
        ]


@torch.no_grad()
def grad_step_scores(
    recipe: Recipe,
    model: MTPModel,
    micro: list[Batch],
    ema: list[tuple[float, float] | None] | None,
    reduce: Callable[[Tensor], list[float]],
    world: int,
    device: torch.device,
) -> GradScores | None:
    """grad-wmtp's state for one step (None for the other algorithms). `ema`: the running statistics so far, None
    before the first step: then the step's own statistics, summed over its micro-batches and (`reduce`) processes
    in a pass without gradients, initialise them (weights.py). With `mean_one` over the step (`mean_one_over`) and
    several micro-batches, that pass runs every step and keeps the scores, and the clipped weights' mean over the
    step is taken from them (one trunk and unembedding forward per micro-batch, without gradients); with one
    micro-batch on each of several processes, the pass that trains all-reduces each head's mean (`across`)."""
    algo = recipe.algorithm
    if not isinstance(algo, GradConfig):
        return None
    n = recipe.n_heads
    scores = GradScores(
        algo, [None] * n, torch.zeros(n, 2), torch.zeros(n, 3, dtype=torch.float64, device=device)
    )
    over_step = algo.mean_one and algo.mean_one_over == "step"
    step_wide = over_step and len(micro) > 1
    scores.across = over_step and len(micro) == 1 and world > 1
    # step-wide: per micro-batch, per head the scores and the masks
    made_all: list[tuple[list[Tensor], list[Tensor]]] = []
    if ema is None or step_wide:
        for cpu_batch in micro:
            b = cpu_batch.to(device)
            trunk = model.trunk(b.input_ids, b.segment_ids)
            heads = [head_mask(b.token_mask, b.segment_ids, k) for k in range(n)]
            made = [
                head_scores(
                    model, k, trunk, head_targets(b.input_ids, k), scores.score_for, recipe.train.ce_chunk
                )
                for k in range(n)
            ]
            for k in range(n):
                scores.sums[k] += score_sums(made[k], heads[k])
            if step_wide:
                made_all.append((made, heads))
    if ema is None:
        ema = scores.updated(reduce(scores.sums.flatten()))
        if not step_wide:  # the pass that trains on them adds them again
            scores.sums.zero_()
    scores.ema = list(ema)
    scores.stats = torch.tensor(
        [(e[0], math.sqrt(e[1])) if e is not None else (0.0, 0.0) for e in ema], device=device
    )
    if step_wide:
        u = torch.zeros(n, 2, dtype=torch.float64, device=device)  # per head (sum of clipped weights, count)
        scores.before = []
        for made, heads in made_all:
            clipped = [scores.entry(k, made[k], heads[k]) for k in range(n)]
            for k in range(n):
                u[k, 0] += clipped[k].double().sum()
                u[k, 1] += heads[k].double().sum()
            scores.before.append(clipped)
        total = reduce(u.flatten())
        scores.w_mean = [max(total[2 * k] / max(total[2 * k + 1], 1.0), 1e-30) for k in range(n)]
    return scores
