"""One optimiser step, torchtitan's shape: `train_step` -> per micro-batch `algorithm_hooks` + `forward_backward`.

Gradients are summed across processes by hand after the per-head backward passes (a DDP wrapper expects one
backward per forward), or by FSDP's reduce-scatter under `train.parallel: fsdp` (fsdp.py); each head's term is
divided by its token count over the whole step and every process, so 2 processes x batch 2 equal 1 process x
batch 4. Also the held-out validation, which runs the same loss with w = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from wmtp_studio.errors import StudioError
from wmtp_studio.train import fsdp
from wmtp_studio.train.algorithms import (
    StepDiagnostics,
    algorithm_hooks,
    critic_step,
    grpo_step,
    value_entries,
)
from wmtp_studio.train.critic import ValueRows
from wmtp_studio.train.data import Batch, collate, epoch_plan
from wmtp_studio.train.grad import grad_step_scores
from wmtp_studio.train.loss import STAT_FIELDS, HeadStats, forward_backward, head_mask
from wmtp_studio.train.rho1 import rho1_step_selection
from wmtp_studio.train.setup import Setup
from wmtp_studio.train.weights import uniform_weights

if TYPE_CHECKING:
    from wmtp_studio.rundir.checkpoints import TrainerState as State


def next_batch(s: Setup, state: State) -> Batch:
    """This process's slice of the next global micro-batch (on the CPU); advances the data position."""
    plan = s.train_plan(state.epoch)
    if not plan:
        raise StudioError(
            f"not enough training data for one global batch of {s.recipe.train.batch_size * s.world}"
        )
    if state.batch_index >= len(plan):
        state.epoch, state.batch_index = state.epoch + 1, 0
        return next_batch(s, state)
    rows = plan[state.batch_index]
    state.batch_index += 1
    b = s.recipe.train.batch_size
    mine = rows[s.accel.process_index * b : (s.accel.process_index + 1) * b]
    return collate(mine, s.train_data, s.recipe.train, s.tokenizer.pad_token_id, s.ref_ce)  # on the CPU


def _value_batch(s: Setup, g: int) -> Batch | None:
    """critic, `train_on: correct`: the incorrect rows riding with the step's g-th micro-batch, seen by the value
    loss only (METHOD.md: else every Stage 2 reward is 1 and V drifts to 1), on the CPU. `s.value_rows` rows per
    micro-batch keep the data's ratio of incorrect to correct examples; their own plan, a function of (seed, g)
    only, so resumed runs see the same rows. The LM rows, and so the LM loss's tokens, stay those of every other
    algorithm.
    """
    if not s.value_extra:
        return None
    per = s.value_rows
    # every epoch's plan has the same length (same examples, same rows)
    epoch, index = divmod(g, max(1, len(s.value_plan(0))))
    plan = s.value_plan(epoch)
    if not plan:
        return None
    mine = plan[index % len(plan)][s.accel.process_index * per : (s.accel.process_index + 1) * per]
    return collate(mine, s.value_extra, s.recipe.train, s.tokenizer.pad_token_id, None)


def _value_rows(s: Setup, cpu_batch: Batch | None) -> ValueRows | None:
    """The value-only rows with the trunk's hidden states on them (with gradient if the value loss trains it)."""
    if cpu_batch is None:
        return None
    batch = cpu_batch.to(s.accel.device)
    algo = s.recipe.algorithm
    with torch.set_grad_enabled(algo.name == "critic-wmtp" and algo.value_trunk_grad):
        return ValueRows(batch, s.model.trunk(batch.input_ids, batch.segment_ids).hidden)


def sum_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Sum gradients over processes in ~64 MB buckets (missing gradients count as zero)."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(params):
        assert p.grad is not None
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= 16_000_000 or i == len(params) - 1:
            flat = torch.cat([g.flatten() for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def reduce_sum(s: Setup, values: torch.Tensor) -> list[float]:
    """Sum a vector over processes and read it (the step's one host sync besides the grad norm)."""
    if s.world > 1:
        values = values.to(s.accel.device, torch.float64)
        dist.all_reduce(values)
    return [float(v) for v in values.tolist()]


def _whole_step_stats(s: Setup, heads: HeadStats, diag: StepDiagnostics) -> HeadStats:
    """The logged statistics of every process, not rank 0's share: per-head sums (CE, accuracy, counts, weight
    moments), weight min/max and histograms, and the algorithms' diagnostics, in two small collectives, so a
    2-process run logs the numbers one process logs for the same global batch. The weight entropy, a detail
    of the first micro-batch, stays rank 0's."""
    if s.world == 1:
        return heads
    col = {name: i for i, name in enumerate(STAT_FIELDS)}
    device = heads.stats.device
    names = sorted(diag.sums)  # the same names on every process: they come from the recipe, not the data
    sums = [
        heads.stats.flatten(),
        *([heads.hist.flatten()] if heads.hist is not None else []),
        *([diag.ev.to(device)] if diag.ev is not None else []),
        *(torch.stack([diag.sums[k].to(device), diag.counts[k].to(device)]) for k in names),
    ]
    flat = torch.cat([x.double() for x in sums])
    dist.all_reduce(flat)
    extremes = torch.stack([heads.stats[:, col["w_min"]], -heads.stats[:, col["w_max"]]]).double()
    dist.all_reduce(extremes, op=dist.ReduceOp.MIN)
    parts = iter(flat.split([x.numel() for x in sums]))
    stats = next(parts).view_as(heads.stats).to(heads.stats.dtype)
    stats[:, col["w_min"]], stats[:, col["w_max"]] = extremes[0], -extremes[1]
    stats[:, col["w_entropy"]] = heads.stats[:, col["w_entropy"]]
    hist = next(parts).view_as(heads.hist).to(heads.hist.dtype) if heads.hist is not None else None
    if diag.ev is not None:
        diag.ev = next(parts).to(diag.ev.dtype)
    for k in names:
        total, count = next(parts)
        diag.sums[k], diag.counts[k] = total.float(), count.float()
    return HeadStats(heads.loss, heads.extra, stats, hist, heads.weights)


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int
    finite: bool
    stop: bool
    heads: HeadStats
    diag: StepDiagnostics
    batch: Batch


def train_step(s: Setup, state: State, detail: bool, stop_requested: bool) -> StepResult:
    """One optimiser step over grad_accum micro-batches; skipped (not counted) when the loss is not finite."""
    cfg = s.recipe.train
    micro = [next_batch(s, state) for _ in range(cfg.grad_accum)]
    value_batches = [_value_batch(s, state.step * cfg.grad_accum + i) for i in range(cfg.grad_accum)]
    n = s.recipe.n_heads
    counts = torch.tensor(  # per-head valid entries of the whole step, every process (masks built on the CPU)
        [float(sum(int(head_mask(b.token_mask, b.segment_ids, k).sum()) for b in micro)) for k in range(n)]
        + [value_entries(micro, value_batches) if s.value_head is not None else 0.0]  # critic's value loss
    )
    *denominators, value_count = reduce_sum(s, counts)
    diag = StepDiagnostics()
    heads: HeadStats | None = None
    with s.accel.autocast():  # rho1 select: the kept tokens are chosen over the whole step first
        selection = rho1_step_selection(s.recipe, s.model, micro, s.reference, s.world, s.accel.device)
        scores = grad_step_scores(  # grad-wmtp: running score statistics (the first step's, computed first)
            s.recipe, s.model, micro, state.score_ema, lambda v: reduce_sum(s, v), s.world, s.accel.device
        )
        critic = critic_step(  # critic: TD errors and weight statistics of the whole step
            s.recipe, s.model, s.value_head, micro, lambda v: reduce_sum(s, v), s.world, s.accel.device
        )
    grpo = grpo_step(s.recipe, micro, lambda v: reduce_sum(s, v), s.world)  # grpo: the same, from the batches
    for i, cpu_batch in enumerate(micro):
        batch = cpu_batch.to(s.accel.device)
        with s.accel.autocast():
            trunk = s.model.trunk(batch.input_ids, batch.segment_ids)
            weights_for, extra = algorithm_hooks(
                s.recipe,
                batch,
                trunk,
                s.value_head,
                s.reference,
                diag,
                value_count=value_count,
                value_rows=_value_rows(s, value_batches[i]),
                critic=(critic, i) if critic else None,
                grpo=grpo,
                selection=selection[i] if selection else None,
                scores=(scores, i) if scores else None,
            )
            stats = forward_backward(
                s.model,
                trunk,
                batch.input_ids,
                batch.token_mask,
                batch.segment_ids,
                weights_for,
                s.recipe.head_coefficients,
                denominators,
                extra_loss=extra,
                score_for=scores.score_fn if scores else None,
                naive=cfg.naive_loss,
                detail=detail and i == 0,
                ce_chunk=cfg.ce_chunk,
            )
        heads = heads.merge(stats) if heads is not None else stats
    assert heads is not None
    heads = _whole_step_stats(s, heads, diag)
    params = [p for g in s.optimizer.param_groups for p in g["params"]]
    if s.fsdp:  # FSDP reduced the model's gradients already; the value head is replicated
        sum_grads([p for p in params if not isinstance(p, DTensor)], s.world)
        grad_norm = fsdp.clip_grad_norm(params, cfg.grad_clip)
    else:
        sum_grads(params, s.world)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    tokens = sum(b.tokens for b in micro)
    local = torch.stack(
        [
            (heads.loss + heads.extra).double().cpu(),
            torch.tensor(float(tokens), dtype=torch.float64),
            torch.tensor(float(stop_requested), dtype=torch.float64),
        ]
    )
    loss, tokens_all, stop = reduce_sum(s, local)
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    if finite:
        s.optimizer.step()
        s.scheduler.step()
        state.step += 1
        state.nonfinite_streak = 0
        if scores is not None:  # the step's scores join the running statistics, logged per head
            state.score_ema = scores.updated(reduce_sum(s, scores.sums.flatten()))
            for k, e in enumerate(state.score_ema):
                if e is not None:
                    diag.add(f"head{k}/score_mu", torch.tensor(e[0]))
                    diag.add(f"head{k}/score_sigma", torch.tensor(math.sqrt(e[1])))
    else:
        state.nonfinite_streak += 1
        state.nonfinite_total += 1
    s.optimizer.zero_grad(set_to_none=True)
    state.tokens_seen += int(tokens_all)
    return StepResult(loss, grad_norm, int(tokens_all), finite, stop > 0, heads, diag, micro[0])


def head_metrics(h: HeadStats, prefix: str = "") -> dict[str, float]:
    """Per-head scalars from summed stats: CE, accuracy, weight mean/std/min/max, entropy (one host read)."""
    out: dict[str, float] = {}
    for k, row in enumerate(h.stats.tolist()):
        v = dict(zip(STAT_FIELDS, row, strict=True))
        c = max(v["count"], 1.0)
        out |= {f"head{k}/{prefix}ce": v["ce_sum"] / c, f"head{k}/{prefix}acc": v["correct"] / c}
        if not prefix:
            mean = v["w_sum"] / c
            valid = v["count"] > 0
            out |= {
                f"head{k}/w_mean": mean,
                f"head{k}/w_std": math.sqrt(max(0.0, v["w_sq"] / c - mean * mean)),
                f"head{k}/w_min": v["w_min"] if valid else 0.0,
                f"head{k}/w_max": v["w_max"] if valid else 0.0,
            }
            if h.hist is not None:
                out[f"head{k}/w_entropy"] = v["w_entropy"]
    return out


@torch.no_grad()
def validate(s: Setup) -> dict[str, float]:
    """Per-head CE and accuracy (w = 1) on the held-out slice; rank 0 only (every rank under FSDP, whose forward
    all-gathers), no other collectives."""
    cfg = s.recipe.train
    plan = epoch_plan(
        [len(e.ids) for e in s.val_data], cfg.batch_size, cfg.seed, -1, cfg.packing, cfg.seq_len
    )
    total: HeadStats | None = None
    for rows in plan[: s.recipe.eval.val_batches]:
        b = collate(rows, s.val_data, cfg, s.tokenizer.pad_token_id, None).to(s.accel.device)
        with s.accel.autocast():
            trunk = s.model.trunk(b.input_ids, b.segment_ids)
            stats = forward_backward(
                s.model,
                trunk,
                b.input_ids,
                b.token_mask,
                b.segment_ids,
                uniform_weights,
                [1.0] * s.recipe.n_heads,
                [1.0] * s.recipe.n_heads,
                backward=False,
                ce_chunk=cfg.ce_chunk,
            )
        total = total.merge(stats) if total else stats
    if total is None:
        return {}
    out = head_metrics(total, prefix="val_")
    out["val_loss"] = sum(c * out[f"head{k}/val_ce"] for k, c in enumerate(s.recipe.head_coefficients))
    return out
