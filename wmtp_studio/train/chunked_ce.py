"""Cross-entropy of a linear unembedding over chunks of positions whose logits are never kept for the backward.

Two ways (the second in two forms), all exact (the per-token arithmetic of the whole-sequence path; only the
order of sums differs):

- `LinearCE.apply(h, weight, bias, targets)` returns the per-token CE of logits = h W^T + b and whether their
  argmax is the target, keeping only h for the backward, which recomputes the logits once and turns them into the
  gradient in place: dCE/dlogits = softmax(logits) - onehot(target) (the textbook gradient of log-sum-exp minus
  the target logit). Any use of the CE is allowed (weights read from the whole batch's CE: rho1-wmtp), at the
  price of one more unembedding matmul: 4 in all (forward 1, backward 3) against autograd's 3.
- `linear_ce_loss(h, weight, bias, targets, coef, chunk)` returns sum_t coef_t CE_t when the per-token
  coefficients are known before the CE (weights that do not read it: ntp, baseline-mtp, critic-wmtp, grpo-wmtp,
  rho1 select chosen over the step beforehand). Then dL/dlogits_t = coef_t (softmax_t - onehot_t) is known
  while a chunk's logits exist, so one pass over each chunk makes its CE, grad_h and its share of grad_W (3
  matmuls, as autograd's own path), and the backward only scales them by the incoming gradient: no recompute.
  grad_W (V, D) and grad_h (B, S, D) are held from the forward to the backward, which in the per-head loss
  follows at once.
- `scored_linear_ce_loss(h, weight, bias, targets, coef_of, chunk, score)` is that pass when each token's
  coefficient reads only that token's own gradient score (grad-wmtp: the norm of softmax - onehot, `logit`, or of
  its product with W, `hidden`, which is grad_h's matmul before scaling): a chunk's score is made from the
  gradient the pass computes anyway, `coef_of` turns it into the chunk's coefficients, and they scale the chunk's
  gradients. Still 3 matmuls, the hidden score included.

Either way a chunk's (B, c, V) logits exist twice at most (the logits and their softmax) and never for the whole
sequence. Autocast (bf16 training): the recompute re-enters the forward's autocast state, and the fused pass runs
under it, so the logits and the two gradient matmuls run in the dtype autograd's own linear backward would use.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def _wide(x: Tensor) -> Tensor:
    """At least fp32 (fp64 stays fp64), like `loss.token_ce`."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _minus_onehot(grad: Tensor, targets: Tensor) -> Tensor:
    """softmax (B, c, V) -> softmax - onehot(targets), in place."""
    return grad.scatter_add_(-1, targets[..., None], grad.new_full((*targets.shape, 1), -1.0))


class LinearCE(torch.autograd.Function):
    """(h (B, c, D), weight (V, D), bias (V,) or None, targets (B, c)) -> (CE (B, c) fp32, hits (B, c) bool)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Any:
        device = h.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), device)
        logits = F.linear(h, weight, bias)  # (B, c, V)
        hits = logits.argmax(-1) == targets
        ce = -_wide(logits).log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)  # F.cross_entropy's
        ctx.save_for_backward(h, weight, bias, targets)
        ctx.mark_non_differentiable(hits)
        return ce, hits

    @staticmethod
    def backward(ctx: Any, grad_ce: Tensor, _grad_hits: Tensor | None) -> Any:
        h, weight, bias, targets = ctx.saved_tensors
        enabled, dtype, device = ctx.autocast
        with torch.autocast(device, dtype, enabled=enabled):
            logits = F.linear(h, weight, bias)  # (B, c, V), the dtype the forward had before widening
            grad = _minus_onehot(_wide(logits).softmax(-1), targets)  # (B, c, V) dCE/dlogits
            del logits
            g = grad.to(h.dtype) if not enabled else grad
            s = grad_ce[
                ..., None
            ]  # (B, c, 1): scales the (B, c, D) side of each product, not the (B, c, V) one
            grad_h = (g @ weight) * s  # (B, c, D)
            grad_w = g.flatten(0, 1).transpose(0, 1) @ (h * s).to(h.dtype).flatten(0, 1)  # (V, D)
        grad_b = None
        if bias is not None and ctx.needs_input_grad[2]:
            grad_b = (s.flatten().to(grad.dtype) @ grad.flatten(0, 1)).to(bias.dtype)  # (V,)
        return grad_h.to(h.dtype), grad_w.to(weight.dtype), grad_b, None


# coef_of(start, stop, score (B, c) fp32) -> the coefficients (B, c) of positions start:stop, detached
ChunkCoef = Callable[[int, int, Tensor], Tensor]


class _FusedLinearCE(torch.autograd.Function):
    """(h (B, S, D), weight, bias, targets (B, S), coef (B, S) or ChunkCoef, chunk, score kind or None)
    -> (sum_t coef_t CE_t, CE (B, S), hits (B, S), score (B, S) or empty, coef (B, S))."""

    @staticmethod
    def forward(
        ctx: Any,
        h: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        coef: Tensor | ChunkCoef,
        chunk: int,
        score: str | None,
    ) -> Any:
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        autocast = torch.is_autocast_enabled(h.device.type)
        grad_h = torch.empty_like(h) if need_h else None  # (B, S, D)
        grad_w = torch.zeros_like(weight) if need_w else None  # (V, D)
        grad_b = torch.zeros_like(bias) if bias is not None and need_b else None  # (V,)
        ces, hits, scores, coefs = [], [], [], []
        for i in range(0, h.shape[1], chunk):
            part, t = h[:, i : i + chunk], targets[:, i : i + chunk]  # (B, c, D), (B, c)
            logits = F.linear(part, weight, bias)  # (B, c, V)
            hits.append(logits.argmax(-1) == t)
            logp = _wide(logits).log_softmax(-1)
            del logits
            ces.append(-logp.gather(-1, t[..., None]).squeeze(-1))  # (B, c), F.cross_entropy's arithmetic
            # dL/dlogits = coef (softmax - onehot): softmax from the log-softmax in place; coef scales the (B, c, D)
            # side of each product instead of the (B, c, V) one
            grad = _minus_onehot(logp.exp_(), t)  # (B, c, V)
            g = grad.to(h.dtype) if not autocast else grad  # autocast: the matmuls cast as autograd's would
            gw = g @ weight if grad_h is not None or score == "hidden" else None  # (B, c, D), unscaled grad_h
            # a callable coef: the chunk's coefficients from its own score (`weights.grad_scores`' arithmetic)
            if callable(coef):
                norm_of = gw if score == "hidden" else grad
                assert norm_of is not None
                scores.append(torch.linalg.vector_norm(norm_of.float(), dim=-1))  # (B, c)
                coefs.append(coef(i, i + part.shape[1], scores[-1]).detach().float())
                s = coefs[-1][..., None].to(h.dtype)  # (B, c, 1)
            else:
                s = coef[:, i : i + chunk, None]  # (B, c, 1)
            if grad_h is not None:
                assert gw is not None
                grad_h[:, i : i + chunk] = gw * s
            del gw
            if grad_w is not None:
                scaled = (part * s).to(part.dtype).flatten(0, 1)  # (B c, D)
                if autocast or g.dtype != grad_w.dtype:
                    grad_w += g.flatten(0, 1).transpose(0, 1) @ scaled  # (V, D), then widened
                else:  # no (V, D) temporary (out=, not addmm_: torch's FLOP counter sees it)
                    torch.addmm(grad_w, g.flatten(0, 1).transpose(0, 1), scaled, out=grad_w)
            if grad_b is not None:
                grad_b += s.flatten().to(grad.dtype) @ grad.flatten(0, 1)
            del grad, g
        ce = torch.cat(ces, dim=1)  # (B, S)
        ctx.grads = (grad_h, grad_w, grad_b)
        hit = torch.cat(hits, dim=1)
        if callable(coef):
            sc, c = torch.cat(scores, dim=1), torch.cat(coefs, dim=1)  # (B, S) each
            loss = (c * ce).sum()
        else:
            sc, c, loss = ce.new_zeros(0), ce.new_zeros(0), (coef * ce).sum()
        ctx.mark_non_differentiable(ce, hit, sc, c)
        return loss, ce, hit, sc, c

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_loss: Tensor, *_unused: Tensor | None) -> Any:
        if ctx.grads is None:
            raise RuntimeError("linear_ce_loss keeps its gradients for one backward only")
        grads, ctx.grads = ctx.grads, None  # scaled in place: the forward's buffers are not needed again
        out = [g.mul_(grad_loss) if g is not None else None for g in grads]
        return *out, None, None, None, None


def linear_ce_loss(
    h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, coef: Tensor, chunk: int
) -> tuple[Tensor, Tensor, Tensor]:
    """sum_t coef_t CE_t of logits = h W^T + b over (B, S) positions, `chunk` positions at a time, with gradient;
    also the CE (B, S) (fp32 at least, no gradient) and whether each argmax is the target (B, S) bool.

    coef (B, S) holds each token's coefficient, detached (its weight, mask and head coefficient): it must not
    depend on this CE. The gradients are made in the forward (see the module docstring)."""
    loss, ce, hits, _score, _coef = _FusedLinearCE.apply(h, weight, bias, targets, coef.detach(), chunk, None)
    return loss, ce, hits


def scored_linear_ce_loss(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    coef_of: ChunkCoef,
    chunk: int,
    score: Literal["logit", "hidden"],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """`linear_ce_loss` whose coefficients come from each token's gradient score: `score` "logit" is
    ||softmax - onehot||_2, "hidden" ||(softmax - onehot) W||_2 (`weights.grad_scores`); `coef_of(start, stop,
    score (B, c))` gives the coefficients of positions start:stop from their scores, as each chunk is computed.
    Returns (sum_t coef_t CE_t with gradient, CE (B, S), hits (B, S), score (B, S) fp32, coef (B, S) fp32)."""
    out: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] = _FusedLinearCE.apply(
        h, weight, bias, targets, coef_of, chunk, score
    )
    return out
