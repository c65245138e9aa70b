"""Cross-entropy of a linear unembedding over a chunk of positions whose logits are never kept for the backward.

`LinearCE.apply(h, weight, bias, targets)` returns the per-token CE of logits = h W^T + b and whether their argmax
is the target, keeping only h and the log-sum-exp (B, c) for the backward, which recomputes the logits once and
turns them into the gradient in place: dCE/dlogits = softmax(logits) - onehot(target) (the textbook gradient of
log-sum-exp minus the target logit). So a chunk's (B, c, V) logits exist twice at most (the logits and their
gradient), in the forward and in the backward, and never for the whole sequence; compared with autograd's own
path the cost is one more matmul and no saved (B, c, V) log-softmax.

Autocast (bf16 training): the state seen by the forward is re-entered in the backward, so the recomputed logits
and the two gradient matmuls run in the dtype autograd's own linear backward would use.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def _wide(x: Tensor) -> Tensor:
    """At least fp32 (fp64 stays fp64), like `loss.token_ce`."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class LinearCE(torch.autograd.Function):
    """(h (B, c, D), weight (V, D), bias (V,) or None, targets (B, c)) -> (CE (B, c) fp32, hits (B, c) bool)."""

    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor) -> Any:
        device = h.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device), device)
        logits = _wide(F.linear(h, weight, bias))  # (B, c, V)
        lse = logits.logsumexp(-1)  # (B, c)
        ce = lse - logits.gather(-1, targets[..., None]).squeeze(-1)
        hits = logits.argmax(-1) == targets
        ctx.save_for_backward(h, weight, bias, targets, lse)
        ctx.mark_non_differentiable(hits)
        return ce, hits

    @staticmethod
    def backward(ctx: Any, grad_ce: Tensor, _grad_hits: Tensor | None) -> Any:
        h, weight, bias, targets, lse = ctx.saved_tensors
        enabled, dtype, device = ctx.autocast
        with torch.autocast(device, dtype, enabled=enabled):
            logits = F.linear(h, weight, bias)  # (B, c, V), the dtype the forward had before widening
            grad = (
                _wide(logits).sub_(lse[..., None]).exp_()
            )  # softmax; a fresh tensor when logits were narrower
            del logits
            grad.scatter_add_(-1, targets[..., None], grad.new_full((*targets.shape, 1), -1.0))  # - onehot
            grad.mul_(grad_ce[..., None].to(grad.dtype))  # (B, c, V) dCE/dlogits
            g = grad.to(h.dtype) if not enabled else grad
            grad_h = g @ weight  # (B, c, D)
            grad_w = g.flatten(0, 1).transpose(0, 1) @ h.flatten(0, 1)  # (V, D)
        grad_b = grad.sum((0, 1)).to(bias.dtype) if bias is not None and ctx.needs_input_grad[2] else None
        return grad_h.to(h.dtype), grad_w.to(weight.dtype), grad_b, None
