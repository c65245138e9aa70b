"""The one place the algorithms differ: how a micro-batch's weights (and extra loss) are made.

`algorithm_hooks` is a single `match` on the recipe's algorithm; the formulas live in weights.py (pure functions)
and the loss in loss.py. Diagnostics specific to an algorithm are accumulated into `StepDiagnostics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from wmtp_studio.recipe import BaselineMTPConfig, CriticConfig, NTPConfig, Recipe, Rho1Config
from wmtp_studio.train.critic import explained_variance, value_mask, value_mse
from wmtp_studio.train.data import Batch
from wmtp_studio.train.loss import ExtraLossFn, WeightFn
from wmtp_studio.train.model import TrunkOutput, ValueHead
from wmtp_studio.train.reference import reference_ce
from wmtp_studio.train.weights import critic_weights, excess_loss, rho1_weights, shift_to_head, td_errors


@dataclass
class StepDiagnostics:
    """Sums over the micro-batches of a step of what only some algorithms produce."""

    sums: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, value: float, count: float = 1.0) -> None:
        self.sums[name] = self.sums.get(name, 0.0) + value
        self.counts[name] = self.counts.get(name, 0.0) + count

    def means(self) -> dict[str, float]:
        return {k: v / self.counts[k] for k, v in self.sums.items() if self.counts[k] > 0}


def _uniform(_k: int, _ce: Tensor, m: Tensor) -> Tensor:
    return m.float()


def algorithm_hooks(
    recipe: Recipe,
    batch: Batch,
    trunk: TrunkOutput,
    value_head: ValueHead | None,
    reference: nn.Module | None,
    diag: StepDiagnostics,
    value_scale: float,
) -> tuple[WeightFn, ExtraLossFn | None]:
    """Weights function and extra loss of one micro-batch; `value_scale` divides the value loss (processes x accum)."""
    algo = recipe.algorithm
    match algo:
        case NTPConfig() | BaselineMTPConfig():
            return _uniform, None  # METHOD.md: w = 1
        case CriticConfig():
            assert value_head is not None
            return _critic_hooks(algo, batch, trunk, value_head, diag, value_scale)
        case Rho1Config():
            if batch.ref_ce is not None:
                ref_ce = batch.ref_ce
            else:
                assert reference is not None, "live rho1 needs the reference model"
                ref_ce = reference_ce(reference, batch.input_ids)
            return _rho1_weights_fn(algo, ref_ce, diag), None
    raise AssertionError(f"unhandled algorithm {algo}")


def _critic_hooks(
    algo: CriticConfig,
    batch: Batch,
    trunk: TrunkOutput,
    value_head: ValueHead,
    diag: StepDiagnostics,
    value_scale: float,
) -> tuple[WeightFn, ExtraLossFn]:
    with torch.no_grad():
        values = value_head(trunk.hidden.detach())  # (B, S) V(s_t) before this step's update
        delta = td_errors(
            values,
            batch.rewards,
            batch.completion_mask,
            batch.segment_ids,
            gamma=algo.gamma,
            gae_lambda=algo.gae_lambda,
        )  # (B, S) indexed by target token

    def weights_for(k: int, _ce: Tensor, m: Tensor) -> Tensor:
        # Head k at t predicts x_{t+k+1}, so it takes delta_{t+k+1}.
        return critic_weights(
            shift_to_head(delta, k),
            m,
            beta=algo.beta,
            w_min=algo.w_min,
            w_max=algo.w_max,
            norm=algo.norm,
            mean_one=algo.mean_one,
        )

    def value_loss(h: Tensor) -> Tensor:
        v = value_head(h if algo.value_trunk_grad else h.detach())
        mse, n = value_mse(v, batch)
        diag.add("value_loss", float(mse.detach()) * float(n), float(n))
        ev = explained_variance(v.detach(), batch.rewards, value_mask(batch))
        if ev is not None:
            diag.add("explained_variance", ev)
        return algo.value_coef * mse / value_scale

    return weights_for, value_loss


def _rho1_weights_fn(algo: Rho1Config, ref_ce: Tensor, diag: StepDiagnostics) -> WeightFn:
    def weights_for(k: int, ce: Tensor, m: Tensor) -> Tensor:
        e = excess_loss(ce, ref_ce, k)  # (B, S): CE_{t,k} - CE^ref_{t+k+1}
        w = rho1_weights(
            e,
            m,
            mode=algo.mode,
            head=k,
            ratio=algo.ratio,
            keep_head0=algo.keep_head0,
            temperature=algo.temperature,
            eps=algo.eps,
            w_max=algo.w_max,
        )
        n = float(m.sum())
        if n == 0:
            return w
        diag.add(f"head{k}/excess_mean", float(e[m].sum()), n)
        if algo.mode == "select":
            kept = float((w * m).sum())
            diag.add(f"head{k}/selected_fraction", kept, n)
            # The head's term is the mean CE over kept entries: with the loss's denominator N, scale by N / K.
            return w * (n / max(kept, 1.0))
        return w

    return weights_for
