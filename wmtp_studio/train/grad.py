"""grad-wmtp over one optimiser step (formulas: weights.py): the running statistics of the gradient-norm scores
its weights read, initialised from the first step's own scores, and the sums that update them once a step is
done. `GradScores.weights` is the loss's `EntryWeights` (loss.py), whole heads or chunk by chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from wmtp_studio.recipe import Recipe
from wmtp_studio.recipe_algorithms import GradConfig
from wmtp_studio.train.data import Batch
from wmtp_studio.train.loss import EntryWeights, head_mask, head_scores, head_targets
from wmtp_studio.train.model import MTPModel
from wmtp_studio.train.weights import ema_update, grad_scores, grad_weights, masked_mean, score_sums


@dataclass
class GradScores:
    """grad-wmtp over one optimiser step (formulas: weights.py): the running statistics its weights use (those of
    the steps before it) and the sums of its own valid scores, for the EMA update once the step is done."""

    algo: GradConfig
    # per head the running (mean, variance) before this step; None: no history yet
    ema: list[tuple[float, float] | None]
    stats: Tensor  # (n, 2) per head (mu, sigma) on the device; (0, 0) without history: z = 0
    sums: Tensor  # (n, 3) per head (N, sum s, sum s^2) of this step's valid scores, this process

    def score_for(self, _k: int, logits: Tensor, targets: Tensor, w_out: Tensor) -> Tensor:
        """loss.ScoreFn; `w_out` (V, D): the unembedding weight, which `score: hidden` reads."""
        return grad_scores(logits, targets, w_out if self.algo.score == "hidden" else None)

    def weights_for(self, k: int, score: Tensor, m: Tensor) -> Tensor:
        self.sums[k] += score_sums(score, m)
        return self._weights(k, score, m, self.algo.mean_one)

    def entry(self, k: int, score: Tensor, m: Tensor) -> Tensor:
        """The clipped weights before the mean-one rescale (B, c): each entry's from its own score."""
        return self._weights(k, score, m, False)

    def _weights(self, k: int, score: Tensor, m: Tensor, mean_one: bool) -> Tensor:
        a = self.algo
        mu, sigma = self.stats[k, 0], self.stats[k, 1]
        return grad_weights(
            score, m, mu, sigma, beta=a.beta, w_min=a.w_min, w_max=a.w_max, norm=a.norm, mean_one=mean_one
        )

    def divisor(self, k: int, score: Tensor, m: Tensor, u: Tensor) -> Tensor:
        """The mean-one rescale's divisor of head k's clipped weights u (1 without `mean_one`); adds the scores
        to the step's sums, as `weights_for` does."""
        self.sums[k] += score_sums(score, m)
        return masked_mean(u, m) if self.algo.mean_one else torch.ones((), device=u.device)

    def weights(self) -> EntryWeights:
        """loss.EntryWeights: `weights_for` on a whole head, or chunk by chunk under `train.ce_chunk`."""
        return EntryWeights(self.algo.score, self.weights_for, self.entry, self.divisor)

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
    device: torch.device,
) -> GradScores | None:
    """grad-wmtp's state for one step (None for the other algorithms). `ema`: the running statistics so far, None
    before the first step: then the step's own statistics, summed over its micro-batches and (`reduce`) processes
    in a pass without gradients, initialise them (weights.py)."""
    algo = recipe.algorithm
    if not isinstance(algo, GradConfig):
        return None
    n = recipe.n_heads
    scores = GradScores(
        algo, [None] * n, torch.zeros(n, 2), torch.zeros(n, 3, dtype=torch.float64, device=device)
    )
    if ema is None:
        for cpu_batch in micro:
            b = cpu_batch.to(device)
            trunk = model.trunk(b.input_ids, b.segment_ids)
            for k in range(n):
                targets = head_targets(b.input_ids, k)
                score = head_scores(model, k, trunk, targets, scores.score_for, recipe.train.ce_chunk)
                scores.sums[k] += score_sums(score, head_mask(b.token_mask, b.segment_ids, k))
        ema = scores.updated(reduce(scores.sums.flatten()))
        scores.sums.zero_()
    scores.ema = list(ema)
    scores.stats = torch.tensor(
        [(e[0], math.sqrt(e[1])) if e is not None else (0.0, 0.0) for e in ema], device=device
    )
    return scores
