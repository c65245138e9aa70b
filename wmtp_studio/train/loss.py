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


# weights_for(k, ce_k detached (B, S) or score_for's score, m_{t,k} (B, S)) -> w_{t,k} (B, S)
WeightFn = Callable[[int, Tensor, Tensor], Tensor]
# extra_loss(trunk hidden (B, S, D)) -> scalar added to the loss (critic value loss)
ExtraLossFn = Callable[[Tensor], Tensor]
# score_for(k, logits (B, S, V) detached, targets (B, S)) -> (B, S): what weights_for gets instead of the CE
ScoreFn = Callable[[int, Tensor, Tensor], Tensor]


# Per-head statistics kept as one (n, len(STAT_FIELDS)) device tensor and read once, when a step is logged.
STAT_FIELDS = ("ce_sum", "correct", "count", "w_sum", "w_sq", "w_min", "w_max", "w_entropy")


@dataclass
class HeadStats:
    """Detached per-head statistics of one or more micro-batches, on the device (no host sync until read)."""

    loss: Tensor  # scalar: sum over heads of the terms back-propagated
    extra: Tensor  # scalar: the extra (value) loss
    stats: Tensor  # (n, len(STAT_FIELDS)); entropy only filled with detail
    hist: Tensor | None = None  # (n, len(HIST_EDGES)) weight histogram counts, with detail
    weights: list[Tensor] = field(default_factory=list)  # (B, S) per head, with detail (top-token view)

    def merge(self, other: HeadStats) -> HeadStats:
        """Sums, mins and maxes over micro-batches; detail (histogram, weights) is kept from the first."""
        col = {name: i for i, name in enumerate(STAT_FIELDS)}
        merged = self.stats + other.stats
        merged[:, col["w_min"]] = torch.minimum(self.stats[:, col["w_min"]], other.stats[:, col["w_min"]])
        merged[:, col["w_max"]] = torch.maximum(self.stats[:, col["w_max"]], other.stats[:, col["w_max"]])
        merged[:, col["w_entropy"]] = self.stats[:, col["w_entropy"]]
        return HeadStats(self.loss + other.loss, self.extra + other.extra, merged, self.hist, self.weights)


@torch.no_grad()
def _head_stats(logits: Tensor, targets: Tensor, m: Tensor, ce: Tensor, w: Tensor, detail: bool) -> Tensor:
    """One row of STAT_FIELDS for one head: (len(STAT_FIELDS),)."""
    mf = m.float()
    wf = w.float() * mf
    big = torch.finfo(torch.float32).max
    count = mf.sum()
    entropy = torch.zeros((), device=w.device)
    if detail:  # normalised entropy of the weight distribution over valid entries (1 = uniform)
        p = wf / wf.sum().clamp(min=1e-30)
        entropy = -(p * p.clamp(min=1e-30).log()).sum() / count.clamp(min=2).log()
    return torch.stack(
        [
            (ce * mf).sum(),
            ((logits.argmax(-1) == targets).float() * mf).sum(),
            count,
            wf.sum(),
            (wf * wf).sum(),
            torch.where(m, w.float(), torch.full_like(wf, big)).min(),
            torch.where(m, w.float(), torch.full_like(wf, -big)).max(),
            entropy,
        ]
    )


@torch.no_grad()
def weight_histogram(w: Tensor, m: Tensor) -> Tensor:
    """Counts of valid weights in the fixed bins [e_i, e_{i+1}) of HIST_EDGES, the last bin [5, inf): (21,)."""
    edges = torch.tensor(HIST_EDGES[1:], device=w.device, dtype=torch.float32)
    idx = torch.bucketize(w.float().flatten(), edges, right=True)
    counts = torch.zeros(len(HIST_EDGES), device=w.device)
    return counts.scatter_add_(0, idx, m.float().flatten())


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
    score_for: ScoreFn | None = None,
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
    `score_for` scores each head's entries from its logits while they exist (grad-wmtp); weights_for then gets
    that score in place of the CE.
    `detail` also records histograms, entropy and the weights themselves (on logging steps only).
    """
    rows, hists, kept = [], [], []
    loss = torch.zeros((), device=input_ids.device)
    extra_value = torch.zeros((), device=input_ids.device)
    h = trunk.hidden.detach().requires_grad_(True) if not naive else trunk.hidden
    total: Tensor | None = None
    for k in range(model.n_heads):
        logits = model.head_logits(k, trunk, h)  # (B, S, V): one head at a time
        targets = head_targets(input_ids, k)
        m = head_mask(token_mask, segment_ids, k)
        ce = token_ce(logits, targets)
        signal = ce.detach() if score_for is None else score_for(k, logits.detach(), targets)
        w = weights_for(k, signal, m).detach()
        term = head_coefs[k] * (w * m * ce).sum() / max(1.0, denominators[k])
        rows.append(_head_stats(logits, targets, m, ce.detach(), w, detail))
        if detail:
            hists.append(weight_histogram(w, m))
            kept.append(w)
        loss = loss + term.detach()
        if naive:
            total = term if total is None else total + term
        elif backward:
            term.backward()
        del logits, ce
    if extra_loss is not None:
        extra = extra_loss(h)
        extra_value = extra.detach()
        if naive:
            total = extra if total is None else total + extra
        elif backward:
            extra.backward()
    if naive and backward and total is not None:
        total.backward()
    elif backward and h.grad is not None:
        trunk.hidden.backward(h.grad)
    hist = torch.stack(hists) if hists else None
    return HeadStats(loss, extra_value, torch.stack(rows), hist, kept)
