"""`train.parallel: fsdp`: the MTP model sharded with FSDP2 (`torch.distributed.fsdp.fully_shard`).

Units: every decoder layer (the trunk's, and head 0's, which is the model's last layer), every extra head and the
final norm are their own units; the root (embeddings, unembedding) is the model. So the per-head backward
(loss.py: one backward per head into the detached trunk output, then one through the trunk) all-gathers only
the head it runs and the root, and reduce-scatters their gradients when that backward ends.

fully_shard is called here rather than through accelerate's FSDP plugin: the loop calls `trunk` and `unembed`,
not `forward`, so the root needs `register_fsdp_forward_method`, and the loss divides by the step's token counts
over every process, so gradients must be summed over processes, not averaged (FSDP's default), which accelerate
1.16's `fsdp2_prepare_model` offers no way to ask for. The final norm is a unit of its own, and `unembed`
rather than `head_logits` is the root's hooked method, because FSDP wraps every grad-requiring tensor among a
hooked method's arguments in one autograd node: `head_logits(k, trunk, h)` would tie the detached `h` to the
trunk's graph and each head's backward would run into the trunk. What reads the unembedding's weight itself (the
chunked CE of `train.ce_chunk`, grad-wmtp's `score: hidden`) runs inside `with_unembedding`, the third hooked
method, so it sees the gathered weight and its gradient is reduce-scattered like `unembed`'s.

Checkpoints: torch distributed checkpoint (`dcp/`, each rank writes its shards of the model, value head and
optimiser state; it reloads across process counts) beside the `model/` directory every checkpoint has, written by
rank 0 from the full state dict gathered onto it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from wmtp_studio.recipe import Recipe
from wmtp_studio.train.model import MTPModel, ValueHead, decoder_parts

DCP_DIR = "dcp"


def active(recipe: Recipe, world: int) -> bool:
    """FSDP shards only over several processes; one process trains exactly as with `ddp`."""
    return recipe.train.parallel == "fsdp" and world > 1


def bf16_params(recipe: Recipe) -> bool:
    """The recipe's precision as FSDP applies it: `bf16` (or `auto` on a GPU) computes with bf16 parameters."""
    mp = recipe.train.mixed_precision
    return mp == "bf16" or (mp == "auto" and torch.cuda.is_available())


def shard(model: MTPModel, bf16: bool) -> None:
    """Shard `model` in place over the default process group: its parameters become DTensors (build the
    optimiser after this). bf16: parameters all-gathered and computed in bf16, gradients reduced in fp32."""
    policy = (
        MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        if bf16
        else MixedPrecisionPolicy()
    )
    layers, norm = decoder_parts(model.hf)
    for unit in [*layers, *model.extra_heads, norm]:
        fully_shard(unit, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    for method in ("trunk", "unembed", "with_unembedding"):
        register_fsdp_forward_method(model, method)
    for module in model.modules():
        if isinstance(module, FSDPModule):
            # the loss already divides by the global token count: sum over processes (a plain SUM, which gloo has)
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """`clip_grad_norm_` over sharded (DTensor) and replicated (value head) gradients; the total norm, as float."""
    sharded = [p for p in params if isinstance(p.grad, DTensor)]
    plain = [p for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
    norms: list[Tensor] = []
    if sharded:
        norm = torch.nn.utils.get_total_norm([p.grad for p in sharded if p.grad is not None])
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)
    if plain:
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in plain if p.grad is not None]))
    if not norms:
        return 0.0
    total = torch.linalg.vector_norm(torch.stack([n.float() for n in norms]))
    for group in (sharded, plain):
        if group:
            torch.nn.utils.clip_grads_with_norm_(group, max_norm, total)
    return float(total)


def full_state(model: MTPModel) -> dict[str, Tensor]:
    """The whole model's state dict gathered onto rank 0's CPU (empty elsewhere); every rank must call it."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state = get_model_state_dict(model, options=options)
    return {k: v for k, v in state.items() if isinstance(v, Tensor)}


def _parts(model: MTPModel, value_head: ValueHead | None) -> nn.Module:
    """One module over everything the optimiser holds, so that its state is keyed by parameter names."""
    return nn.ModuleDict({"model": model} | ({"value_head": value_head} if value_head is not None else {}))


def save_sharded(
    model: MTPModel, value_head: ValueHead | None, optimizer: torch.optim.Optimizer, path: Path
) -> None:
    """Every rank writes its shards of the model, value head and optimiser state into `path`."""
    weights, optim = get_state_dict(_parts(model, value_head), optimizer)
    dcp.save({"model": weights, "optim": optim}, checkpoint_id=path)


def load_sharded(
    model: MTPModel, value_head: ValueHead | None, optimizer: torch.optim.Optimizer, path: Path
) -> None:
    """Restore what `save_sharded` wrote (any process count): every rank reads its own shards."""
    parts = _parts(model, value_head)
    weights, optim = get_state_dict(parts, optimizer)
    state: dict[str, Any] = {"model": weights, "optim": optim}
    dcp.load(state, checkpoint_id=path)  # tensors in place; other entries replaced in `state`
    set_state_dict(parts, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
