"""The weighted MTP loss (METHOD.md, "Loss") and the two ways of computing it with gradients.

    L = sum_k c_k * ( sum_t w_{t,k} * m_{t,k} * CE_{t,k} ) / max(1, sum_t m_{t,k})

Head k at position t is scored against x_{t+k+1}. `forward_backward` is the memory-efficient default: the trunk
runs once, its output is detached, and each head runs forward -> CE -> weights -> backward on its own, so only
one head's logits ever exist; then one backward through the trunk. `naive=True` keeps every head's logits and
graph alive and back-propagates once (the materialised path, for tests and the memory benchmark);
`weighted_mtp_loss` is the same formula on materialised (B, S, n, V) logits. All give the same loss and gradients.

`ce_chunk` (recipe `train.ce_chunk`) also splits each head's unembedding and CE over the sequence (`head_ce`): a
head's (B, S, V) logits never exist at once, only (B, chunk, V), in the backward too. Weights that do not read the
CE (`UpFrontWeights`: ntp, baseline-mtp, critic-wmtp, grpo-wmtp) are made before it, so each chunk's gradients come
out of the pass that computes its CE (`upfront_head_loss`), and so do weights that read only each entry's own
gradient score (`EntryWeights`: grad-wmtp, `entry_head_loss`); weights read from the CE (rho1-wmtp) make
chunked_ce.py recompute a chunk's logits when its gradient is needed (one extra unembedding matmul per head).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmtp_studio.errors import StudioError
from wmtp_studio.train.chunked_ce import LinearCE, linear_ce_loss, scored_linear_ce_loss
from wmtp_studio.train.model import MTPModel, TrunkOutput
from wmtp_studio.train.weights import rescale_mean_one, shift_to_head

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
    """Per-token cross-entropy in fp32 (fp64 logits stay fp64): (B, S, V), (B, S) -> (B, S)."""
    b, s, v = logits.shape
    wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(wide.reshape(b * s, v), targets.reshape(b * s), reduction="none").view(b, s)


def _ce_and_hits(model: MTPModel, h: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Unembedding, per-token CE and argmax hits of hidden states: (B, c, D), (B, c) -> (B, c) fp32, (B, c) bool."""
    logits = model.unembed(h)  # (B, c, V)
    return token_ce(logits, targets), logits.detach().argmax(-1) == targets


def head_ce(
    model: MTPModel,
    k: int,
    trunk: TrunkOutput,
    hidden: Tensor | None,
    targets: Tensor,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Head k's per-token CE (B, S) fp32 (with gradient) and whether its argmax is the target (B, S) bool.

    With `chunk` (tokens), the unembedding runs on `chunk` positions at a time through `LinearCE`, whose backward
    recomputes the chunk's logits, so neither the forward nor the backward holds more than (B, chunk, V) logits;
    the numbers are those of the whole-sequence path (the same per-token arithmetic).
    """
    h = model.head_hidden(k, trunk, hidden)  # (B, S, D)
    if not chunk or chunk >= h.shape[1]:
        return _ce_and_hits(model, h, targets)
    return model.with_unembedding(_chunked_ce, h, targets, chunk)


def _linear(out: nn.Module) -> nn.Linear:
    if not isinstance(out, nn.Linear):
        raise StudioError(
            f"train.ce_chunk needs a linear output embedding, this model has {type(out).__name__}"
        )
    return out


def _chunked_ce(out: nn.Module, h: Tensor, targets: Tensor, chunk: int) -> tuple[Tensor, Tensor]:
    """`LinearCE` over `chunk` positions at a time: (B, S, D), (B, S) -> CE (B, S) fp32, hits (B, S) bool."""
    out = _linear(out)
    parts = [
        LinearCE.apply(h[:, i : i + chunk], out.weight, out.bias, targets[:, i : i + chunk])
        for i in range(0, h.shape[1], chunk)
    ]
    return torch.cat([p[0] for p in parts], dim=1), torch.cat([p[1] for p in parts], dim=1)


def _weight(out: nn.Module) -> Tensor:
    """The unembedding's (V, D) weight, which `score_for` gets (grad-wmtp's hidden score reads it)."""
    w = getattr(out, "weight", None)
    if not isinstance(w, Tensor):
        raise StudioError(f"the output embedding {type(out).__name__} of this model has no weight matrix")
    return w


@torch.no_grad()
def _chunk_scores(
    out: nn.Module, h: Tensor, targets: Tensor, k: int, score_for: ScoreFn, chunk: int | None
) -> Tensor:
    """`score_for`'s (B, S) score of head k's entries from its logits, computed `chunk` positions at a time."""
    step = chunk or h.shape[1]
    return torch.cat(
        [
            score_for(k, out(h[:, i : i + step].detach()), targets[:, i : i + step], _weight(out))
            for i in range(0, h.shape[1], step)
        ],
        dim=1,
    )  # (B, S)


@torch.no_grad()
def head_scores(
    model: MTPModel,
    k: int,
    trunk: TrunkOutput,
    targets: Tensor,
    score_for: ScoreFn,
    chunk: int | None = None,
) -> Tensor:
    """Head k's (B, S) score alone, without gradient (grad-wmtp's first-step statistics); `chunk` as in `head_ce`."""
    h = model.head_hidden(k, trunk)  # (B, S, D)
    return model.with_unembedding(_chunk_scores, h, targets, k, score_for, chunk)


def upfront_head_loss(
    model: MTPModel,
    k: int,
    trunk: TrunkOutput,
    hidden: Tensor | None,
    targets: Tensor,
    coef: Tensor,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """sum_t coef_t CE_{t,k} (with gradient), head k's CE (B, S) and hits (B, S), for coefficients (B, S) known
    before the CE (`UpFrontWeights`). With `chunk`, `chunked_ce.linear_ce_loss` makes each chunk's gradients in
    the pass that computes its CE (no recompute); without, the arithmetic of `head_ce`."""
    h = model.head_hidden(k, trunk, hidden)  # (B, S, D)
    if not chunk or chunk >= h.shape[1]:
        ce, hits = _ce_and_hits(model, h, targets)
        return (coef * ce).sum(), ce.detach(), hits
    return model.with_unembedding(_upfront_chunked, h, targets, coef, chunk)


def _upfront_chunked(
    out: nn.Module, h: Tensor, targets: Tensor, coef: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    linear = _linear(out)
    return linear_ce_loss(h, linear.weight, linear.bias, targets, coef, chunk)


def entry_head_loss(
    model: MTPModel,
    k: int,
    trunk: TrunkOutput,
    hidden: Tensor | None,
    targets: Tensor,
    m: Tensor,
    weights: EntryWeights,
    chunk: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """sum_t w_t m_t CE_{t,k} (with gradient), head k's CE (B, S), hits (B, S) and weights w (B, S) for
    `EntryWeights`, `chunk` positions at a time in one pass (`chunked_ce.scored_linear_ce_loss`): each chunk's
    u from the score of the gradient the pass makes, then w = u / the divisor, which scales the term."""
    h = model.head_hidden(k, trunk, hidden)  # (B, S, D)
    mf = m.float()

    def coef_of(start: int, stop: int, score: Tensor) -> Tensor:
        return weights.entry(k, score, m[:, start:stop]) * mf[:, start:stop]  # (B, c)

    loss, ce, hits, score, u = model.with_unembedding(
        _scored_chunked, h, targets, coef_of, chunk, weights.score
    )
    divisor = weights.divisor(k, score, m, u).detach()  # 0-d
    w = rescale_mean_one(u, m, divisor)
    return loss / divisor, ce, hits, w


def _scored_chunked(
    out: nn.Module,
    h: Tensor,
    targets: Tensor,
    coef_of: Callable[[int, int, Tensor], Tensor],
    chunk: int,
    score: Literal["logit", "hidden"],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    linear = _linear(out)
    return scored_linear_ce_loss(h, linear.weight, linear.bias, targets, coef_of, chunk, score)


def scored_head_ce(
    model: MTPModel,
    k: int,
    trunk: TrunkOutput,
    hidden: Tensor | None,
    targets: Tensor,
    score_for: ScoreFn,
    chunk: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """`head_ce` plus `score_for`'s (B, S) score of every entry, taken from the logits the CE computes. With
    `chunk`, the logits of each chunk are computed once more without gradient for the score (`LinearCE` keeps
    none); training steps take `entry_head_loss` instead, which makes the score in the pass."""
    h = model.head_hidden(k, trunk, hidden)  # (B, S, D)
    if chunk and chunk < h.shape[1]:
        return model.with_unembedding(_chunked_scored_ce, h, targets, k, score_for, chunk)
    logits, score = model.with_unembedding(_logits_and_score, h, targets, k, score_for)
    return token_ce(logits, targets), logits.detach().argmax(-1) == targets, score


def _logits_and_score(
    out: nn.Module, h: Tensor, targets: Tensor, k: int, score_for: ScoreFn
) -> tuple[Tensor, Tensor]:
    logits = out(h)  # (B, S, V)
    with torch.no_grad():
        return logits, score_for(k, logits.detach(), targets, _weight(out))


def _chunked_scored_ce(
    out: nn.Module, h: Tensor, targets: Tensor, k: int, score_for: ScoreFn, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    ce, hits = _chunked_ce(out, h, targets, chunk)
    return ce, hits, _chunk_scores(out, h, targets, k, score_for, chunk)


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


@dataclass(frozen=True)
class UpFrontWeights:
    """A `WeightFn` whose weights do not read the head's CE (ntp, baseline-mtp, critic-wmtp, grpo-wmtp, and rho1
    select chosen over the whole step beforehand): made from (k, m_{t,k}) alone. `forward_backward` makes them
    before the head's logits, so that with `ce_chunk` each chunk's CE and gradients come out of one pass
    (`upfront_head_loss`) instead of a backward that recomputes the logits, which weights read from the CE (rho1's
    otherwise) need. `seen` gets the head's CE afterwards, for diagnostics that read it (not the weights)."""

    before_ce: Callable[[int, Tensor], Tensor]  # (k, m_{t,k} (B, S) bool) -> w_{t,k} (B, S)
    seen: Callable[[int, Tensor, Tensor], None] | None = None  # (k, CE (B, S) detached, m_{t,k})

    def __call__(self, k: int, ce: Tensor, m: Tensor) -> Tensor:
        w = self.before_ce(k, m)
        if self.seen is not None:
            self.seen(k, ce, m)
        return w


@dataclass(frozen=True)
class EntryWeights:
    """A `WeightFn` of scores (grad-wmtp's): the weight of an entry is u(its own score), divided by one number per
    head and micro-batch known once every u is (its mean-one rescale). `forward_backward` hands it the score
    (`score_for`) in place of the CE. With `ce_chunk`, each chunk's u is made from the score of the gradient the
    chunked pass makes anyway, so its gradients come out of that pass (`entry_head_loss`) and the divisor scales
    the head's term afterwards: no recompute and no extra pass over the logits for the score."""

    score: Literal["logit", "hidden"]  # what the entries read (`weights.grad_scores`)
    full: WeightFn  # (k, score (B, S), m) -> w (B, S): the whole head's weights at once (unchunked)
    entry: Callable[
        [int, Tensor, Tensor], Tensor
    ]  # (k, score (B, c), m (B, c)) -> u (B, c), 0 where m is false
    divisor: Callable[
        [int, Tensor, Tensor, Tensor], Tensor
    ]  # (k, score (B, S), m, u (B, S)) -> 0-d: w = u / it

    def __call__(self, k: int, score: Tensor, m: Tensor) -> Tensor:
        return self.full(k, score, m)


# extra_loss(trunk hidden (B, S, D)) -> scalar added to the loss (critic value loss)
ExtraLossFn = Callable[[Tensor], Tensor]
# score_for(k, logits (B, c, V) detached, targets (B, c), unembedding weight (V, D)) -> (B, c): what weights_for
# gets instead of the CE
ScoreFn = Callable[[int, Tensor, Tensor, Tensor], Tensor]


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
def _head_stats(hits: Tensor, m: Tensor, ce: Tensor, w: Tensor, detail: bool) -> Tensor:
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
            (hits.float() * mf).sum(),
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
    ce_chunk: int | None = None,
) -> HeadStats:
    """Loss of one micro-batch and its gradients (accumulated into .grad), head by head.

    trunk: `model.trunk(input_ids)`, computed by the caller (the critic reads its hidden state for the values).
    input_ids, token_mask, segment_ids: (B, S). Each head's term is c_k * sum_t w m CE / denominators[k]; the
    caller passes the step's per-head counts over every micro-batch and process as denominators, so that the
    terms (summed over micro-batches, gradients summed over processes) are the per-head mean of the whole step.
    `extra_loss` receives the detached trunk output (requires grad) and its result is added to the loss.
    `score_for` scores each head's entries from its logits while they exist (grad-wmtp, `scored_head_ce`);
    weights_for then gets that score in place of the CE. `UpFrontWeights` are made before the head's CE;
    `EntryWeights` with `ce_chunk`, chunk by chunk inside it (`entry_head_loss`).
    `detail` also records histograms, entropy and the weights themselves (on logging steps only). `ce_chunk`:
    see `head_ce`. A trunk without gradient (frozen, `train.freeze: trunk`) gets no backward of its own.
    """
    rows, hists, kept = [], [], []
    loss = torch.zeros((), device=input_ids.device)
    extra_value = torch.zeros((), device=input_ids.device)
    h = trunk.hidden.detach().requires_grad_(True) if not naive else trunk.hidden
    total: Tensor | None = None
    upfront = isinstance(weights_for, UpFrontWeights) and score_for is None
    upfront = upfront and backward and torch.is_grad_enabled()
    entrywise = (
        isinstance(weights_for, EntryWeights) and bool(ce_chunk) and backward and torch.is_grad_enabled()
    )
    way: Literal["upfront", "entrywise", "after"] = (
        "upfront" if upfront else "entrywise" if entrywise else "after"
    )
    for k in range(model.n_heads):
        targets = head_targets(input_ids, k)
        m = head_mask(token_mask, segment_ids, k)
        weighted, ce, hits, w = _weighted_head(
            model, k, trunk, h, targets, m, weights_for, score_for, ce_chunk, way
        )
        term = head_coefs[k] * weighted / max(1.0, denominators[k])
        rows.append(_head_stats(hits, m, ce.detach(), w, detail))
        if detail:
            hists.append(weight_histogram(w, m))
            kept.append(w)
        loss = loss + term.detach()
        if naive:
            total = term if total is None else total + term
        elif backward:
            term.backward()
        del ce
    if extra_loss is not None:
        extra = extra_loss(h)
        extra_value = extra.detach()
        if naive:
            total = extra if total is None else total + extra
        elif backward:
            extra.backward()
    if naive and backward and total is not None:
        total.backward()
    elif backward and h.grad is not None and trunk.hidden.requires_grad:
        trunk.hidden.backward(h.grad)
    hist = torch.stack(hists) if hists else None
    return HeadStats(loss, extra_value, torch.stack(rows), hist, kept)


def _weighted_head(
    model: MTPModel,
    k: int,
    trunk: TrunkOutput,
    h: Tensor,
    targets: Tensor,
    m: Tensor,
    weights_for: WeightFn,
    score_for: ScoreFn | None,
    ce_chunk: int | None,
    way: Literal["upfront", "entrywise", "after"],
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Head k's sum_t w m CE (with gradient), its CE and hits (B, S) and its weights w (B, S), made `way`:
    "upfront" (weights first, so that a chunked CE makes its gradients as it goes), "entrywise" (each chunk's
    weights from its own scores, in the pass that makes its gradients) or "after" (from the whole head's CE or
    score)."""
    if way == "upfront":
        assert isinstance(weights_for, UpFrontWeights)
        w = weights_for.before_ce(k, m).detach()
        weighted, ce, hits = upfront_head_loss(model, k, trunk, h, targets, w * m, ce_chunk)
        if weights_for.seen is not None:
            weights_for.seen(k, ce, m)
        return weighted, ce, hits, w
    if way == "entrywise":
        assert isinstance(weights_for, EntryWeights) and ce_chunk
        return entry_head_loss(model, k, trunk, h, targets, m, weights_for, ce_chunk)
    if score_for is None:
        ce, hits = head_ce(model, k, trunk, h, targets, ce_chunk)  # (B, S): one head's logits at a time
        signal = ce.detach()
    else:
        ce, hits, signal = scored_head_ce(model, k, trunk, h, targets, score_for, ce_chunk)
    w = weights_for(k, signal, m).detach()
    return (w * m * ce).sum(), ce, hits, w
