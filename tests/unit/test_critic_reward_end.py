"""critic-wmtp: R sits on an example's true final token, never on the last token of a piece cut by packing or
truncation (METHOD.md, critic-wmtp). Hand-computed TD errors on batches built by the real collate."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from wmtp_studio.recipe_sections import TrainSection
from wmtp_studio.train.data import Encoded, Example, collate, encode
from wmtp_studio.train.tokenizer import train_bpe
from wmtp_studio.train.weights import td_errors

F, T = False, True
PAD = 1
TOL = {"atol": 1e-6, "rtol": 0.0}


def test_packing_cut_piece_ends_with_gamma_v_not_r() -> None:
    # One incorrect example (R = 0): prompt x_0, completion x_1..x_4 (x_4 = EOS), cut by packing after x_2.
    ex = Encoded([5, 6, 7, 8, 9], [F, T, T, T, T], 0.0)
    batch = collate([[(0, 0, 3)], [(0, 3, 5)]], [ex], TrainSection(steps=1), PAD, None)
    assert batch.example_end is not None
    assert batch.example_end.tolist() == [[F, F, F], [F, T, F]]  # only x_4, in the second piece
    values = torch.full((2, 3), 0.5)
    delta = td_errors(
        values, batch.rewards, batch.completion_mask, batch.segment_ids, batch.example_end, gamma=0.9
    )
    # Row 0 (x_0 x_1 x_2): j=1: 0.9 * V(s_1) - V(s_0) = 0.45 - 0.5 = -0.05;
    #   j=2 is cut, not final: 0.9 * 0.5 - 0.5 = -0.05 (R - V(s_1) = 0 - 0.5 = -0.5 would be wrong).
    # Row 1 (x_3 x_4 pad): j=0 has no preceding state in this piece -> 0; j=1 is the true end: R - V = -0.5.
    assert_close(delta, torch.tensor([[0.0, -0.05, -0.05], [0.0, -0.5, 0.0]]), **TOL)
    # Without the flag every piece's last token would take R: the measured -0.5 of the bug.
    old = td_errors(values, batch.rewards, batch.completion_mask, batch.segment_ids, gamma=0.9)
    assert old[0, 2].item() == -0.5


def test_gamma_one_cut_piece_gets_zero_delta() -> None:
    # R = 0, V = 0.5 everywhere, gamma = 1: the cut piece's last delta is 1 * 0.5 - 0.5 = 0.0, not -0.5.
    ex = Encoded([5, 6, 7, 8], [F, T, T, T], 0.0)
    batch = collate([[(0, 0, 3)]], [ex], TrainSection(steps=1), PAD, None)
    assert batch.example_end is not None and not batch.example_end.any()
    delta = td_errors(
        torch.full((1, 3), 0.5), batch.rewards, batch.completion_mask, batch.segment_ids, batch.example_end
    )
    assert_close(delta, torch.tensor([[0.0, 0.0, 0.0]]), **TOL)


def test_truncated_example_never_receives_r() -> None:
    # Truncation dropped the EOS (encode sets `truncated`): the row's last token is not the example's end.
    cut = Encoded([5, 6, 7], [F, T, T], 1.0, truncated=True)
    whole = Encoded([5, 6, 7], [F, T, T], 1.0)
    batch = collate([0, 1], [cut, whole], TrainSection(steps=1), PAD, None)
    assert batch.example_end is not None
    assert batch.example_end.tolist() == [[F, F, F], [F, F, T]]
    values = torch.tensor([[0.2, 0.4, 0.7], [0.2, 0.4, 0.7]])
    delta = td_errors(values, batch.rewards, batch.completion_mask, batch.segment_ids, batch.example_end)
    # j=1: V1 - V0 = 0.2 in both rows; j=2: cut -> V2 - V1 = 0.3; whole -> R - V1 = 1 - 0.4 = 0.6.
    assert_close(delta, torch.tensor([[0.0, 0.2, 0.3], [0.0, 0.2, 0.6]]), **TOL)


def test_gae_does_not_run_across_a_packed_boundary_after_a_cut_piece() -> None:
    # Row: [a cut after its x_2 | b whole]; a's last token (j=2) continues on another row, so the reverse scan must
    # restart there instead of pulling b's deltas into a's advantage.
    a = Encoded([5, 6, 7, 8], [F, T, T, T], 1.0)
    b = Encoded([9, 10, 11], [F, T, T], 0.0)
    batch = collate([[(0, 0, 3), (1, 0, 3)]], [a, b], TrainSection(steps=1), PAD, None)
    assert batch.example_end is not None
    assert batch.example_end.tolist() == [[F, F, F, F, F, T]]
    values = torch.tensor([[0.1, 0.3, 0.6, 0.2, 0.4, 0.8]])
    delta = td_errors(
        values,
        batch.rewards,
        batch.completion_mask,
        batch.segment_ids,
        batch.example_end,
        gamma=1.0,
        gae_lambda=0.5,
    )
    # a: d1 = 0.3 - 0.1 = 0.2, d2 = 0.6 - 0.3 = 0.3 (cut: bootstrap); A2 = 0.3, A1 = 0.2 + 0.5 * 0.3 = 0.35.
    # b: j=3 first token -> 0; d4 = 0.4 - 0.2 = 0.2; d5 = R - V4 = 0 - 0.4 = -0.4; A5 = -0.4, A4 = 0.2 - 0.2 = 0.0.
    assert_close(delta, torch.tensor([[0.0, 0.2 + 0.5 * 0.3, 0.3, 0.0, 0.0, -0.4]]), **TOL)


def test_encode_flags_truncation_that_drops_the_final_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WMTP_HOME", str(tmp_path))
    tok = train_bpe(["def add(a, b):\n    return a + b\n"] * 4, vocab_size=280, cache_dir=tmp_path / "tok")
    ex = Example("def add(a, b):\n", "    return a + b\n")
    [whole] = encode([ex], tok, None)
    [cut] = encode([ex], tok, len(whole.ids) - 1)
    [exact] = encode([ex], tok, len(whole.ids))
    assert (whole.truncated, cut.truncated, exact.truncated) == (False, True, False)
