"""Packed rows train exactly like their examples alone: block-diagonal attention, per-example positions, rho1's
cached reference CE scoring what the model reads, and head masks that stop at example boundaries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.testing import assert_close

from wmtp_studio.recipe_sections import TrainSection
from wmtp_studio.train.data import Encoded, Example, collate, encode, epoch_plan, example_chunks
from wmtp_studio.train.loss import head_mask
from wmtp_studio.train.model import MTPModel, build_tiny_hf, packed_attention
from wmtp_studio.train.reference import cached_reference_ce, reference_ce
from wmtp_studio.train.tokenizer import train_bpe

PAD = 0
VOCAB = 100


def tiny(arch: str, kind: str, impl: str = "sdpa") -> MTPModel:
    torch.manual_seed(0)
    hf = build_tiny_hf(arch, VOCAB, 32, 3, 4, None, 64, {"attn_implementation": impl, "pad_token_id": PAD})
    model = MTPModel(hf, n_heads=3, head_kind=kind).eval()
    with torch.no_grad():  # extra heads start as copies of head 0: make them differ
        for p in model.extra_heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def rows_of(examples: list[list[int]], layout: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and segment_ids (B, S) of rows holding the listed examples in order, right-padded."""
    width = max(sum(len(examples[i]) for i in row) for row in layout)
    ids = torch.full((len(layout), width), PAD)
    seg = torch.full((len(layout), width), -1)
    for r, row in enumerate(layout):
        pos = 0
        for j, i in enumerate(row):
            ids[r, pos : pos + len(examples[i])] = torch.tensor(examples[i])
            seg[r, pos : pos + len(examples[i])] = j
            pos += len(examples[i])
    return ids, seg


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize(
    ("arch", "kind"),
    [("llama", "transformer"), ("llama", "linear"), ("gpt2", "transformer"), ("gpt2", "linear")],
)
def test_every_head_of_a_packed_row_equals_its_examples_alone(arch: str, kind: str, impl: str) -> None:
    model = tiny(arch, kind, impl)
    g = torch.Generator().manual_seed(1)
    examples = [torch.randint(1, VOCAB, (n,), generator=g).tolist() for n in (7, 9, 1, 12)]
    # row 0 packs three examples (one of a single token), row 1 holds one example and padding
    ids, seg = rows_of(examples, [[0, 1, 2], [3]])
    with torch.no_grad():
        packed = model(ids, seg)  # (B, S, n, V): all three heads
        leaky = model(ids)  # the same row without segments: later examples read the earlier ones
        pos = 0
        for i in (0, 1, 2):
            alone = model(torch.tensor([examples[i]]))[0]
            assert_close(packed[0, pos : pos + len(examples[i])], alone, atol=1e-5, rtol=0)
            pos += len(examples[i])
        assert_close(packed[1, :12], model(torch.tensor([examples[3]]))[0], atol=1e-5, rtol=0)
    assert float((leaky[0, 7:16] - packed[0, 7:16]).abs().max()) > 1e-2
    assert_close(leaky[0, :7], packed[0, :7], atol=1e-5, rtol=0)  # the first example is alone either way


def test_packed_attention_mask_is_block_diagonal_causal_with_positions_from_zero() -> None:
    seg = torch.tensor([[0, 0, 1, 1, 1, -1]])
    cfg = build_tiny_hf("llama", VOCAB, 32, 2, 4, None, 64, {}).config
    got = packed_attention(cfg, seg)
    assert got["position_ids"].tolist() == [[0, 1, 0, 1, 2, 0]]
    T, F = True, False
    assert got["attention_mask"][0, 0].tolist() == [
        [T, F, F, F, F, F],
        [T, T, F, F, F, F],
        [F, F, T, F, F, F],
        [F, F, T, T, F, F],
        [F, F, T, T, T, F],
        [F, F, F, F, F, T],
    ]
    assert packed_attention(cfg, torch.tensor([[0, 0, 0, -1], [0, 0, -1, -1]])) == {}  # one example per row
    assert packed_attention(cfg, None) == {}


@pytest.fixture
def tok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("WMTP_HOME", str(tmp_path / "home"))
    corpus = ["def add(a, b):\n    return a + b\n", "assert add(2, 3) == 5\n", "print('hello world')\n"] * 4
    return train_bpe(corpus, vocab_size=300, cache_dir=tmp_path / "home" / "tokenizers")


def test_cached_reference_ce_is_what_the_reference_reads_in_packed_rows(tok: Any) -> None:
    torch.manual_seed(0)
    ref = build_tiny_hf("llama", len(tok), 32, 2, 4, None, 64, {"pad_token_id": tok.pad_token_id}).eval()
    examples = [
        Example("# add\n", "def add(a, b):\n    return a + b\n"),
        Example("x = ", "1\n"),
        Example("def f(x):\n", "    return x * 2\n" * 5),  # longer than seq_len: cut into chunks
        Example("", "print('hello')\n"),
    ] * 3
    seq_len = 24
    encoded = encode(examples, tok, None)
    assert max(len(e.ids) for e in encoded) > seq_len
    cached = cached_reference_ce(ref, tok, encoded, seq_len, torch.device("cpu"))
    cfg = TrainSection(steps=1, packing=True, seq_len=seq_len, batch_size=2)
    checked = 0
    for rows in epoch_plan([len(e.ids) for e in encoded], 2, 0, 0, packing=True, seq_len=seq_len):
        b = collate(rows, encoded, cfg, tok.pad_token_id, cached)
        assert b.ref_ce is not None
        live = reference_ce(ref, b.input_ids, b.segment_ids)
        scored = head_mask(b.segment_ids >= 0, b.segment_ids, 0)  # (B, S): x_{t+1} is in t's example
        target = torch.zeros_like(scored)
        target[:, 1:] = scored[:, :-1]  # CE^ref_j is indexed by target position j
        assert_close(b.ref_ce[target], live[target], atol=1e-5, rtol=0)
        checked += int(target.sum())
    assert checked > 100


def test_packed_chunks_are_cut_by_the_example_alone_and_never_split_across_rows() -> None:
    assert example_chunks(3, 50, 24) == [(3, 0, 24), (3, 24, 48), (3, 48, 50)]
    lengths = [5, 30, 24, 11, 13, 2, 70, 9]
    plan = epoch_plan(lengths, 1, 0, 0, packing=True, seq_len=24)
    pieces = sorted(p for batch in plan for row in batch for p in row)
    assert pieces == sorted(c for i, n in enumerate(lengths) for c in example_chunks(i, n, 24))
    for batch in plan:
        for row in batch:
            assert sum(e - s for _, s, e in row) <= 24
            assert len({i for i, _, _ in row}) == len(row)  # one chunk of an example per row


def test_head_masks_of_real_packed_batches_never_reach_into_another_example() -> None:
    encoded = [
        Encoded(list(range(1, n + 1)), [j > 1 for j in range(n)], 1.0) for n in (5, 30, 3, 11, 9, 2, 17)
    ]
    lengths = [len(e.ids) for e in encoded]
    for loss_on in ("completion", "all"):
        cfg = TrainSection(steps=1, packing=True, seq_len=16, batch_size=2, loss_on=loss_on)  # type: ignore[arg-type]
        for rows in epoch_plan(lengths, 2, 0, 0, packing=True, seq_len=16):
            b = collate(rows, encoded, cfg, PAD, None)
            for k in range(4):
                m = head_mask(b.token_mask, b.segment_ids, k)
                r, t = m.nonzero(as_tuple=True)
                assert bool((b.segment_ids[r, t] == b.segment_ids[r, t + k + 1]).all())
                assert bool((b.segment_ids[r, t] >= 0).all())
