"""rho1 `select` chosen over a whole optimiser step (METHOD.md, rho1-wmtp): every micro-batch's excess losses are
scored before any of them is trained on, gathered across processes, and each head keeps the step's top entries.
The weights that read the selection are `algorithms._rho1_weights_fn`'s; the formulas are weights.py's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from wmtp_studio.recipe import Recipe
from wmtp_studio.recipe_algorithms import Rho1Config
from wmtp_studio.train.data import Batch
from wmtp_studio.train.loss import head_ce, head_mask, head_targets
from wmtp_studio.train.model import MTPModel
from wmtp_studio.train.reference import reference_ce
from wmtp_studio.train.weights import excess_loss, select_scale, select_top


@dataclass
class Rho1Selection:
    """rho1 `select` for one micro-batch, chosen over the whole optimiser step (see `rho1_step_selection`)."""

    kept: list[Tensor | None]  # per head (B, S) bool; None: the head keeps every valid entry (keep_head0)
    scale: list[float]  # per head N_k / K_k over the step: the loss divides by N_k, the kept mean by K_k
    ref_ce: Tensor  # (B, S) CE^ref used for the selection (computed once when live)


@torch.no_grad()
def rho1_step_selection(
    recipe: Recipe,
    model: MTPModel,
    micro: list[Batch],
    reference: nn.Module | None,
    world: int,
    device: torch.device,
) -> list[Rho1Selection] | None:
    """rho1 `select` over the whole optimiser step: every micro-batch and every process (METHOD.md, rho1-wmtp).

    Each head's excess losses of the step are scored first (one extra forward without gradients), gathered
    across processes in (process, micro-batch, row, position) order, and the top round(ratio * N_k) are kept,
    ties broken by that order: grad_accum 2 x batch 4 (or 2 processes x batch 4) keeps exactly what one batch of 8
    keeps. None when there is nothing to coordinate (one micro-batch, one process) or the mode is not select.
    """
    algo = recipe.algorithm
    if not isinstance(algo, Rho1Config) or algo.mode != "select" or (len(micro) == 1 and world == 1):
        return None
    n = recipe.n_heads
    selected = [k for k in range(n) if not (k == 0 and algo.keep_head0)]
    masks: list[list[Tensor]] = [[] for _ in range(n)]  # [head][micro-batch] (B, S) bool
    scores: list[list[Tensor]] = [[] for _ in range(n)]  # [head][micro-batch] valid e, row-major
    refs = []
    for cpu_batch in micro:
        b = cpu_batch.to(device)
        if b.ref_ce is not None:
            ref = b.ref_ce
        else:
            assert reference is not None, "live rho1 needs the reference model"
            ref = reference_ce(reference, b.input_ids, b.segment_ids, recipe.train.ce_chunk)
        refs.append(ref)
        trunk = model.trunk(b.input_ids, b.segment_ids) if selected else None
        for k in selected:
            assert trunk is not None
            ce, _ = head_ce(model, k, trunk, None, head_targets(b.input_ids, k), recipe.train.ce_chunk)
            m = head_mask(b.token_mask, b.segment_ids, k)
            masks[k].append(m)
            scores[k].append(excess_loss(ce, ref, k)[m])
    local = [torch.cat(scores[k]) if k in selected else torch.zeros(0, device=device) for k in range(n)]
    everyone, offsets = _gather_heads(local, world)
    kept: list[list[Tensor | None]] = [[None] * n for _ in micro]
    scale = [1.0] * n
    for k in selected:
        total = everyone[k].numel()
        keep = max(1, round(total * algo.ratio))  # round half to even, as rho1_weights
        mine = select_top(everyone[k], keep)[offsets[k] : offsets[k] + local[k].numel()]
        scale[k] = select_scale(total, min(keep, total))
        start = 0
        for i, m in enumerate(masks[k]):
            count = int(m.sum())
            out = torch.zeros_like(m)
            out[m] = mine[start : start + count]
            kept[i][k] = out
            start += count
    return [Rho1Selection(kept[i], scale, refs[i]) for i in range(len(micro))]


def _gather_heads(local: list[Tensor], world: int) -> tuple[list[Tensor], list[int]]:
    """Concatenate each head's 1-D scores over processes in rank order; also this process's offset per head."""
    if world == 1:
        return local, [0] * len(local)
    device = local[0].device
    sizes = torch.tensor([x.numel() for x in local], dtype=torch.long, device=device)
    all_sizes = [torch.zeros_like(sizes) for _ in range(world)]
    dist.all_gather(all_sizes, sizes)
    width = max(int(z.sum()) for z in all_sizes)
    flat = torch.zeros(width, dtype=torch.float32, device=device)
    flat[: int(sizes.sum())] = torch.cat([x.float() for x in local])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    rank = dist.get_rank()
    heads, offsets = [], []
    for k in range(len(local)):
        pieces: list[Tensor] = []
        offset = 0
        for r in range(world):
            begin = int(all_sizes[r][:k].sum())
            if r == rank:
                offset = sum(p.numel() for p in pieces)
            pieces.append(gathered[r][begin : begin + int(all_sizes[r][k])])
        heads.append(torch.cat(pieces))
        offsets.append(offset)
    return heads, offsets
