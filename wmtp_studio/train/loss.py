"""The weighted MTP loss (METHOD.md, "Loss") and the two ways of computing it with gradients.

    L = sum_k c_k * ( sum_t w_{t,k} * m_{t,k} * CE_{t,k} ) / max(1, sum_t m_{t,k})

Head k at position t is scored against x_{t+k+1}. `forward_backward` is the memory-efficient default: the trunk
runs once, its output is detached, and each head runs forward -> CE -> weights -> backward on its own, so only
one head's logits ever exist; then one backward through the trunk. `naive=True` keeps every head's logits and
graph alive and back-propagates once (the materialised path, for tests and the memory benchmark);
`weighted_mtp_loss` is the same formula on materialised (B, S, n, V) logits. All give the same loss and gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from wmtp_studio.train.model import MTPModel, TrunkOutput
from wmtp_studio.train.weights import shift_to_head

# Weight histogram bin edges, fixed so that histograms compare across steps and runs; last bin is [5, inf).
HIST_EDGES: tuple[float, ...] = tuple(round(0.25 * i, 2) for i in range(21))


def head_targets(input_ids: Tensor, k: int) -> Tensor:
    """Targets of head k: out[:, t] = x_{t+k+1}; 0 (to be masked) beyond the end. (B, S) -> (B, S)."""
    return shift_to_head(input_ids, k, fill=0)


def head_mask(token_mask: Tensor, segment_ids: Tensor | None, k: int) -> Tensor:
    """m_{t,k}: x_{t+k+1} exists, is a trained token and lies in the same packed example as x_t.

    token_mask: (B, S) bool, x_j is trained (completion token, or any non-pad token with loss_on: all).
    segment_ids: (B, S) long, example index inside a packed row (None: one example per row). Returns (B, S) bool.
    """
    m = shift_to_head(token_mask, k, fill=False)
    if segment_ids is not None:
        m &= shift_to_head(segment_ids, k, fill=-1) == segment_ids
    return m


def token_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-token cross-entropy in fp32: (B, S, V), (B, S) -> (B, S)."""
    b, s, v = logits.shape
    return F.cross_entropy(logits.float().reshape(b * s, v), targets.reshape(b * s), reduction="none").view(
        b, s
    )


def weighted_mtp_loss(
    logits: Tensor,
    input_ids: Tensor,
    mask: Tensor,
    weights: Tensor | None = None,
    head_coefs: Sequence[float] | None = None,
) -> Tensor:
    """L = sum_k c_k * sum_t w_{t,k} m_{t,k} CE_{t,k} / max(1, sum_t m_{t,k}) on materialised logits.

    logits: (B, S, n, V), head k at position t predicting x_{t+k+1}.
    input_ids: (B, S) token ids x (targets are taken from it with the head's shift).
    mask: (B, S, n) bool m_{t,k}; entries whose target lies beyond the sequence are ignored.
    weights: (B, S, n) w_{t,k} >= 0, detached (None: all 1).
    head_coefs: n coefficients c_k (None: all 1). Returns a scalar.
    """
    n = logits.shape[2]
    coefs = list(head_coefs) if head_coefs is not None else [1.0] * n
    total = logits.new_zeros((), dtype=torch.float32)
    for k in range(n):
        m = mask[:, :, k].bool() & head_mask(torch.ones_like(input_ids, dtype=torch.bool), None, k)
        ce = token_ce(logits[:, :, k], head_targets(input_ids, k))
        w = torch.ones_like(ce) if weights is None else weights[:, :, k].detach().float()
        total = total + coefs[k] * (w * m * ce).sum() / m.sum().clamp(min=1)
    return total


# weights_for(k, ce_k detached (B, S), m_{t,k} (B, S)) -> w_{t,k} (B, S)
WeightFn = Callable[[int, Tensor, Tensor], Tensor]
# extra_loss(trunk hidden (B, S, D)) -> scalar added to the loss (critic value loss)
ExtraLossFn = Callable[[Tensor], Tensor]


@dataclass
class HeadStats:
    """Detached per-head sums of one micro-batch, for diagnostics (reduced by the caller)."""

    loss: float = 0.0  # sum over heads of the (scaled) terms actually back-propagated
    ce_sum: list[float] = field(default_factory=list)
    correct: list[float] = field(default_factory=list)
    count: list[float] = field(default_factory=list)
    w_sum: list[float] = field(default_factory=list)
    w_sq: list[float] = field(default_factory=list)
    w_min: list[float] = field(default_factory=list)
    w_max: list[float] = field(default_factory=list)
    w_entropy: list[float] = field(default_factory=list)
    hist: list[list[float]] = field(default_factory=list)
    weights: list[Tensor] = field(default_factory=list)  # (B, S) per head, for the top-token view
    extra: float = 0.0


def _record(
    stats: HeadStats, logits: Tensor, targets: Tensor, m: Tensor, ce: Tensor, w: Tensor, detail: bool
) -> None:
    with torch.no_grad():
        mf = m.float()
        stats.ce_sum.append(float((ce * mf).sum()))
        stats.correct.append(float(((logits.argmax(-1) == targets).float() * mf).sum()))
        stats.count.append(float(mf.sum()))
        wv = w[m].float()
        has = wv.numel() > 0
        stats.w_sum.append(float(wv.sum()))
        stats.w_sq.append(float((wv * wv).sum()))
        stats.w_min.append(float(wv.min()) if has else 0.0)
        stats.w_max.append(float(wv.max()) if has else 0.0)
        if not detail:
            return
        p = wv / wv.sum() if has and wv.sum() > 0 else wv
        ent = float(-(p * torch.log(p.clamp_min(1e-30))).sum() / torch.log(torch.tensor(max(2, wv.numel()))))
        stats.w_entropy.append(ent if has else 0.0)
        edges = torch.tensor((*HIST_EDGES, float("inf")), device=wv.device)
        stats.hist.append(torch.histogram(wv.cpu(), bins=edges.cpu())[0].tolist() if has else [0.0] * 21)
        stats.weights.append(w.detach())


def forward_backward(
    model: MTPModel,
    trunk: TrunkOutput,
    input_ids: Tensor,
    token_mask: Tensor,
    segment_ids: Tensor | None,
    weights_for: WeightFn,
    head_coefs: Sequence[float],
    denominators: Sequence[float],
    *,
    extra_loss: ExtraLossFn | None = None,
    naive: bool = False,
    backward: bool = True,
    detail: bool = False,
) -> HeadStats:
    """Loss of one micro-batch and its gradients (accumulated into .grad), head by head.

    trunk: `model.trunk(input_ids)`, computed by the caller (the critic reads its hidden state for the values).
    input_ids, token_mask, segment_ids: (B, S). Each head's term is c_k * sum_t w m CE / denominators[k]; the
    caller passes the step's per-head counts over every micro-batch and process as denominators, so that the
    terms (summed over micro-batches, gradients summed over processes) are the per-head mean of the whole step.
    `extra_loss` receives the detached trunk output (requires grad) and its result is added to the loss.
    `detail` also records histograms, entropy and the weights themselves (on logging steps only).
    """
    stats = HeadStats()
    h = trunk.hidden.detach().requires_grad_(True) if not naive else trunk.hidden
    total: Tensor | None = None
    for k in range(model.n_heads):
        logits = model.head_logits(k, trunk, h)  # (B, S, V): one head at a time
        targets = head_targets(input_ids, k)
        m = head_mask(token_mask, segment_ids, k)
        ce = token_ce(logits, targets)
        w = weights_for(k, ce.detach(), m).detach()
        term = head_coefs[k] * (w * m * ce).sum() / max(1.0, denominators[k])
        _record(stats, logits, targets, m, ce.detach(), w, detail)
        stats.loss += float(term.detach())
        if naive:
            total = term if total is None else total + term
        elif backward:
            term.backward()
        del logits, ce
    if extra_loss is not None:
        extra = extra_loss(h)
        stats.extra = float(extra.detach())
        if naive:
            total = extra if total is None else total + extra
        elif backward:
            extra.backward()
    if naive and backward and total is not None:
        total.backward()
    elif backward and h.grad is not None:
        trunk.hidden.backward(h.grad)
    return stats
