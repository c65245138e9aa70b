"""critic-wmtp Stage 1 (value pre-training, trunk frozen) and the value loss shared with Stage 2 (METHOD.md).

The value head reads trunk hidden states h_t; its target at every state s_t that precedes a completion token
(s_0 = end of prompt ... s_{T-1}) is the example's verifiable reward R in {0, 1}. The MSE optimum is
P(success | x_{<=t}).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from wmtp_studio.recipe import Stage1Config
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


def explained_variance(values: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
    """1 - Var(R - V) / Var(R) over masked entries, as a 0-d tensor; NaN when R is constant (undefined)."""
    m = mask.float()
    n = m.sum().clamp(min=1)
    r, v = rewards.float(), values.float()
    var_r = ((r - (r * m).sum() / n) ** 2 * m).sum() / n
    res = r - v
    var_res = ((res - (res * m).sum() / n) ** 2 * m).sum() / n
    return torch.where(var_r > 0, 1 - var_res / var_r.clamp(min=1e-12), torch.full_like(var_r, math.nan))


@torch.no_grad()
def heldout_value_stats(model: MTPModel, head: ValueHead, batches: list[Batch]) -> dict[str, float]:
    """Value loss and explained variance over held-out batches."""
    vals, rews, masks, loss_sum, count = [], [], [], 0.0, 0.0
    for b in batches:
        v = head(model.trunk(b.input_ids, b.segment_ids).hidden)
        loss, n = value_mse(v, b)
        loss_sum, count = loss_sum + float(loss * n), count + float(n)
        m = value_mask(b)
        vals.append(v[m])
        rews.append(b.rewards[m])
        masks.append(torch.ones_like(v[m], dtype=torch.bool))
    stats = {"value_loss": loss_sum / max(count, 1.0)}
    ev = float(explained_variance(torch.cat(vals), torch.cat(rews), torch.cat(masks))) if vals else math.nan
    if math.isfinite(ev):
        stats["explained_variance"] = ev
    return stats


def stage1(
    model: MTPModel,
    head: ValueHead,
    cfg: Stage1Config,
    train: Iterator[Batch],
    heldout: list[Batch],
    log: Callable[[int, dict[str, float]], None],
    grad_clip: float,
) -> int:
    """Train the value head with the trunk frozen; stop after cfg.steps or `patience` evals without improvement.

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
        loss, _ = value_mse(head(hidden), batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % cfg.eval_every == 0 or step == cfg.steps:
            stats = heldout_value_stats(model, head, heldout)
            log(
                step,
                {"train_value_loss": float(loss.detach()), **{f"heldout_{k}": v for k, v in stats.items()}},
            )
            if stats["value_loss"] < best - 1e-6:
                best, stale = stats["value_loss"], 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
    return step
