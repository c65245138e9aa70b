"""The one place the algorithms differ: how a micro-batch's weights (and extra loss) are made.

`algorithm_hooks` is a single `match` on the recipe's algorithm; the formulas live in weights.py (pure functions)
and the loss in loss.py. What is chosen over a whole optimiser step before its micro-batches run is here for
critic and grpo, in rho1.py for rho1 select and in grad.py for grad-wmtp's running statistics. Diagnostics specific to an algorithm are accumulated into `StepDiagnostics`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from wmtp_studio.recipe import Recipe
from wmtp_studio.recipe_algorithms import (
    BaselineMTPConfig,
    CriticConfig,
    GradConfig,
    GRPOConfig,
    NTPConfig,
    Rho1Config,
)
from wmtp_studio.train.critic import ValueRows, ev_metrics, ev_moments, value_mask
from wmtp_studio.train.data import Batch
from wmtp_studio.train.grad import GradScores
from wmtp_studio.train.loss import ExtraLossFn, UpFrontWeights, WeightFn, head_mask
from wmtp_studio.train.model import MTPModel, TrunkOutput, ValueHead
from wmtp_studio.train.reference import reference_ce
from wmtp_studio.train.rho1 import Rho1Selection
from wmtp_studio.train.weights import (
    StepStats,
    critic_weights,
    excess_loss,
    grpo_weights,
    rho1_weights,
    select_rescale,
    shift_to_head,
    step_stats,
    td_errors,
)


@dataclass
class StepDiagnostics:
    """Sums over the micro-batches of a step of what only some algorithms produce (device tensors until read)."""

    sums: dict[str, Tensor] = field(default_factory=dict)
    counts: dict[str, Tensor] = field(default_factory=dict)
    ev: Tensor | None = None  # critic: summed `ev_moments` of the step's value-loss entries

    def add(self, name: str, value: Tensor, count: Tensor | float = 1.0) -> None:
        value = value.detach().float()
        count = torch.as_tensor(count, dtype=torch.float32, device=value.device)
        self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.counts[name] = self.counts[name] + count if name in self.counts else count

    def means(self) -> dict[str, float]:
        """Per-name means (one host read); the critic's explained variance, or a flag saying it is undefined."""
        out = {}
        for k, v in self.sums.items():
            c = float(self.counts[k])
            mean = float(v) / c if c > 0 else math.nan
            if math.isfinite(mean):
                out[k] = mean
        if self.ev is not None:
            out |= ev_metrics(self.ev)
        return out


def algorithm_hooks(
    recipe: Recipe,
    batch: Batch,
    trunk: TrunkOutput,
    value_head: ValueHead | None,
    reference: nn.Module | None,
    diag: StepDiagnostics,
    value_count: float,
    *,
    value_rows: ValueRows | None = None,
    critic: tuple[CriticStep, int] | None = None,
    grpo: list[StepStats] | None = None,
    selection: Rho1Selection | None = None,
    scores: tuple[GradScores, int] | None = None,
) -> tuple[WeightFn, ExtraLossFn | None]:
    """Weights function and extra loss of one micro-batch; `value_count` divides the value loss's squared errors:
    the step's value entries over every micro-batch and process (`value_entries`), so that the value losses summed
    over them are the step's one MSE.

    `value_rows`: critic rows seen by the value loss only. `critic`: the step's TD errors and statistics and this
    micro-batch's index in it (`critic_step`). `grpo`: grpo's weight statistics over the whole step (`grpo_step`).
    `selection`: rho1 select chosen over the whole step.
    `scores`: grad-wmtp's running statistics and step sums (`grad_step_scores`), and this micro-batch's index.
    """
    algo = recipe.algorithm
    match algo:
        case NTPConfig() | BaselineMTPConfig():
            return UpFrontWeights(lambda _k, m: m.float()), None  # METHOD.md: w = 1 (`uniform_weights`)
        case CriticConfig():
            assert value_head is not None
            return _critic_hooks(algo, batch, trunk, value_head, diag, value_count, value_rows, critic)
        case Rho1Config():
            if selection is not None:
                ref_ce = selection.ref_ce
            elif batch.ref_ce is not None:
                ref_ce = batch.ref_ce
            else:
                assert reference is not None, "live rho1 needs the reference model"
                ref_ce = reference_ce(reference, batch.input_ids, batch.segment_ids, recipe.train.ce_chunk)
            return _rho1_weights_fn(algo, ref_ce, diag, selection), None
        case GradConfig():
            assert scores is not None, "grad-wmtp needs the step's running statistics"
            return scores[0].weights(scores[1]), None
        case GRPOConfig():
            return _grpo_weights_fn(algo, batch, diag, grpo), None
    raise AssertionError(f"unhandled algorithm {algo}")


def _clip(algo: CriticConfig | GRPOConfig) -> dict[str, Any]:
    """The weight formula's settings that critic-wmtp and grpo-wmtp share: beta, w_min, w_max, norm."""
    return {"beta": algo.beta, "w_min": algo.w_min, "w_max": algo.w_max, "norm": algo.norm}


@torch.no_grad()
def _td_errors(algo: CriticConfig, values: Tensor, batch: Batch) -> Tensor:
    """The batch's TD errors (B, S), indexed by target token, from V(s_t) (B, S)."""
    return td_errors(
        values.detach(),
        batch.rewards,
        batch.completion_mask,
        batch.segment_ids,
        batch.example_end,
        gamma=algo.gamma,
        gae_lambda=algo.gae_lambda,
    )


def _critic_hooks(
    algo: CriticConfig,
    batch: Batch,
    trunk: TrunkOutput,
    value_head: ValueHead,
    diag: StepDiagnostics,
    value_count: float,
    rows: ValueRows | None,
    step: tuple[CriticStep, int] | None,
) -> tuple[WeightFn, ExtraLossFn]:
    # One value forward serves the TD errors (detached) and the value loss, unless the value loss must reach the
    # trunk, in which case it runs again on the head loop's trunk output. A step of several micro-batches or
    # processes made its TD errors before the first of them (`critic_step`), with the same parameters.
    values = value_head(trunk.hidden.detach())  # (B, S) V(s_t), before this step's update
    delta = step[0].deltas[step[1]] if step is not None else _td_errors(algo, values, batch)

    def weights_for(k: int, m: Tensor) -> Tensor:
        # Head k at t predicts x_{t+k+1}, so it takes delta_{t+k+1}.
        stats = step[0].heads[k] if step is not None else None
        return critic_weights(shift_to_head(delta, k), m, **_clip(algo), mean_one=algo.mean_one, step=stats)

    def value_loss(h: Tensor) -> Tensor:
        # c_v * MSE(V, R) over the LM rows and the value-only rows together (METHOD.md: Stage 2 value
        # continual learning sees correct AND incorrect examples, else V drifts to 1).
        parts = [(value_head(h) if algo.value_trunk_grad else values, batch)]
        if rows is not None:
            hidden = rows.hidden if algo.value_trunk_grad else rows.hidden.detach()
            parts.append((value_head(hidden), rows.batch))
        sq = torch.zeros((), device=h.device)
        n = torch.zeros((), device=h.device)
        for v, b in parts:
            m = value_mask(b)
            sq = sq + (((v - b.rewards) ** 2) * m).sum()
            n = n + m.sum()
            moments = ev_moments(v, b.rewards, m)
            diag.ev = moments if diag.ev is None else diag.ev + moments
        diag.add("value_loss", sq, n)
        return algo.value_coef * sq / max(value_count, 1.0)

    return UpFrontWeights(weights_for), value_loss


@dataclass
class CriticStep:
    """critic-wmtp over an optimiser step of several micro-batches or processes: each micro-batch's TD errors,
    made before any of them is trained on, and each head's z-score and `mean_one` statistics over the step."""

    deltas: list[Tensor]  # per micro-batch (B, S), indexed by target token
    heads: list[StepStats]  # per head


def value_entries(micro: list[Batch], rows: list[Batch | None]) -> float:
    """The value loss's entries in this process's micro-batches and their value-only rows (CPU masks)."""
    return float(sum(int(value_mask(b).sum()) for b in [*micro, *(r for r in rows if r is not None)]))


@torch.no_grad()
def critic_step(
    recipe: Recipe,
    model: MTPModel,
    value_head: ValueHead | None,
    micro: list[Batch],
    reduce: Callable[[Tensor], list[float]],
    world: int,
    device: torch.device,
) -> CriticStep | None:
    """critic's TD errors and weight statistics over the whole optimiser step, so that grad_accum 2 x batch 4 (or
    2 processes x batch 4) weighs each token as one batch of 8 does (METHOD.md, Fair comparison): the z-score and
    the mean-one rescale use the step's valid entries, as rho1 select's threshold does. It costs one trunk
    forward without gradients per micro-batch. None with one micro-batch in one process, or when the recipe
    neither z-scores nor rescales (then each micro-batch's own weights are already the step's)."""
    algo = recipe.algorithm
    if not isinstance(algo, CriticConfig) or (len(micro) == 1 and world == 1):
        return None
    if algo.norm != "zscore" and not algo.mean_one:
        return None
    assert value_head is not None
    deltas, masks = [], []
    for cpu_batch in micro:
        b = cpu_batch.to(device)
        deltas.append(_td_errors(algo, value_head(model.trunk(b.input_ids, b.segment_ids).hidden), b))
        masks.append([head_mask(b.token_mask, b.segment_ids, k) for k in range(recipe.n_heads)])

    def weigh(k: int, i: int, stats: StepStats) -> Tensor:
        d, m = shift_to_head(deltas[i], k), masks[i][k]
        return critic_weights(d, m, **_clip(algo), mean_one=False, step=stats)

    per_head = [[m[k] for m in masks] for k in range(recipe.n_heads)]
    shifted = [[shift_to_head(d, k) for d in deltas] for k in range(recipe.n_heads)]
    stats = step_stats(shifted, per_head, per_head, weigh, reduce)
    return CriticStep(deltas, stats)


def _rho1_weights_fn(
    algo: Rho1Config, ref_ce: Tensor, diag: StepDiagnostics, selection: Rho1Selection | None
) -> WeightFn:
    if selection is not None:  # select, chosen over the whole step beforehand: w = N_k / K_k on kept entries
        step = selection

        def kept(k: int, m: Tensor) -> Tensor:
            chosen = step.kept[k]
            return m if chosen is None else chosen & m

        def seen(k: int, ce: Tensor, m: Tensor) -> None:
            n = m.float().sum()
            diag.add(f"head{k}/excess_mean", (excess_loss(ce, ref_ce, k) * m).sum(), n)
            diag.add(f"head{k}/selected_fraction", kept(k, m).float().sum(), n)

        return UpFrontWeights(lambda k, m: kept(k, m).float() * step.scale[k], seen)

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
            diag.add(f"head{k}/selected_fraction", (w * m).sum(), n)
            return select_rescale(w, n)
        return w

    return weights_for


def _grpo_live(batch: Batch, k: int) -> Tensor | None:
    """Head k's entries whose group carries signal (B, S), None when no completion of the batch has a group with
    signal. m_{t,k} keeps x_{t+k+1} inside x_t's example, so position t's A is that of the target's example; only
    targets inside its completion are weighted (with loss_on: all, prompt targets weigh 0)."""
    if batch.advantages is None or batch.group_signal is None:
        return None
    return batch.group_signal & shift_to_head(batch.completion_mask, k, fill=False)


def _grpo_weights_fn(
    algo: GRPOConfig, batch: Batch, diag: StepDiagnostics, step: list[StepStats] | None
) -> WeightFn:
    def weights_for(k: int, m: Tensor) -> Tensor:
        live = _grpo_live(batch, k)
        if live is None or batch.advantages is None:
            return torch.zeros_like(m, dtype=torch.float32)
        if k == 0:
            diag.add("grpo/signal_fraction", (live & m).float().sum(), m.float().sum())
        return grpo_weights(
            batch.advantages,
            live,
            m,
            **_clip(algo),
            mean_one=algo.mean_one,
            step=step[k] if step is not None else None,
        )

    return UpFrontWeights(weights_for)


@torch.no_grad()
def grpo_step(
    recipe: Recipe, micro: list[Batch], reduce: Callable[[Tensor], list[float]], world: int
) -> list[StepStats] | None:
    """grpo-wmtp's per-head weight statistics over the whole optimiser step (its z-score and mean-one rescale),
    from the batches alone (no forward): grad_accum 2 x batch 4 and 2 processes x batch 4 weigh as batch 8. None
    with one micro-batch in one process, or when the recipe neither z-scores nor rescales."""
    algo = recipe.algorithm
    if not isinstance(algo, GRPOConfig) or (len(micro) == 1 and world == 1):
        return None
    if algo.norm != "zscore" and not algo.mean_one:
        return None
    n = recipe.n_heads
    valid = [[head_mask(b.token_mask, b.segment_ids, k) for b in micro] for k in range(n)]
    live = [[_grpo_live(b, k) for b in micro] for k in range(n)]
    scored = [
        [v & x if x is not None else torch.zeros_like(v) for v, x in zip(valid[k], live[k], strict=True)]
        for k in range(n)
    ]
    adv = [b.advantages if b.advantages is not None else torch.zeros(b.input_ids.shape) for b in micro]

    def weigh(k: int, i: int, stats: StepStats) -> Tensor:
        x = live[k][i]
        if x is None:
            return torch.zeros(valid[k][i].shape)
        return grpo_weights(adv[i], x, valid[k][i], **_clip(algo), mean_one=False, step=stats)

    return step_stats([adv] * n, scored, valid, weigh, reduce)
