"""Token weights of critic-wmtp and rho1-wmtp against hand-computed numbers (METHOD.md)."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from wmtp_studio.train.weights import (
    critic_weights,
    excess_loss,
    rho1_weights,
    select_rescale,
    select_scale,
    td_errors,
    uniform_weights,
)

TOL = {"atol": 1e-5, "rtol": 1e-5}


def t(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.float32)


def b(*rows: list[int]) -> torch.Tensor:
    return torch.tensor(list(rows), dtype=torch.bool)


# ---------------------------------------------------------------------------------------------- td_errors


def test_td_errors_non_final_and_final_tokens() -> None:
    values = t([0.1, 0.2, 0.4, 0.7, 0.5]).requires_grad_(True)
    rewards = t([1.0] * 5)
    completion = b([0, 0, 1, 1, 1])  # prompt x_0 x_1, completion x_2..x_4
    delta = td_errors(values, rewards, completion)
    # j=2: V2 - V1 = 0.4 - 0.2 = 0.2; j=3: V3 - V2 = 0.7 - 0.4 = 0.3
    # j=4 (final): R - V3 = 1 - 0.7 = 0.3 (not gamma*V4 - V3 = 0.5 - 0.7 = -0.2); prompt positions 0
    assert_close(delta, t([0.0, 0.0, 0.2, 0.3, 0.3]), **TOL)
    assert not delta.requires_grad


def test_td_errors_gamma_discounts_non_final_only() -> None:
    values = t([0.1, 0.2, 0.4, 0.7, 0.5], [0.1, 0.2, 0.4, 0.7, 0.5])
    rewards = t([1.0] * 5, [0.0] * 5)
    completion = b([0, 0, 1, 1, 1], [0, 0, 1, 1, 1])
    delta = td_errors(values, rewards, completion, gamma=0.9)
    # j=2: 0.9*0.4 - 0.2 = 0.16; j=3: 0.9*0.7 - 0.4 = 0.23
    # j=4 final: row 0: R=1: 1 - 0.7 = 0.3; row 1: R=0: 0 - 0.7 = -0.7
    assert_close(delta, t([0, 0, 0.16, 0.23, 0.3], [0, 0, 0.16, 0.23, -0.7]), **TOL)


def test_td_errors_respect_packed_segments() -> None:
    values = t([0.1, 0.2, 0.4, 0.3, 0.6, 0.9], [0.1, 0.2, 0.4, 0.3, 0.6, 0.9])
    rewards = t([1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0])  # example 0 correct, example 1 incorrect
    seg = torch.tensor([[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
    # row 0: SFT (prompt tokens 0 and 3); row 1: loss_on all (every token is trained)
    completion = b([0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1])
    delta = td_errors(values, rewards, completion, seg)
    # j=1: V1 - V0 = 0.2 - 0.1 = 0.1; j=2 final of ex.0: R0 - V1 = 1 - 0.2 = 0.8
    # j=3 first token of ex.1: no preceding state in its example -> 0
    # j=4: V4 - V3 = 0.6 - 0.3 = 0.3; j=5 final of ex.1: R1 - V4 = 0 - 0.6 = -0.6
    # (ignoring the boundary, row 1 would give j=2: 0.4 - 0.2 = 0.2 and j=3: 0.3 - 0.4 = -0.1)
    expected = [0.0, 0.1, 0.8, 0.0, 0.3, -0.6]
    assert_close(delta, t(expected, expected), **TOL)


def test_td_errors_gae_over_three_tokens() -> None:
    values = t([0.2, 0.5, 0.4, 0.8])
    completion = b([0, 1, 1, 1])
    delta = td_errors(values, t([1.0] * 4), completion, gamma=0.9, gae_lambda=0.5)
    # d1 = 0.9*0.5 - 0.2 = 0.25; d2 = 0.9*0.4 - 0.5 = -0.14; d3 (final) = 1 - 0.4 = 0.6; gamma*lambda = 0.45
    # A3 = 0.6; A2 = -0.14 + 0.45*0.6 = 0.13; A1 = 0.25 + 0.45*0.13 = 0.3085
    assert_close(delta, t([0.0, 0.3085, 0.13, 0.6]), **TOL)


def test_td_errors_gae_restarts_at_each_example() -> None:
    values = t([0.1, 0.2, 0.4, 0.3, 0.6, 0.9])
    seg = torch.tensor([[0, 0, 0, 1, 1, 1]])
    completion = b([1, 1, 1, 1, 1, 1])
    delta = td_errors(values, t([1, 1, 1, 0, 0, 0]), completion, seg, gae_lambda=0.5)
    # one-step deltas (test above): [0, 0.1, 0.8, 0, 0.3, -0.6]
    # A5 = -0.6; A4 = 0.3 + 0.5*(-0.6) = 0.0; A3 = 0
    # A2 = 0.8 (final: nothing from ex.1); A1 = 0.1 + 0.5*0.8 = 0.5
    assert_close(delta, t([0.0, 0.5, 0.8, 0.0, 0.0, -0.6]), **TOL)


# ------------------------------------------------------------------------------------------ critic_weights


def test_critic_weights_zscore_mean_one_and_mask() -> None:
    delta = t([1.0, 2.0, 3.0, 100.0]).requires_grad_(True)
    mask = b([1, 1, 1, 0])  # the 100 is not a valid entry: it must not move the z-score
    w = critic_weights(delta, mask)
    # mean 2, population std sqrt((1 + 0 + 1) / 3) = 0.816497; z = [-1.224745, 0, 1.224745]
    # exp(z) = [0.293833, 1, 3.403298] (inside [0.1, 5]); mean = 4.697131 / 3 = 1.565710
    # mean_one: [0.293833, 1, 3.403298] / 1.565710 = [0.187667, 0.638688, 2.173645]; masked -> 0
    assert_close(w, t([0.187667, 0.638688, 2.173645, 0.0]), **TOL)
    assert not w.requires_grad
    raw = critic_weights(delta, mask, mean_one=False)
    assert_close(raw, t([0.293833, 1.0, 3.403298, 0.0]), **TOL)


def test_critic_weights_clip_before_rescale() -> None:
    delta = t([1.0, 2.0, 3.0, 100.0])
    mask = b([1, 1, 1, 0])
    # beta = 0.5: exp(z / 0.5) = exp([-2.449490, 0, 2.449490]) = [0.086338, 1, 11.582438]
    # clip to [0.1, 5] -> [0.1, 1, 5]
    clipped = critic_weights(delta, mask, beta=0.5, mean_one=False)
    assert_close(clipped, t([0.1, 1.0, 5.0, 0.0]), **TOL)
    # mean_one: mean = 6.1 / 3 = 2.033333 -> [0.049180, 0.491803, 2.459016]
    rescaled = critic_weights(delta, mask, beta=0.5)
    assert_close(rescaled, t([0.049180, 0.491803, 2.459016, 0.0]), **TOL)
    assert float(rescaled[mask].mean()) == pytest.approx(1.0, abs=1e-6)


def test_critic_weights_norm_none() -> None:
    delta = t([0.5, -1.0, 0.0, 9.0])
    mask = b([1, 1, 1, 0])
    w = critic_weights(delta, mask, norm="none", w_min=0.5, mean_one=False)
    # exp([0.5, -1, 0]) = [1.648721, 0.367879, 1]; w_min 0.5 lifts the middle one
    assert_close(w, t([1.648721, 0.5, 1.0, 0.0]), **TOL)


# ------------------------------------------------------------------------------------------ excess_loss


def test_excess_loss_aligns_reference_to_head_target() -> None:
    ce = t([1.0, 2.0, 3.0, 4.0, 5.0]).requires_grad_(True)
    ce_with_grad = ce * 1.0  # a CE tensor that is part of a graph
    ref = t([0.0, 0.1, 0.2, 0.4, 0.8])  # CE^ref_j by target position j (entry 0 unused)
    e0 = excess_loss(ce_with_grad, ref, 0)
    # head 0 at t scores x_{t+1}: e = CE - ref[t+1] = [1-0.1, 2-0.2, 3-0.4, 4-0.8] = [0.9, 1.8, 2.6, 3.2]
    # (a shift by t+k would give [1.0, 1.9, 2.8, 3.6]; by t+k+2 [0.8, 1.6, 2.2, 4.0])
    assert_close(e0[:, :4], t([0.9, 1.8, 2.6, 3.2]), **TOL)
    e1 = excess_loss(ce_with_grad, ref, 1)
    # head 1 at t scores x_{t+2}: [1-0.2, 2-0.4, 3-0.8] = [0.8, 1.6, 2.2]
    assert_close(e1[:, :3], t([0.8, 1.6, 2.2]), **TOL)
    assert not e0.requires_grad and not e1.requires_grad


# ----------------------------------------------------------------------------------------- rho1_weights

EXCESS = [0.5, 3.0, -1.0, 2.0, 9.0, 1.0]
MASK = [1, 1, 1, 1, 0, 1]  # N = 5 valid entries; the 9.0 is masked


def test_rho1_select_keeps_top_ratio_of_valid_entries() -> None:
    excess = t(EXCESS).requires_grad_(True)
    w = rho1_weights(excess, b(MASK), mode="select", head=1, ratio=0.6)
    # keep round(0.6 * 5) = 3 of the valid {0.5, 3.0, -1.0, 2.0, 1.0}: 3.0, 2.0, 1.0 (not the masked 9.0)
    assert_close(w, t([0, 1, 0, 1, 0, 1]), atol=0, rtol=0)
    assert not w.requires_grad
    # round(0.4 * 5) = 2: 3.0 and 2.0
    assert_close(rho1_weights(excess, b(MASK), head=1, ratio=0.4), t([0, 1, 0, 1, 0, 0]), atol=0, rtol=0)
    # round(0.05 * 5) = 0 -> at least 1: 3.0
    assert_close(rho1_weights(excess, b(MASK), head=1, ratio=0.05), t([0, 1, 0, 0, 0, 0]), atol=0, rtol=0)


def test_rho1_select_rescale_makes_the_head_term_the_mean_over_kept_entries() -> None:
    mask = b(MASK)
    kept = rho1_weights(t(EXCESS), mask, head=1, ratio=0.6)  # 3 of the 5 valid entries (above)
    w = select_rescale(kept, mask.float().sum())
    # N / K = 5 / 3 on the kept entries: the loss's sum(w * CE) / N is then the mean CE over the 3 kept
    assert_close(w, t([0, 5 / 3, 0, 5 / 3, 0, 5 / 3]), atol=0, rtol=0)
    ce = t([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    assert float((w * ce).sum() / 5) == pytest.approx((2.0 + 4.0 + 6.0) / 3)
    assert_close(select_rescale(t([0.0] * 6), torch.tensor(0.0)), t([0.0] * 6), atol=0, rtol=0)  # K=0: 0/1
    # over a whole step: 8 valid entries, round(0.6 * 8) = 5 kept weigh 8 / 5; a head with none weighs 0
    assert select_scale(8, 5) == 1.6 and select_scale(0, 0) == 0.0


def test_uniform_weights_are_the_mask() -> None:
    w = uniform_weights(2, t([7.0, 1.0, 3.0]), b([1, 0, 1]))
    assert w.dtype == torch.float32
    assert_close(w, t([1.0, 0.0, 1.0]), atol=0, rtol=0)


def test_rho1_select_keep_head0() -> None:
    excess, mask = t(EXCESS), b(MASK)
    # head 0 with keep_head0: every valid entry, masked one stays 0
    assert_close(rho1_weights(excess, mask, head=0), t([1, 1, 1, 1, 0, 1]), atol=0, rtol=0)
    # without keep_head0 head 0 is selected like any other head: top 3 = 3.0, 2.0, 1.0
    w = rho1_weights(excess, mask, head=0, keep_head0=False)
    assert_close(w, t([0, 1, 0, 1, 0, 1]), atol=0, rtol=0)


def test_rho1_weighted_softmax_of_zscore() -> None:
    excess = t([1.0, 2.0, 4.0, 50.0]).requires_grad_(True)
    mask = b([1, 1, 1, 0])
    w = rho1_weights(excess, mask, mode="weighted", head=1)
    # mean 7/3 = 2.333333; population std sqrt((1.777778 + 0.111111 + 2.777778) / 3) = 1.247219
    # z = [-1.069045, -0.267261, 1.336306]; exp(z) = [0.343336, 0.765473, 3.804963], sum 4.913772
    # w = 3 * softmax(z / 1) = [0.209617, 0.467343, 2.323040]; inside [0.05, 3.0]; mean already 1
    assert_close(w, t([0.209617, 0.467343, 2.323040, 0.0]), **TOL)
    assert not w.requires_grad


def test_rho1_weighted_clip_then_rescale() -> None:
    excess, mask = t([1.0, 2.0, 4.0, 50.0]), b([1, 1, 1, 0])
    w = rho1_weights(excess, mask, mode="weighted", head=2, eps=0.3, w_max=2.0)
    # clip [0.209617, 0.467343, 2.323040] to [0.3, 2.0] -> [0.3, 0.467343, 2.0]
    # mean = 2.767343 / 3 = 0.922448
    # rescale -> [0.3, 0.467343, 2.0] / 0.922448 = [0.325222, 0.506634, 2.168144]
    assert_close(w, t([0.325222, 0.506634, 2.168144, 0.0]), **TOL)
