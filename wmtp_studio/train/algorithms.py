"""The one place the algorithms differ: how a micro-batch's weights (and extra loss) are made.

`algorithm_hooks` is a single `match` on the recipe's algorithm; the formulas live in weights.py (pure functions)
and the loss in loss.py. Diagnostics specific to an algorithm are accumulated into `StepDiagnostics`.
"""

from __future__ import annotations

import math
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
    """Sums over the micro-batches of a step of what only some algorithms produce (device tensors until read)."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, Tensor] = field(default_factory=dict)

    def add(self, name: str, value: Tensor, count: Tensor | float = 1.0) -> None:
        value = value.detach().float()
        count = torch.as_tensor(count, dtype=torch.float32, device=value.device)
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts[name] + count if name in self.counts else count

    def means(self) -> dict[str, float]:
        """Per-name means (one host read); NaN-valued entries (e.g. undefined explained variance) are left out."""
        out = {}
        for k, v in self.sums.items():
            c = float(self.counts[k])
            mean = float(v) / c if c > 0 else math.nan
            if math.isfinite(mean):
                out[k] = mean
        return out


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
    # One value forward serves the TD errors (detached) and the value loss, unless the value loss must reach the
    # trunk, in which case it runs again on the head loop's trunk output.
    values = value_head(trunk.hidden.detach())  # (B, S) V(s_t), before this step's update
    with torch.no_grad():
        delta = td_errors(
            values.detach(),
            batch.rewards,
            batch.completion_mask,
            batch.segment_ids,
            batch.example_end,
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
        v = value_head(h) if algo.value_trunk_grad else values
        mse, n = value_mse(v, batch)
        diag.add("value_loss", mse * n, n)
        diag.add("explained_variance", explained_variance(v.detach(), batch.rewards, value_mask(batch)))
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
        n = m.float().sum()
        diag.add(f"head{k}/excess_mean", (e * m).sum(), n)
        if algo.mode == "select":
            kept = (w * m).sum()
            diag.add(f"head{k}/selected_fraction", kept, n)
            # The head's term is the mean CE over kept entries: with the loss's denominator N, scale by N / K.
            return w * (n / kept.clamp(min=1.0))
        return w

    return weights_for
