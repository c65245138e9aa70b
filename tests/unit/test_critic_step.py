"""critic-wmtp over a whole optimiser step: the z-score, the mean-one rescale and the value loss's mean are taken
over every micro-batch (and process) of the step, so grad_accum 2 x batch 4 trains exactly as one batch of 8
(METHOD.md, Fair comparison). The step statistics are pinned by hand first."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from tests.unit.test_rho1_select import batch_of_8, rows, tiny
from wmtp_studio.recipe import load_recipe
from wmtp_studio.train.algorithms import StepDiagnostics, algorithm_hooks, critic_step, value_entries
from wmtp_studio.train.data import Batch
from wmtp_studio.train.loss import forward_backward, head_mask
from wmtp_studio.train.model import MTPModel, ValueHead
from wmtp_studio.train.weights import CriticStepStats, critic_step_stats, critic_weights

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def total(v: torch.Tensor) -> list[float]:
    return [float(x) for x in v.tolist()]


def test_step_statistics_by_hand() -> None:
    # One head, two micro-batches: valid TD errors {1, 3} and {2}, one masked-out entry (9) that must not count.
    d1, m1 = torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([[True, True, False]])
    d2, m2 = torch.tensor([[2.0]]), torch.tensor([[True]])
    (st,) = critic_step_stats([[d1, d2]], [[m1, m2]], total, beta=1.0, w_min=0.1, w_max=5.0, norm="zscore")
    # mean = (1 + 3 + 2) / 3 = 2; population variance = (1 + 1 + 0) / 3 = 2/3
    assert st.mean == pytest.approx(2.0) and st.std == pytest.approx(math.sqrt(2 / 3))
    # z = -/+ sqrt(3/2) and 0; w = clip(exp(z), 0.1, 5) = e^-1.2247 = 0.29384, e^1.2247 = 3.40328, 1: mean 1.56571
    z = math.sqrt(1.5)
    assert st.w_mean == pytest.approx((math.exp(-z) + math.exp(z) + 1.0) / 3, rel=1e-6)
    w1 = critic_weights(d1, m1, step=st)
    w2 = critic_weights(d2, m2, step=st)
    assert_close(w1, torch.tensor([[math.exp(-z), math.exp(z), 0.0]]) / st.w_mean)
    assert_close(w2, torch.tensor([[1.0]]) / st.w_mean)
    # Over the whole step they have mean 1, which neither micro-batch's own rescale would give the other.
    assert float(w1.sum() + w2.sum()) / 3 == pytest.approx(1.0, rel=1e-6)
    # The same numbers from one batch holding all three entries, the per-batch path.
    whole = critic_weights(torch.tensor([[1.0, 3.0, 2.0]]), torch.ones(1, 3, dtype=torch.bool))
    assert_close(torch.cat([w1[m1], w2[m2]]), whole[0])
    # Spread ~0: z = 0 everywhere, as the per-batch z-score does.
    flat = CriticStepStats(mean=2.0, std=0.0, w_mean=1.0)
    assert_close(critic_weights(d1, m1, step=flat), m1.float())


def critic_batch() -> Batch:
    """batch_of_8 with rewards 1 on rows 0, 2, 3, 6 and 0 elsewhere, so the TD errors spread."""
    b = batch_of_8()
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0])[:, None].expand(8, 12).clone()
    return replace(b, rewards=r)


def recipe(*more: str):  # type: ignore[no-untyped-def]
    return load_recipe(
        ROOT / "recipes" / "tiny-critic-wmtp.yaml",
        ["model.n_heads=3", "model.head_coefficients=[1.0,0.5,0.25]", *more],
    )


def step(model: MTPModel, head: ValueHead, micro: list[Batch], *more: str, whole: bool = True) -> tuple:  # type: ignore[type-arg]
    """One critic step's gradients, LM loss and value loss, as train_step computes them (one process).
    `whole=False`: the step as it was before, each micro-batch z-scoring and rescaling its own weights."""
    r = recipe(*more)
    model.zero_grad(set_to_none=True)
    head.zero_grad(set_to_none=True)
    dens = [float(sum(int(head_mask(b.token_mask, b.segment_ids, k).sum()) for b in micro)) for k in range(3)]
    step_stats = critic_step(r, model, head, micro, total, 1, CPU) if whole else None
    lm, value = 0.0, 0.0
    for i, b in enumerate(micro):
        trunk = model.trunk(b.input_ids, b.segment_ids)
        wf, extra = algorithm_hooks(
            r, b, trunk, head, None, StepDiagnostics(), value_entries(micro, []),
            critic=(step_stats, i) if step_stats else None,
        )  # fmt: skip
        out = forward_backward(
            model, trunk, b.input_ids, b.token_mask, b.segment_ids, wf, [1.0, 0.5, 0.25], dens, extra_loss=extra
        )  # fmt: skip
        lm, value = lm + float(out.loss), value + float(out.extra)
    named = [*model.named_parameters(), *head.named_parameters("value.")]
    return {n: p.grad.clone() for n, p in named if p.grad is not None}, lm, value


@pytest.mark.parametrize("more", [(), ("algorithm.norm=none",), ("algorithm.value_trunk_grad=true",)])
def test_accumulated_step_trains_like_one_batch(more: tuple[str, ...]) -> None:
    model, full = tiny(), critic_batch()
    torch.manual_seed(1)
    head = ValueHead(32)
    with torch.no_grad():  # values that vary, so the TD errors (and the weights) do
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    halves = [rows(full, 0, 4), rows(full, 4, 8)]
    assert critic_step(recipe(*more), model, head, [full], total, 1, CPU) is None  # nothing to coordinate
    g_one, lm_one, v_one = step(model, head, [full], *more)
    g_two, lm_two, v_two = step(model, head, halves, *more)
    assert lm_two == pytest.approx(lm_one, rel=1e-6)
    assert v_two == pytest.approx(v_one, rel=1e-6)
    assert set(g_one) == set(g_two) and any(n.startswith("value.") for n in g_one)
    for name in g_one:
        assert_close(g_two[name], g_one[name], atol=2e-6, rtol=1e-5, msg=name)
    # The weights really vary (else this would compare uniform weights with themselves), and each half's own
    # statistics differ from the step's: the per-micro-batch weights would give another loss.
    trunk = model.trunk(full.input_ids, full.segment_ids)
    m = head_mask(full.token_mask, full.segment_ids, 1)
    wf, _ = algorithm_hooks(recipe(*more), full, trunk, head, None, StepDiagnostics(), 1.0)
    assert float(wf(1, torch.zeros(8, 12), m)[m].std()) > 0.05
    _, lm_own, _ = step(model, head, halves, *more, whole=False)
    assert lm_own != pytest.approx(lm_one, rel=1e-6)
