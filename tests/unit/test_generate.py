"""Batched KV-cache sampling (evaluate/generate.py) and the self-speculative decoder's caches, on tiny random models."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from wmtp_studio import gentask
from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate import speculative
from wmtp_studio.evaluate.generate import (
    Sample,
    SamplingConfig,
    generate,
    greedy_decode,
    inference,
    new_cache,
    self_speculative_decode,
)
from wmtp_studio.train.model import MTPModel, build_tiny_hf
from wmtp_studio.train.tokenizer import train_bpe

PROMPTS = [p.prompt for p in gentask.generate("train", 6)]


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    texts = [p.prompt + p.completion for p in gentask.generate("train", 300)]
    return train_bpe(texts, 300, tmp_path_factory.mktemp("tok"))


def tiny(tok: Any, arch: str = "llama", kind: str = "transformer", n_heads: int = 1) -> MTPModel:
    torch.manual_seed(0)
    special = {
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.eos_token_id,
    }
    model = MTPModel(build_tiny_hf(arch, len(tok), 32, 3, 4, None, 256, special), n_heads, kind)
    # new heads start as copies of head 0 (transformer) or as the identity (linear): perturb them
    with torch.no_grad():
        for p in model.extra_heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def reference_greedy(model: MTPModel, ids: list[int], max_new: int, eos: int) -> list[int]:
    """Argmax of a full recomputation (no cache) at every step."""
    out: list[int] = []
    with torch.no_grad():
        while len(out) < max_new and (not out or out[-1] != eos):
            out.append(int(model.hf(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax()))
    return out


def encode(tok: Any, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False)


def by_prompt(samples: list[Sample]) -> dict[str, Sample]:
    return {s.prompt_id: s for s in samples}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_greedy_generate_equals_uncached_reference(tok: Any, arch: str) -> None:
    model = tiny(tok, arch)
    prompts = [(f"p{i}", p) for i, p in enumerate(PROMPTS)]
    samples = generate(model, tok, prompts, SamplingConfig(max_new_tokens=24, batch_size=4))
    assert [(s.prompt_id, s.index) for s in samples] == [(pid, 0) for pid, _ in prompts]  # input order
    for (_, text), sample in zip(prompts, samples, strict=True):
        ref = reference_greedy(model, encode(tok, text), 24, tok.eos_token_id)
        assert greedy_decode(model, tok, text, 24)[0] == ref  # token for token
        assert sample.n_tokens == len(ref)
        assert sample.text == tok.decode([t for t in ref if t != tok.eos_token_id], skip_special_tokens=True)
        assert sample.finish_reason == ("eos" if ref[-1] == tok.eos_token_id else "length")


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_left_padding_in_a_batch_equals_each_prompt_alone(tok: Any, arch: str) -> None:
    model = tiny(tok, arch)
    prompts = [("long", PROMPTS[0] + PROMPTS[1]), ("short", "def f(x):\n"), ("mid", PROMPTS[2])]
    lengths = [len(encode(tok, p)) for _, p in prompts]
    assert max(lengths) - min(lengths) > 20  # real padding
    cfg = SamplingConfig(max_new_tokens=20, batch_size=3)
    batched = by_prompt(generate(model, tok, prompts, cfg))
    for pid, text in prompts:
        alone = generate(model, tok, [(pid, text)], cfg)[0]
        assert batched[pid] == alone


def test_stop_sequence_truncates_and_sets_finish_reason(tok: Any) -> None:
    model = tiny(tok)
    plain = generate(model, tok, [("p", PROMPTS[0])], SamplingConfig(max_new_tokens=30))[0]
    assert plain.finish_reason == "length" and len(plain.text) > 12
    stop = plain.text[8:11]  # three characters from the middle of the greedy completion
    cut = plain.text.find(stop)
    sample = generate(model, tok, [("p", PROMPTS[0])], SamplingConfig(max_new_tokens=30, stop=("@@", stop)))[
        0
    ]
    assert sample.finish_reason == "stop"
    assert sample.text == plain.text[:cut]  # stop excluded
    assert sample.n_tokens < 30
    # it stopped at the first token whose decoded completion contains the stop
    ids = greedy_decode(model, tok, PROMPTS[0], 30)[0]
    assert stop in tok.decode(ids[: sample.n_tokens]) and stop not in tok.decode(ids[: sample.n_tokens - 1])


def test_eos_and_length_finish_reasons(tok: Any) -> None:
    model = tiny(tok)
    ids = greedy_decode(model, tok, PROMPTS[1], 12)[0]
    assert len(ids) == 12 and tok.eos_token_id not in ids
    length = generate(model, tok, [("p", PROMPTS[1])], SamplingConfig(max_new_tokens=12))[0]
    assert (length.finish_reason, length.n_tokens) == ("length", 12)
    # declare the 5th greedy token the model's EOS (the config's eos_token_id counts as EOS)
    model.hf.config.eos_token_id = ids[4]
    first = ids.index(ids[4])
    sample = generate(model, tok, [("p", PROMPTS[1])], SamplingConfig(max_new_tokens=12))[0]
    assert (sample.finish_reason, sample.n_tokens) == ("eos", first + 1)
    assert sample.text == tok.decode(ids[:first])  # EOS excluded
    assert greedy_decode(model, tok, PROMPTS[1], 12)[0] == ids[: first + 1]


def test_sampling_is_reproducible_for_a_seed_and_differs_across_samples(tok: Any) -> None:
    model = tiny(tok)
    prompts = [("a", PROMPTS[0]), ("b", PROMPTS[1])]
    cfg = SamplingConfig(n=4, temperature=1.0, top_p=0.95, max_new_tokens=16, seed=7, batch_size=3)
    first, again = generate(model, tok, prompts, cfg), generate(model, tok, prompts, cfg)
    assert first == again
    assert [(s.prompt_id, s.index) for s in first] == [(p, i) for p in "ab" for i in range(4)]
    for pid in "ab":
        assert len({s.text for s in first if s.prompt_id == pid}) > 1
    other = generate(model, tok, prompts, replace(cfg, seed=8))
    assert [s.text for s in other] != [s.text for s in first]


def test_tiny_top_p_equals_greedy(tok: Any) -> None:
    model = tiny(tok)
    prompts = [("a", PROMPTS[0]), ("b", PROMPTS[3])]
    greedy = generate(model, tok, prompts, SamplingConfig(max_new_tokens=16))
    nucleus = generate(
        model, tok, prompts, SamplingConfig(n=2, temperature=1.5, top_p=1e-6, max_new_tokens=16)
    )
    assert [s.text for s in nucleus] == [g.text for g in greedy for _ in range(2)]


def test_long_prompts_are_cut_from_the_left_to_fit_the_positions(tok: Any) -> None:
    special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    torch.manual_seed(0)
    model = MTPModel(build_tiny_hf("gpt2", len(tok), 32, 2, 4, None, 40, special), 1, "transformer")
    text = PROMPTS[0] + PROMPTS[1]
    ids = encode(tok, text)
    assert len(ids) + 10 > 40  # GPT-2's position table would overflow
    cfg = SamplingConfig(max_new_tokens=10)
    assert generate(model, tok, [("p", text)], cfg)[0].n_tokens == len(greedy_decode(model, tok, text, 10)[0])
    kept = ids[len(ids) + 10 - 40 :]  # the last 30 prompt tokens
    assert greedy_decode(model, tok, text, 10)[0] == reference_greedy(model, kept, 10, tok.eos_token_id)
    with pytest.raises(StudioError, match="no room"):
        greedy_decode(model, tok, text, 40)


def test_progress_counts_samples_and_bad_configs_are_refused(tok: Any) -> None:
    model = tiny(tok)
    seen: list[int] = []
    generate(
        model,
        tok,
        [("a", PROMPTS[0]), ("b", "")],
        SamplingConfig(n=3, max_new_tokens=2, batch_size=4),
        progress=seen.append,
    )
    assert seen == [4, 2]
    for bad in ({"n": 0}, {"temperature": -1.0}, {"top_p": 0.0}, {"max_new_tokens": 0}, {"stop": ("",)}):
        with pytest.raises(StudioError):
            SamplingConfig(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["transformer", "linear"])
def test_self_speculative_equals_greedy_on_random_models(tok: Any, arch: str, kind: str) -> None:
    model = tiny(tok, arch, kind, n_heads=4)
    for prompt in PROMPTS[:3]:
        ids, stats = self_speculative_decode(model, tok, prompt, 30, stop=("\n\n",))
        assert ids == greedy_decode(model, tok, prompt, 30, stop=("\n\n",))[0]
        assert sum(stats.accepted_lengths) == len(ids) - 1  # the prompt pass emits the first token
        assert stats.forward_passes == len(stats.accepted_lengths) + 1
        assert all(1 <= a <= 4 for a in stats.accepted_lengths)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
@pytest.mark.parametrize("kind", ["transformer", "linear"])
def test_block_caches_match_full_recomputation_after_partial_acceptance(
    tok: Any, arch: str, kind: str
) -> None:
    """Every head's hidden state at the accepted position equals a forward pass over the whole sequence."""
    model = tiny(tok, arch, kind, n_heads=3)
    ids = encode(tok, PROMPTS[0])
    heads = [new_cache() for _ in range(2)] if kind == "transformer" else []
    caches = speculative._Caches(new_cache(), heads)
    seq, past = list(ids), 0
    with inference(model):
        for block, accept in ((ids, len(ids)), ([5, 9, 13], 2), ([7, 8, 21], 1), ([30, 31, 32], 3)):
            choices, trunk, extra = speculative._block(model, caches, torch.tensor([block]), past)
            caches.crop(len(block) - accept)
            past += accept
            seq = seq[: past - accept] + block[:accept]
            drafts = speculative._drafts(model, trunk, extra, accept - 1)
            full = model.trunk(torch.tensor([seq]))
            want = [int(model.head_logits(k, full)[0, -1].argmax()) for k in range(3)]
            assert [choices[accept - 1], *drafts] == want
            for k, h in enumerate(extra, 1):  # transformer heads: hidden states at every accepted position
                assert torch.allclose(h[0, :accept], model.head_hidden(k, full)[0, -accept:], atol=1e-5)


def test_speculative_needs_extra_heads(tok: Any) -> None:
    with pytest.raises(StudioError, match="at least 2 heads"):
        speculative.self_speculative_decode(tiny(tok), tok, PROMPTS[0], 4)
