"""A grpo-wmtp refresh's samples: G completions per training prompt from the current model, judged by the sandbox,
the work shared by every process.

The refresh's prompts (`refresh_prompts`) are cut into consecutive slices (`slices`) that depend on the prompt
and group counts only; slice j is sampled by one call of the KV-cache sampler (evaluate/generate.py) seeded with
(train.seed, step, j), by process j mod world, which also judges its samples. Then every process gathers every
slice's labelled samples, in slice order. So 1 process and N processes sampling the same weights hold the same
samples in the same order: the same prompts, batches and seeds, whatever the process count. (A slice of several
prompts rather than one prompt per call, so that a GPU still decodes batches of up to 64 rows.)

Under `train.parallel: fsdp` the model's forward is a collective (each decoder layer is all-gathered), so the
processes generate in lockstep (`lockstep`): one whose share is done runs throwaway forwards until every
process's share is done.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import nn

from wmtp_studio.recipe import Recipe
from wmtp_studio.recipe_algorithms import GRPOConfig
from wmtp_studio.train.data import Example

if TYPE_CHECKING:
    from wmtp_studio.train.model import MTPModel
    from wmtp_studio.train.setup import Setup

SLICE_ROWS = 64
"""A refresh samples at most this many completions per generate call (a batch of the KV-cache sampler)."""
MIN_SLICES = 8
"""A refresh of at least this many prompts is cut into at least this many slices (processes share slices)."""


def sampled_and_judged(s: Setup, prompts: list[Example], step: int) -> tuple[list[Example], float, float]:
    """The refresh's labelled samples (every slice, in slice order, on every process), and the slowest process's
    generation and judging seconds (the refresh's wall time for each)."""
    algo, seed = s.recipe.algorithm, s.recipe.train.seed
    assert isinstance(algo, GRPOConfig)
    mine = list(enumerate(slices(len(prompts), algo.group_size)))[s.accel.process_index :: s.world]
    start = time.perf_counter()
    with lockstep(s.model, s.accel.device) if s.fsdp else contextlib.nullcontext():
        sampled = [
            sample_groups(s.model, s.tokenizer, prompts[part], s.recipe, seed=slice_seed(seed, step, j))
            for j, part in mine
        ]
    gen_s = time.perf_counter() - start
    start = time.perf_counter()
    labelled = judge([e for share in sampled for e in share], s.recipe)
    judge_s = time.perf_counter() - start
    shares = [(j, len(share)) for (j, _), share in zip(mine, sampled, strict=True)]
    return _gathered(s.world, shares, labelled, gen_s, judge_s)


def refresh_prompts(pool: tuple[Example, ...], count: int | None, seed: int, step: int) -> list[Example]:
    """The prompts a refresh samples for: all, or `count` of them drawn with (seed, step), in pool order."""
    if count is None or count >= len(pool):
        return list(pool)
    keep = sorted(random.Random(f"grpo-refresh-{seed}-{step}").sample(range(len(pool)), count))
    return [pool[i] for i in keep]


def _stop(recipe: Recipe) -> tuple[str, ...]:
    from wmtp_studio.evaluate.tasks import CODE_STOP, GENERATED_STOP
    from wmtp_studio.prompts import MBPP_STOP

    return {"mbpp": MBPP_STOP, "generated": GENERATED_STOP}.get(recipe.data.source, CODE_STOP)


def sample_groups(
    model: Any, tokenizer: Any, prompts: list[Example], recipe: Recipe, *, seed: int
) -> list[Example]:
    """G completions per prompt from head 0 (KV-cache sampler, the recipe's T and top-p), unlabelled (is_correct 0)."""
    from wmtp_studio.evaluate.generate import SamplingConfig, generate
    from wmtp_studio.train.model import generation_budget

    algo = recipe.algorithm
    assert isinstance(algo, GRPOConfig)
    cfg = SamplingConfig(
        n=algo.group_size,
        temperature=algo.temperature,
        top_p=algo.top_p,
        max_new_tokens=generation_budget(model, algo.max_new_tokens),
        stop=_stop(recipe),
        seed=seed,
        batch_size=SLICE_ROWS,
    )
    samples = generate(model, tokenizer, [(str(i), p.prompt) for i, p in enumerate(prompts)], cfg)
    mbpp = recipe.data.source == "mbpp"
    out = []
    for smp in samples:
        p = prompts[int(smp.prompt_id)]
        # MBPP trains on code + "[DONE]" (prompts.mbpp_completion), the stop the sample was cut at
        text = smp.text.rstrip() + "\n[DONE]" if mbpp else smp.text
        out.append(Example(p.prompt, text, 0, p.tests, p.id))
    return out


def program(example: Example, mbpp: bool) -> tuple[str, int]:
    """The program that judges a completion, and where its tests start (as `wmtp label` and evaluation build it):
    MBPP: completion, then the asserts (prompts.mbpp_program); else prompt + completion + a newline + asserts."""
    tests = "".join(t + "\n" for t in example.tests)
    if mbpp:
        from wmtp_studio.prompts import mbpp_program

        text = mbpp_program({"test_list": list(example.tests)}, example.completion.removesuffix("[DONE]"))
        return text, len(text) - len(tests)
    text = example.prompt + example.completion + "\n" + tests
    return text, len(text) - len(tests)


def judge(examples: list[Example], recipe: Recipe) -> list[Example]:
    """Each completion labelled is_correct by running its program in the sandbox (the recipe's eval limits)."""
    from wmtp_studio.evaluate.judging import make_sandbox

    if not examples:  # a process with no share (fewer slices than processes)
        return []
    mbpp = recipe.data.source == "mbpp"
    built = [program(e, mbpp) for e in examples]
    with make_sandbox(None, None, recipe.eval.timeout_s, recipe.eval.memory_mb) as sandbox:
        results = sandbox.run_many([p for p, _ in built], tests_from=[start for _, start in built])
    return [replace(e, is_correct=int(r.passed)) for e, r in zip(examples, results, strict=True)]


def slices(prompts: int, group_size: int) -> list[slice]:
    """The refresh's prompts cut into consecutive slices, each sampled by one generate call with its own seed:
    at most `SLICE_ROWS` samples, and at least `MIN_SLICES` slices when there are that many prompts (so that up
    to that many processes share small refreshes). The cut depends on the prompt and group counts only, never
    on the process count: the samples of 1 and of N processes are the same."""
    per = max(1, min(SLICE_ROWS // group_size, math.ceil(prompts / MIN_SLICES)))
    return [slice(i, min(i + per, prompts)) for i in range(0, prompts, per)]


def slice_seed(seed: int, step: int, index: int) -> int:
    """The sampler's seed for slice `index` of the refresh at `step`."""
    return random.Random(f"grpo-sample-{seed}-{step}-{index}").getrandbits(63)


def _gathered(
    world: int, shares: list[tuple[int, int]], labelled: list[Example], gen_s: float, judge_s: float
) -> tuple[list[Example], float, float]:
    """Every process's labelled samples in slice order (each process passes its slices' (index, sample count)
    and their samples), and the slowest process's generation and judging seconds (the refresh's wall time)."""
    if world == 1:
        return labelled, gen_s, judge_s
    everyone: list[Any] = [None] * world
    dist.all_gather_object(everyone, (shares, labelled, gen_s, judge_s))
    by_slice: dict[int, list[Example]] = {}
    for rank_shares, rank_labelled, _, _ in everyone:
        at = 0
        for j, n in rank_shares:
            by_slice[j] = rank_labelled[at : at + n]
            at += n
    examples = [e for j in sorted(by_slice) for e in by_slice[j]]
    return examples, max(g for _, _, g, _ in everyone), max(t for _, _, _, t in everyone)


@contextlib.contextmanager
def lockstep(model: MTPModel, device: torch.device) -> Iterator[None]:
    """Generation on a sharded model (train.parallel: fsdp): every forward all-gathers each decoder layer, so
    every process must call the model as often as the others, whatever its share of the prompts and however
    soon its samples stop.

    Before each of its own forwards a process adds 1 to an all-reduced count; a process whose share is done
    adds 0 and, while the count is not 0, runs a one-token forward whose output it drops. The root's parameters
    (embeddings, unembedding), which the HF model's forward reads outside the root's hooked methods, stay
    all-gathered for the duration (`FSDPModule.unshard`); each decoder layer gathers itself in its own forward.
    First, under `no_grad`, one forward through the root's hooked `trunk` (FSDP's lazy set-up wants the root to
    run first) and one like the sampler's: a layer's gathered parameters are allocated at its first gather,
    which must not happen under the sampler's `inference_mode`, or training could not use them afterwards."""
    from torch.distributed.fsdp import FSDPModule

    from wmtp_studio.evaluate.generate import inference, new_cache, next_token_logits

    assert isinstance(model, FSDPModule)
    zero = torch.zeros((1, 1), dtype=torch.long, device=device)  # token 0 at position 0

    def others_busy(work: int) -> bool:
        count = torch.tensor([work], device=device)
        dist.all_reduce(count)
        return bool(count.item())

    def busy(_module: nn.Module, _args: Any) -> None:
        others_busy(1)

    def idle_forward() -> None:
        next_token_logits(model, zero, new_cache(), zero, None)

    with torch.no_grad():
        model.trunk(zero)
        model.unshard()
        idle_forward()
    handle = model.hf.base_model.register_forward_pre_hook(busy)
    try:
        yield
    finally:
        handle.remove()
    with inference(model):
        while others_busy(0):
            idle_forward()
    model.reshard()
