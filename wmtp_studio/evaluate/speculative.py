"""Self-speculative greedy decoding with the MTP heads (Gloeckle et al. 2024 §3.2; Stern et al. 2018, blockwise
parallel decoding), batch size 1.

One forward pass per step over the block `[y, d_1, ..., d_{m-1}]`: y is the token head 0 chose last, and d_i is
head i's greedy guess for the i-th token after y, made at the same position as head 0's choice of y (head k at t
predicts x_{t+k+1}). Head 0's greedy choices v_0..v_{m-1} at the block positions verify the drafts: with a = the
largest j such that d_i = v_{i-1} for all i <= j, the step emits d_1..d_a and v_a, i.e. a + 1 tokens, exactly
what greedy decoding with head 0 would emit. The same pass gives the next drafts (heads 1..n-1 at block position
a); the KV caches are then cropped to the accepted prefix y, d_1..d_a. m = n, or fewer near `max_new_tokens`.

Caches: one DynamicCache for the trunk and the head-0 layer (with linear heads: the whole model), and with
transformer heads one more per extra head. The extra heads are copies of the last decoder layer and carry its
`layer_idx`, so a shared cache would mix their keys with head 0's; each gets its own cache, swapped into the layer
kwargs captured from the trunk (attention mask and position embeddings are the trunk's, valid because every cache
holds the same positions). Extra heads run over the whole block, so that their caches hold every accepted position.

Identity with greedy holds in exact arithmetic; in floating point the block pass and greedy's one-token passes can
round differently, so a near-tie between head 0's two best tokens could in principle flip (never observed on the
trained tiny models: see tests/integration/test_speculative.py).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.generate import eos_ids, finish_reason, inference, new_cache, prompt_ids
from wmtp_studio.train.model import MTPModel, TrunkOutput


@dataclass(frozen=True)
class SpecStats:
    """What one self-speculative decode did."""

    accepted_lengths: list[int]  # tokens emitted by each verify pass (accepted drafts + 1, at most n)
    forward_passes: int  # model forward passes, the prompt pass included
    seconds: float

    @property
    def mean_accepted(self) -> float:
        """Tokens produced per verify forward pass."""
        return sum(self.accepted_lengths) / max(1, len(self.accepted_lengths))


@dataclass
class _Caches:
    trunk: Any  # trunk layers + head-0 layer (linear heads: the whole model)
    heads: list[Any]  # one per extra transformer head; empty for linear heads

    def crop(self, tokens: int) -> None:
        if tokens > 0:
            for cache in (self.trunk, *self.heads):
                cache.crop(-tokens)


def _with_cache(trunk: TrunkOutput, old: Any, new: Any) -> TrunkOutput:
    """The trunk output with the cache object `old` replaced by `new` in the captured layer arguments."""
    args = tuple(new if a is old else a for a in trunk.layer_args)
    kwargs = {k: new if v is old else v for k, v in trunk.layer_kwargs.items()}
    return TrunkOutput(trunk.hidden, args, kwargs)


def _block(
    model: MTPModel, caches: _Caches, ids: Tensor, past: int
) -> tuple[list[int], TrunkOutput, list[Tensor]]:
    """One forward pass over ids (1, m) at positions past..past+m-1, extending every cache by m.

    Returns head 0's greedy choice at each position, the trunk output, and each extra transformer head's hidden
    state (1, m, D) (linear heads are evaluated later, at one position only).
    """
    positions = torch.arange(past, past + ids.shape[1], device=ids.device).unsqueeze(0)  # (1, m)
    trunk = model.trunk_cached(ids, caches.trunk, positions)
    choices = model.unembed(model.head_hidden(0, trunk))[0].argmax(-1).tolist()
    extra = [
        model.head_hidden(k, _with_cache(trunk, caches.trunk, cache))
        for k, cache in enumerate(caches.heads, 1)
    ]
    return choices, trunk, extra


def _drafts(model: MTPModel, trunk: TrunkOutput, extra: list[Tensor], at: int) -> list[int]:
    """Heads 1..n-1's greedy tokens at block position `at`: the guesses for the tokens after head 0's choice."""
    if model.head_kind == "linear":
        h = trunk.hidden[:, at : at + 1]  # (1, 1, D)
        extra = [model.head_hidden(k, trunk, h) for k in range(1, model.n_heads)]
        at = 0
    hidden = torch.cat([h[:, at] for h in extra])  # (n-1, D)
    return [int(t) for t in model.unembed(hidden).argmax(-1).tolist()]


def self_speculative_decode(
    model: MTPModel, tokenizer: Any, prompt: str, max_new_tokens: int, stop: Sequence[str] = ()
) -> tuple[list[int], SpecStats]:
    """Greedy decoding of one prompt, drafted by heads 1..n-1 and verified by head 0: (generated ids, stats).

    The ids equal `generate.greedy_decode`'s for the same model and prompt (module docstring).
    """
    if model.n_heads < 2:
        raise StudioError("self-speculative decoding needs an MTP model with at least 2 heads")
    start = time.perf_counter()
    eos, stops = eos_ids(model, tokenizer), tuple(stop)
    device = model.hf.device
    out: list[int] = []
    accepted: list[int] = []
    with inference(model):
        extra_caches = (
            [new_cache() for _ in range(model.n_heads - 1)] if model.head_kind == "transformer" else []
        )
        caches = _Caches(new_cache(), extra_caches)
        ids = torch.tensor([prompt_ids(model, tokenizer, prompt, max_new_tokens)], device=device)  # (1, P)
        choices, trunk, extra = _block(model, caches, ids, 0)
        past, passes = ids.shape[1], 1
        token, drafts = choices[-1], _drafts(model, trunk, extra, ids.shape[1] - 1)
        done = max_new_tokens <= 0 or _emit(out, [token], tokenizer, eos, stops, max_new_tokens)
        while not done:
            m = min(model.n_heads, max_new_tokens - len(out))
            block = [token, *drafts[: m - 1]]
            choices, trunk, extra = _block(model, caches, torch.tensor([block], device=device), past)
            passes += 1
            a = 0
            while a < m - 1 and block[a + 1] == choices[a]:
                a += 1
            emitted = len(out)
            done = _emit(out, [*block[1 : a + 1], choices[a]], tokenizer, eos, stops, max_new_tokens)
            accepted.append(len(out) - emitted)  # a + 1, unless the completion ended inside the block
            if done:
                break
            caches.crop(m - (a + 1))  # keep y, d_1..d_a; v_a is the next block's first token
            past += a + 1
            token, drafts = choices[a], _drafts(model, trunk, extra, a)
    return out, SpecStats(accepted, passes, time.perf_counter() - start)


def _emit(
    out: list[int],
    tokens: list[int],
    tokenizer: Any,
    eos: frozenset[int],
    stop: tuple[str, ...],
    max_new: int,
) -> bool:
    """Append tokens one by one as greedy decoding would; True once the completion has ended (rest dropped)."""
    for token in tokens:
        out.append(token)
        if finish_reason(out, tokenizer, eos, stop, max_new) is not None:
            return True
    return False
