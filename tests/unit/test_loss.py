"""The weighted MTP loss (METHOD.md, "Loss"): hand-computed values, masks, per-head backward = naive path."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from wmtp_studio.train.loss import (
    ExtraLossFn,
    HeadStats,
    forward_backward,
    head_mask,
    head_targets,
    weighted_mtp_loss,
)
from wmtp_studio.train.model import MTPModel, build_tiny_hf, load_hf, load_mtp

LN2 = math.log(2)
X = torch.tensor([[0, 1, 2, 0]])  # B=1, S=4, V=3; any three consecutive tokens are distinct


def logits_with(correct: dict[tuple[int, int], float]) -> torch.Tensor:
    """(1, 4, 2, 3) logits: 0 everywhere except logit `a` on x_{t+k+1} for (t, k) in `correct`.

    With logits (a, 0, 0) the CE of the `a` token is ln(e^a + 2) - a; any other token's CE is ln(e^a + 2).
    Entries beyond the sequence get junk (5, -5, 0) that must never count.
    """
    logits = torch.zeros(1, 4, 2, 3)
    logits[0, 3, 0] = torch.tensor([5.0, -5.0, 0.0])
    logits[0, 2:, 1] = torch.tensor([5.0, -5.0, 0.0])
    for (t, k), a in correct.items():
        logits[0, t, k, X[0, t + k + 1]] = a
    return logits


# a = ln2 -> CE = ln4 - ln2 = ln2; a = ln4 -> CE = ln6 - ln4 = ln1.5; a = ln8 -> CE = ln10 - ln8 = ln1.25
HAND = logits_with(
    {(0, 0): math.log(2), (1, 0): math.log(4), (2, 0): math.log(8), (0, 1): math.log(4), (1, 1): math.log(2)}
)


def masks(n: int, s: int = 4) -> torch.Tensor:
    ones = torch.ones(1, s, dtype=torch.bool)
    return torch.stack([head_mask(ones, None, k) for k in range(n)], dim=2)  # (1, S, n)


def test_loss_scores_head_k_against_x_t_plus_k_plus_1() -> None:
    w = torch.tensor([[[2.0, 1.0], [1.0, 3.0], [0.5, 9.0], [9.0, 9.0]]])  # (1, 4, 2); 9s are masked entries
    loss = weighted_mtp_loss(HAND, X, masks(2), w, [1.0, 0.5])
    # head 0 (3 valid): (2*ln2 + 1*ln1.5 + 0.5*ln1.25) / 3 = (1.386294 + 0.405465 + 0.111572) / 3 = 0.634444
    # head 1 (2 valid): 0.5 * (1*ln1.5 + 3*ln2) / 2 = 0.5 * (0.405465 + 2.079442) / 2 = 0.621227
    # L = 0.634444 + 0.621227 = 1.255671.
    # Scoring x_{t+k} or x_{t+k+2} instead hits a logit-0 token everywhere: CE = ln4, ln6, ln10, ...
    # (head 0 alone would be (2*1.386 + 1.792 + 0.5*2.303) / 3 = 1.905): a different number.
    assert float(loss) == pytest.approx(1.255671, abs=1e-5)
    # An all-true mask gives the same value: targets beyond the sequence (the junk logits) are dropped inside.
    all_true = torch.ones(1, 4, 2, dtype=torch.bool)
    assert float(weighted_mtp_loss(HAND, X, all_true, w, [1.0, 0.5])) == pytest.approx(1.255671, abs=1e-5)


def test_loss_normalises_each_head_by_its_mask_count() -> None:
    logits = logits_with(dict.fromkeys([(0, 0), (1, 0), (2, 0), (0, 1), (1, 1)], LN2))  # every valid CE = ln2
    w = torch.tensor([[[2.0, 0.5]] * 4])  # head 0: w = 2, head 1: w = 0.5
    loss = weighted_mtp_loss(logits, X, masks(2), w)
    # METHOD.md: (3 * 2 * ln2) / 3 + (2 * 0.5 * ln2) / 2 = 2.5 * ln2 = 1.732868
    # dividing by sum(w) instead would give ln2 + ln2 = 1.386294; renormalising across heads per position
    # (w / sum_k w: 0.8 and 0.2 at t = 0, 1) would also lose the 2 vs 0.5 scale.
    assert float(loss) == pytest.approx(2.5 * LN2, abs=1e-5)
    # A head with no valid entry contributes 0 (max(1, 0) = 1 in the denominator), not NaN: 2 * ln2 = 1.386294
    empty_head1 = masks(2).clone()
    empty_head1[:, :, 1] = False
    assert float(weighted_mtp_loss(logits, X, empty_head1, w)) == pytest.approx(2 * LN2, abs=1e-5)


def test_loss_without_weights_equals_unit_weights() -> None:
    torch.manual_seed(0)
    logits, x = torch.randn(2, 5, 3, 7), torch.randint(0, 7, (2, 5))
    mask = torch.rand(2, 5, 3) > 0.3
    ones = weighted_mtp_loss(logits, x, mask, torch.ones(2, 5, 3), [1.0, 0.5, 0.25])
    assert_close(weighted_mtp_loss(logits, x, mask, None, [1.0, 0.5, 0.25]), ones, atol=1e-6, rtol=1e-6)


def test_single_head_unit_weights_is_the_lm_loss() -> None:
    torch.manual_seed(1)
    logits, x = torch.randn(2, 5, 1, 7), torch.randint(0, 7, (2, 5))
    expected = F.cross_entropy(logits[:, :-1, 0].reshape(-1, 7), x[:, 1:].reshape(-1))  # standard LM shift
    got = weighted_mtp_loss(logits, x, torch.ones(2, 5, 1, dtype=torch.bool))
    assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_head_targets_shift() -> None:
    x = torch.tensor([[5, 6, 7, 8]])
    assert head_targets(x, 0)[:, :3].tolist() == [[6, 7, 8]]  # x_{t+1}
    assert head_targets(x, 1)[:, :2].tolist() == [[7, 8]]  # x_{t+2}


def test_head_mask_token_mask_and_segments() -> None:
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]])
    every = torch.ones(1, 6, dtype=torch.bool)  # loss_on: all
    # head 0: t=2 -> x3 is in example 1 (crosses), t=5 -> beyond the end
    assert head_mask(every, seg, 0).int().tolist() == [[1, 1, 0, 1, 1, 0]]
    # head 1: t=1 -> x3, t=2 -> x4 cross; t=4, 5 beyond the end
    assert head_mask(every, seg, 1).int().tolist() == [[1, 0, 0, 1, 0, 0]]
    # head 2: every target x_{t+3} crosses or lies beyond the end
    assert head_mask(every, seg, 2).int().tolist() == [[0] * 6]
    sft = torch.tensor([[0, 1, 1, 0, 1, 1]], dtype=torch.bool)  # prompts at 0 and 3 are not trained
    assert head_mask(sft, seg, 0).int().tolist() == [[1, 1, 0, 1, 1, 0]]  # targets x1 x2 | x4 x5
    # head 1 without segments: targets x2, x3 (prompt: no), x4, x5 -> t = 0, 2, 3
    assert head_mask(sft, None, 1).int().tolist() == [[1, 0, 1, 1, 0, 0]]
    # with segments t = 2 (x2 -> x4) crosses into example 1
    assert head_mask(sft, seg, 1).int().tolist() == [[1, 0, 0, 1, 0, 0]]


# --------------------------------------------------------------------------- per-head backward vs naive path

ARCH_KINDS = [(a, k) for a in ("llama", "gpt2") for k in ("transformer", "linear")]
COEFS = [1.0, 0.5, 0.25]


def tiny_mtp(arch: str, kind: str, n: int = 3) -> tuple[MTPModel, torch.nn.Module]:
    torch.manual_seed(0)
    hf = build_tiny_hf(arch, 100, 32, 3, 4, None, 64, {})
    model = MTPModel(hf, n_heads=n, head_kind=kind)
    with torch.no_grad():  # heads start as copies of head 0 (and linear `down` at zero): make them differ
        for p in model.extra_heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model, hf


def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    x = torch.randint(0, 100, (2, 6))
    # row 0: prompt x0 x1; row 1: prompt x0 | prompt x3, and a pad at the end
    token_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 1, 0]], dtype=torch.bool)
    seg = torch.tensor([[0, 0, 0, 0, 0, 0], [0, 0, 0, 1, 1, 1]])  # row 1 packs two examples
    return x, token_mask, seg


def weights_for(k: int, ce: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (0.5 + torch.sigmoid(ce - ce.mean()) + 0.1 * k) * m  # non-uniform, depends on the CE


def run(
    model: MTPModel, naive: bool, extra: ExtraLossFn | None = None
) -> tuple[HeadStats, dict[str, torch.Tensor]]:
    x, tm, seg = batch()
    dens = [float(head_mask(tm, seg, k).sum()) for k in range(model.n_heads)]
    model.zero_grad(set_to_none=True)
    trunk = model.trunk(x)
    opts = {"naive": naive, "extra_loss": extra, "detail": True}  # detail: keep the weights in stats
    stats = forward_backward(model, trunk, x, tm, seg, weights_for, COEFS, dens, **opts)  # type: ignore[arg-type]
    return stats, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(("arch", "kind"), ARCH_KINDS)
def test_per_head_backward_equals_naive(arch: str, kind: str) -> None:
    model, _ = tiny_mtp(arch, kind)
    x, tm, seg = batch()
    with torch.no_grad():
        all_logits = model(x)  # (B, S, n, V)
    assert not torch.allclose(all_logits[:, :, 1], all_logits[:, :, 2])  # the heads really differ
    seq, g_seq = run(model, naive=False)
    nai, g_nai = run(model, naive=True)
    assert float(seq.loss) == pytest.approx(float(nai.loss), rel=1e-5, abs=1e-5)
    assert set(g_seq) == set(g_nai) == {n for n, _ in model.named_parameters()}  # trunk included
    for name in g_seq:
        assert_close(g_seq[name], g_nai[name], atol=1e-5, rtol=1e-5, msg=name)
    # Same value from the materialised formula, with denominators = per-head mask sums.
    mask = torch.stack([head_mask(tm, seg, k) for k in range(3)], dim=2)
    w = torch.stack(seq.weights, dim=2)  # (B, S, n), as weights_for returned them
    assert not w.requires_grad
    with torch.no_grad():
        ref = weighted_mtp_loss(all_logits, x, mask, w, COEFS)
    assert float(ref) == pytest.approx(float(seq.loss), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize(("arch", "kind"), [("llama", "transformer"), ("gpt2", "linear")])
def test_per_head_backward_with_extra_loss_equals_naive(arch: str, kind: str) -> None:
    model, _ = tiny_mtp(arch, kind)

    def extra(h: torch.Tensor) -> torch.Tensor:
        return 0.1 * (h.float() ** 2).mean()  # stands in for the critic's value loss on the trunk output

    seq, g_seq = run(model, naive=False, extra=extra)
    nai, g_nai = run(model, naive=True, extra=extra)
    assert float(seq.extra) == pytest.approx(float(nai.extra), rel=1e-6)
    assert set(g_seq) == set(g_nai)
    for name in g_seq:
        assert_close(g_seq[name], g_nai[name], atol=1e-5, rtol=1e-5, msg=name)


@pytest.mark.parametrize(("arch", "kind"), ARCH_KINDS)
def test_head0_is_the_plain_hf_model(arch: str, kind: str) -> None:
    model, hf = tiny_mtp(arch, kind, n=1)
    x, _, _ = batch()
    with torch.no_grad():
        plain = hf(input_ids=x).logits
        assert_close(model(x)[:, :, 0], plain, atol=1e-6, rtol=1e-6)
        wide = MTPModel(hf, n_heads=3, head_kind=kind)  # extra heads do not change head 0
        assert_close(wide(x)[:, :, 0], plain, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("arch", "kind"), ARCH_KINDS)
def test_save_and_load_round_trip(arch: str, kind: str, tmp_path: Path) -> None:
    model, _ = tiny_mtp(arch, kind)
    model.eval()
    model.save(tmp_path / "m")
    loaded = load_mtp(tmp_path / "m")
    assert (loaded.n_heads, loaded.head_kind) == (3, kind)
    x, _, _ = batch()
    with torch.no_grad():
        before = model(x)
        assert_close(loaded(x), before, atol=0, rtol=0)
        # the directory alone is a HF causal LM: the head-0 next-token model
        assert_close(load_hf(str(tmp_path / "m"))(input_ids=x).logits, before[:, :, 0], atol=0, rtol=0)
