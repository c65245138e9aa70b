"""critic-wmtp Stage 1 (value pre-training, trunk frozen) and the value loss shared with Stage 2 (METHOD.md).

The value head reads trunk hidden states h_t; its target at every state s_t that precedes a completion token
(s_0 = end of prompt ... s_{T-1}) is the example's verifiable reward R in {0, 1}. The MSE optimum is
P(success | x_{<=t}).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from wmtp_studio.recipe_algorithms import Stage1Config
from wmtp_studio.train.data import Batch
from wmtp_studio.train.loss import head_mask
from wmtp_studio.train.model import MTPModel, ValueHead


def value_mask(batch: Batch) -> Tensor:
    """States s_t whose next token is a completion token of the same example: (B, S) bool."""
    return head_mask(batch.completion_mask, batch.segment_ids, 0)


def value_mse(values: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
    """Masked MSE(V, R) and its count. values: (B, S)."""
    m = value_mask(batch).float()
    return (((values - batch.rewards) ** 2) * m).sum() / m.sum().clamp(min=1), m.sum()


@dataclass
class ValueRows:
    """Stage 2 rows that only the value loss sees (incorrect examples under `train_on: correct`, METHOD.md):
    their batch and the trunk's hidden states on them, (B', S', D)."""

    batch: Batch
    hidden: Tensor


def ev_moments(values: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
    """Sufficient statistics of explained variance over masked entries: [n, sum R, sum R^2, sum d, sum d^2] with
    d = R - V, float64 (5,). They add up over micro-batches, so a step's EV is exact, not a mean of EVs."""
    m = mask.bool()
    r, d = rewards.double()[m], (rewards.double() - values.detach().double())[m]
    return torch.stack([m.sum().double(), r.sum(), (r * r).sum(), d.sum(), (d * d).sum()])


def ev_from_moments(moments: Tensor) -> float | None:
    """1 - Var(R - V) / Var(R) (population variances); None when undefined (no entry, or R constant)."""
    n, sr, sr2, sd, sd2 = (float(x) for x in moments)
    if n < 1:
        return None
    var_r = sr2 / n - (sr / n) ** 2
    if var_r <= 1e-12:
        return None
    return 1.0 - max(0.0, sd2 / n - (sd / n) ** 2) / var_r


def ev_metrics(moments: Tensor, prefix: str = "") -> dict[str, float]:
    """`explained_variance`, or `explained_variance_undefined: 1` when R is constant (never silently dropped)."""
    ev = ev_from_moments(moments)
    return (
        {f"{prefix}explained_variance_undefined": 1.0} if ev is None else {f"{prefix}explained_variance": ev}
    )


@torch.no_grad()
def heldout_value_stats(model: MTPModel, head: ValueHead, batches: list[Batch]) -> dict[str, float]:
    """Value loss, explained variance and mean V on correct / incorrect examples over held-out batches."""
    moments = torch.zeros(5, dtype=torch.float64)
    loss_sum, count = 0.0, 0.0
    v_sum = {1.0: 0.0, 0.0: 0.0}
    v_n = {1.0: 0.0, 0.0: 0.0}
    for b in batches:
        v = head(model.trunk(b.input_ids, b.segment_ids).hidden)  # (B, S)
        loss, n = value_mse(v, b)
        loss_sum, count = loss_sum + float(loss * n), count + float(n)
        m = value_mask(b)
        moments += ev_moments(v, b.rewards, m).cpu()
        for r in v_sum:
            sel = m & (b.rewards == r)
            v_sum[r] += float(v[sel].sum())
            v_n[r] += float(sel.sum())
    stats = {"value_loss": loss_sum / max(count, 1.0), **ev_metrics(moments)}
    for r, name in ((1.0, "correct"), (0.0, "incorrect")):
        if v_n[r]:
            stats[f"mean_v_{name}"] = v_sum[r] / v_n[r]
    return stats


def stage1(
    model: MTPModel,
    head: ValueHead,
    cfg: Stage1Config,
    train: Iterator[Batch],
    heldout: list[Batch],
    log: Callable[[int, dict[str, float]], None],
    grad_clip: float,
    *,
    reduce: Callable[[Tensor], list[float]],
    sum_grads: Callable[[list[nn.Parameter]], None],
) -> int:
    """Train the value head with the trunk frozen; stop after cfg.steps or `patience` evals without improvement.

    `train` yields this process's share of each global batch; `reduce` sums a vector over processes and
    `sum_grads` sums gradients over them, so the squared errors divided by the global count make one MSE of the
    whole batch whatever the process count (and every process's value head takes the same update).
    Returns the number of Stage 1 steps taken. `log(step, metrics)` receives train and held-out metrics.
    """
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr)
    best, stale, step = float("inf"), 0, 0
    for step in range(1, cfg.steps + 1):
        batch = next(train)
        with torch.no_grad():
            hidden = model.trunk(
                batch.input_ids, batch.segment_ids
            ).hidden  # trunk frozen: no graph, no gradient
        m = value_mask(batch).float()
        (count,) = reduce(m.sum().detach().double().reshape(1).cpu())
        sq = (((head(hidden) - batch.rewards) ** 2) * m).sum()
        loss = sq / max(count, 1.0)
        loss.backward()
        sum_grads(list(head.parameters()))
        torch.nn.utils.clip_grad_norm_(head.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            stats = heldout_value_stats(model, head, heldout)
            (train_loss,) = reduce(loss.detach().double().reshape(1).cpu())
            log(step, {"train_value_loss": train_loss, **{f"heldout_{k}": v for k, v in stats.items()}})
            if stats["value_loss"] < best - 1e-6:
                best, stale = stats["value_loss"], 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    return step
