"""Sampling from an MTP model's head 0 (the ordinary next-token model) with a KV cache (METHOD.md, "Evaluation").

`generate` samples completions for evaluation: prompts are left-padded into batches (attention mask + position
ids), n samples per prompt, greedy or temperature + nucleus (top-p, Holtzman et al. 2020) sampling with one seeded
`torch.Generator` per call, stop sequences checked on each row's decoded completion, EOS, `max_new_tokens`.
Finished rows leave the batch and the cache, so they cost nothing afterwards. Rows are batched in order of prompt
length (less padding) and returned in input order; the random stream, and so the samples at T > 0, depends on the
batch size.

`greedy_decode` is the batch-1 greedy baseline that self-speculative decoding must reproduce token for token; both
use a KV cache, so their tokens/s compare fairly. `self_speculative_decode` lives in `speculative.py` (which builds on
the helpers here) and is re-exported below.

Choices (METHOD.md is silent): prompts are encoded without special tokens, as the trainer encodes them
(`data.encode`), and cut from the left if prompt + `max_new_tokens` exceed the model's positions; EOS is the tokenizer's eos token or any id in the model config's `eos_token_id`; a sample's
`n_tokens` counts every generated token, including the EOS token and the tokens that completed a stop sequence.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from wmtp_studio.errors import StudioError
from wmtp_studio.train.model import MTPModel, cache_kwarg

if TYPE_CHECKING:
    from wmtp_studio.evaluate.speculative import SpecStats

FinishReason = Literal["stop", "eos", "length"]


@dataclass(frozen=True)
class Sample:
    """One completion of one prompt."""

    prompt_id: str
    index: int  # sample number for this prompt, 0..n-1
    text: str  # the completion, cut before the first stop sequence (the stop itself excluded)
    finish_reason: FinishReason
    n_tokens: int  # generated tokens, including EOS and the tokens that completed a stop sequence


@dataclass(frozen=True)
class SamplingConfig:
    """How to sample. METHOD.md defaults: greedy for pass@1; T = 0.8, top-p 0.95 for pass@k."""

    n: int = 1  # samples per prompt
    temperature: float = 0.0  # 0 = greedy (argmax)
    top_p: float = 1.0  # nucleus: sample among the smallest set of tokens whose probability reaches top_p
    max_new_tokens: int = 128
    stop: tuple[str, ...] = ()  # a row stops once its completion contains any of these
    seed: int = 0
    batch_size: int = 16  # rows (prompt x sample) decoded together

    def __post_init__(self) -> None:
        if self.n < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise StudioError("n, max_new_tokens and batch_size must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise StudioError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {self.temperature}, {self.top_p}"
            )
        if any(not s for s in self.stop):
            raise StudioError("stop sequences must be non-empty")


def prompt_ids(model: MTPModel, tokenizer: Any, text: str, max_new_tokens: int) -> list[int]:
    """Prompt ids as the trainer encodes them (no special tokens; an empty prompt starts from BOS, else EOS), cut
    from the left when prompt + completion would not fit the model's `max_position_embeddings`."""
    ids = list(tokenizer.encode(text, add_special_tokens=False))
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise StudioError("empty prompt and the tokenizer has neither a bos nor an eos token")
        ids = [int(start)]
    room = getattr(model.hf.config, "max_position_embeddings", None)
    if isinstance(room, int) and len(ids) + max_new_tokens > room:
        if max_new_tokens >= room:
            raise StudioError(
                f"max_new_tokens={max_new_tokens} leaves no room for a prompt in {room} positions"
            )
        ids = ids[len(ids) + max_new_tokens - room :]
    return ids


def eos_ids(model: MTPModel, tokenizer: Any) -> frozenset[int]:
    """Token ids that end a completion: the tokenizer's eos and the model config's eos_token_id (int or list)."""
    found: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(model.hf.config, "eos_token_id", None)):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, list | tuple):
            found.update(int(v) for v in value)
    return frozenset(found)


def finish_reason(
    tokens: list[int], tokenizer: Any, eos: frozenset[int], stop: tuple[str, ...], max_new: int
) -> FinishReason | None:
    """Why a completion whose last generated token is tokens[-1] ends now, or None if it goes on."""
    if tokens and tokens[-1] in eos:
        return "eos"
    if stop:
        text = tokenizer.decode(tokens, skip_special_tokens=True)
        if any(s in text for s in stop):
            return "stop"
    return "length" if len(tokens) >= max_new else None


def completion_text(tokens: list[int], tokenizer: Any, eos: frozenset[int], stop: tuple[str, ...]) -> str:
    """The decoded completion without EOS, cut before the earliest stop sequence."""
    text = tokenizer.decode([t for t in tokens if t not in eos], skip_special_tokens=True)
    cuts = [i for i in (text.find(s) for s in stop) if i >= 0]
    return text[: min(cuts)] if cuts else text


@contextlib.contextmanager
def inference(model: MTPModel) -> Iterator[None]:
    """Eval mode (no dropout) and no autograd for the duration; every module's training flag is restored after."""
    training = [module for module in model.modules() if module.training]
    for module in training:
        module.training = False
    try:
        with torch.inference_mode():
            yield
    finally:
        for module in training:
            module.training = True


def new_cache() -> Any:
    """An empty Hugging Face DynamicCache (its layers are created as the model writes them)."""
    from transformers import DynamicCache

    return DynamicCache()


def next_token_logits(
    model: MTPModel, ids: Tensor, cache: Any, positions: Tensor, mask: Tensor | None
) -> Tensor:
    """Head 0 (the HF model itself) at the last position of ids (B, S), extending `cache`: (B, V)."""
    inputs = {cache_kwarg(model.hf.base_model): cache}
    out = model.hf.base_model(
        input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, **inputs
    )
    return model.unembed(out.last_hidden_state[:, -1:])[:, 0]


def choose(logits: Tensor, cfg: SamplingConfig, gen: torch.Generator) -> Tensor:
    """Next token per row from logits (B, V): argmax at T = 0, else a draw from the top-p nucleus of softmax(z/T)."""
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / cfg.temperature, dim=-1)  # (B, V)
    if cfg.top_p < 1:
        # Holtzman et al. 2020 §3.1: keep the smallest prefix of the sorted distribution with mass >= top_p.
        # Stable sort: on ties the nucleus starts with argmax's token, so a tiny top_p equals greedy.
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        outside = (sorted_p.cumsum(-1) - sorted_p) >= cfg.top_p  # mass before this token already suffices
        outside[:, 0] = False
        probs = torch.zeros_like(probs).scatter(-1, order, sorted_p.masked_fill(outside, 0.0))
    return torch.multinomial(probs, 1, generator=gen).squeeze(-1)


def _left_pad(rows: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """(ids, attention mask, position ids), each (B, S), prompts aligned on the right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # each prompt starts at position 0 after its padding
    return ids.to(device), mask.to(device), positions.to(device)


def _decode_batch(
    model: MTPModel, tokenizer: Any, prompts: list[list[int]], cfg: SamplingConfig, gen: torch.Generator
) -> list[tuple[list[int], FinishReason]]:
    """Generated ids and finish reason for each prompt of one batch; finished rows leave the batch and the cache."""
    device = model.hf.device
    eos = eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos, default=0)
    ids, mask, positions = _left_pad(prompts, int(pad), device)
    cache = new_cache()
    logits = next_token_logits(model, ids, cache, positions, mask)  # (B, V)
    out: list[list[int]] = [[] for _ in prompts]
    reasons: list[FinishReason | None] = [None] * len(prompts)
    alive = list(range(len(prompts)))  # batch row j decodes prompt alive[j]
    while alive:
        picked = choose(logits, cfg, gen).tolist()
        keep = []
        for j, (row, token) in enumerate(zip(alive, picked, strict=True)):
            out[row].append(int(token))
            reasons[row] = finish_reason(out[row], tokenizer, eos, cfg.stop, cfg.max_new_tokens)
            if reasons[row] is None:
                keep.append(j)
        if not keep:
            break
        if len(keep) < len(alive):
            index = torch.tensor(keep, device=device)
            cache.batch_select_indices(index)
            mask, positions = mask[index], positions[index]
            alive = [alive[j] for j in keep]
        step = torch.tensor([[out[row][-1]] for row in alive], device=device)  # (B', 1)
        mask = torch.cat([mask, mask.new_ones((len(alive), 1))], dim=1)
        positions = positions[:, -1:] + 1
        logits = next_token_logits(model, step, cache, positions, mask)
    return [(tokens, reason or "length") for tokens, reason in zip(out, reasons, strict=True)]


def generate(
    model: MTPModel,
    tokenizer: Any,
    prompts: Sequence[tuple[str, str]],
    cfg: SamplingConfig,
    *,
    progress: Callable[[int], None] | None = None,
) -> list[Sample]:
    """cfg.n samples for each (prompt_id, prompt text), in input order; `progress(k)` after k more samples end."""
    encoded = [prompt_ids(model, tokenizer, text, cfg.max_new_tokens) for _, text in prompts]
    rows = [(pid, i, ids) for (pid, _), ids in zip(prompts, encoded, strict=True) for i in range(cfg.n)]
    # stable sort by length: a prompt's samples stay together, batches need little padding
    order = sorted(range(len(rows)), key=lambda r: len(rows[r][2]))
    device = model.hf.device
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    eos = eos_ids(model, tokenizer)
    samples: dict[int, Sample] = {}
    with inference(model):
        for start in range(0, len(order), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            decoded = _decode_batch(model, tokenizer, [rows[r][2] for r in batch], cfg, gen)
            for r, (tokens, reason) in zip(batch, decoded, strict=True):
                pid, index, _ = rows[r]
                text = completion_text(tokens, tokenizer, eos, cfg.stop)
                samples[r] = Sample(pid, index, text, reason, len(tokens))
            if progress is not None:
                progress(len(batch))
    return [samples[r] for r in range(len(rows))]


def greedy_decode(
    model: MTPModel, tokenizer: Any, prompt: str, max_new_tokens: int, stop: Sequence[str] = ()
) -> tuple[list[int], float]:
    """Greedy head-0 decoding of one prompt with a KV cache: (generated ids, seconds).

    The ids end with EOS or with the token that completed a stop sequence, when either happened.
    """
    start = time.perf_counter()
    eos, stops = eos_ids(model, tokenizer), tuple(stop)
    device = model.hf.device
    out: list[int] = []
    with inference(model):
        ids = torch.tensor([prompt_ids(model, tokenizer, prompt, max_new_tokens)], device=device)  # (1, P)
        cache, past = new_cache(), 0
        while max_new_tokens > 0:
            positions = torch.arange(past, past + ids.shape[1], device=device).unsqueeze(0)
            token = int(next_token_logits(model, ids, cache, positions, None)[0].argmax())
            past += ids.shape[1]
            out.append(token)
            if finish_reason(out, tokenizer, eos, stops, max_new_tokens) is not None:
                break
            ids = torch.tensor([[token]], device=device)
    return out, time.perf_counter() - start


def self_speculative_decode(
    model: MTPModel, tokenizer: Any, prompt: str, max_new_tokens: int, stop: Sequence[str] = ()
) -> tuple[list[int], SpecStats]:
    """Greedy decoding drafted by heads 1..n-1 and verified by head 0: see `speculative.self_speculative_decode`."""
    from wmtp_studio.evaluate import speculative  # imported here: speculative.py imports this module

    return speculative.self_speculative_decode(model, tokenizer, prompt, max_new_tokens, stop)
