"""grad-wmtp (gradient-norm importance): hand-computed scores, running statistics and weights; the scores equal
autograd's gradient norms; weights carry no gradient; per-head backward = naive path; the running statistics do
not depend on gradient accumulation."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close
from torch.utils.flop_counter import FlopCounterMode

from tests.unit.test_rho1_select import batch_of_8, rows, tiny
from wmtp_studio.recipe import load_recipe
from wmtp_studio.tracking import allowed_params
from wmtp_studio.train.algorithms import StepDiagnostics, algorithm_hooks
from wmtp_studio.train.data import Batch
from wmtp_studio.train.grad import GradScores, grad_step_scores
from wmtp_studio.train.loss import EntryWeights, forward_backward, head_mask, head_targets
from wmtp_studio.train.model import MTPModel, build_tiny_hf
from wmtp_studio.train.weights import ema_update, grad_scores, grad_weights, masked_mean, score_sums

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
LN2 = math.log(2)


def recipe(*overrides: str):  # type: ignore[no-untyped-def]
    return load_recipe(
        ROOT / "recipes" / "tiny-grad-wmtp.yaml",
        ["model.n_heads=3", "model.head_coefficients=[1.0,0.5,0.25]", *overrides],
    )


# --------------------------------------------------------------------------- scores, by hand and by autograd


def test_logit_and_hidden_scores_by_hand() -> None:
    # logits (0, 0, ln 2): p = (1/4, 1/4, 1/2).
    # target 2: g = p - e_2 = (1/4, 1/4, -1/2), |g|^2 = 1/16 + 1/16 + 1/4 = 3/8, s = sqrt(0.375) = 0.61237
    # target 0: g = (-3/4, 1/4, 1/2), |g|^2 = 9/16 + 1/16 + 4/16 = 7/8, s = sqrt(0.875) = 0.93541
    logits = torch.tensor([[[0.0, 0.0, LN2], [0.0, 0.0, LN2]]])  # (1, 2, 3)
    targets = torch.tensor([[2, 0]])
    assert_close(grad_scores(logits, targets), torch.tensor([[math.sqrt(0.375), math.sqrt(0.875)]]))
    # hidden: W_out rows (1, 0), (0, 1), (1, 1) (V = 3, D = 2); W^T g = (g0 + g2, g1 + g2)
    # target 2: (1/4 - 1/2, 1/4 - 1/2) = (-1/4, -1/4), s = sqrt(1/8) = 0.35355
    # target 0: (-3/4 + 1/2, 1/4 + 1/2) = (-1/4, 3/4), s = sqrt(1/16 + 9/16) = sqrt(5/8) = 0.79057
    w_out = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert_close(grad_scores(logits, targets, w_out), torch.tensor([[math.sqrt(1 / 8), math.sqrt(5 / 8)]]))


def test_scores_are_autograds_gradient_norms() -> None:
    # The closed forms against torch's own backward of the CE, per entry (the CE of one entry depends on
    # that entry's logits only, so the gradient of the summed CE holds every entry's own gradient).
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8, requires_grad=True)
    w_out = torch.randn(11, 8)
    logits = hidden @ w_out.T  # (2, 5, 11), as the unembedding computes it
    targets = torch.randint(0, 11, (2, 5))
    logits.retain_grad()
    F.cross_entropy(logits.reshape(10, 11), targets.reshape(10), reduction="sum").backward()
    assert logits.grad is not None and hidden.grad is not None
    assert_close(grad_scores(logits.detach(), targets), logits.grad.norm(dim=-1))
    assert_close(grad_scores(logits.detach(), targets, w_out), hidden.grad.norm(dim=-1))


# --------------------------------------------------------------------------- running statistics and weights


def test_ema_update_by_hand() -> None:
    # First step (no history): N = 4, sum s = 2, sum s^2 = 1.5: mean 0.5, var 1.5 / 4 - 0.25 = 0.125.
    first = ema_update(None, (4.0, 2.0, 1.5), 0.9)
    assert first == pytest.approx((0.5, 0.125))
    # Next step: N = 2, sum 2, sum sq 2.5: mean 1, var 1.25 - 1 = 0.25;
    # mu = 0.9 * 0.5 + 0.1 * 1 = 0.55, var = 0.9 * 0.125 + 0.1 * 0.25 = 0.1375.
    assert ema_update(first, (2.0, 2.0, 2.5), 0.9) == pytest.approx((0.55, 0.1375))
    # A step without valid entries, or with a non-finite score, changes nothing.
    assert ema_update(first, (0.0, 0.0, 0.0), 0.9) == first
    assert ema_update(first, (3.0, math.nan, 1.0), 0.9) == first
    assert ema_update(None, (0.0, 0.0, 0.0), 0.9) is None


def test_score_sums_by_hand() -> None:
    # valid scores 1, 2, 3 (the 9 is masked): N = 3, sum 6, sum sq 1 + 4 + 9 = 14
    s = torch.tensor([[1.0, 2.0], [3.0, 9.0]])
    m = torch.tensor([[True, True], [True, False]])
    assert score_sums(s, m).tolist() == [3.0, 6.0, 14.0]


def test_grad_weights_by_hand_and_detached() -> None:
    # scores (1, 2, 3, masked 7), mu = 2, sigma = 1: z = (-1, 0, 1); beta 1: exp z = (0.3679, 1, 2.7183);
    # clip [0.5, 2]: (0.5, 1, 2); mean 3.5 / 3 = 1.16667: w = (0.42857, 0.85714, 1.71429), 0 where masked.
    score = torch.tensor([[1.0, 2.0, 3.0, 7.0]], requires_grad=True)
    m = torch.tensor([[True, True, True, False]])
    w = grad_weights(score, m, torch.tensor(2.0), torch.tensor(1.0), w_min=0.5, w_max=2.0)
    assert_close(w, torch.tensor([[0.5, 1.0, 2.0, 0.0]]) / (3.5 / 3))
    assert not w.requires_grad  # weights never carry gradient
    # beta 2, no clipping in range, mean_one off: w = exp(z / 2) = (0.60653, 1, 1.64872)
    w2 = grad_weights(score, m, torch.tensor(2.0), torch.tensor(1.0), beta=2.0, mean_one=False)
    assert_close(w2, torch.tensor([[math.exp(-0.5), 1.0, math.exp(0.5), 0.0]]))
    # sigma ~ 0 (no spread yet, or no history): z = 0, w = 1
    assert_close(grad_weights(score, m, torch.tensor(2.0), torch.tensor(0.0)), m.float())


# --------------------------------------------------------------------------- inside the trainer's per-head pass
# (the tiny model, batch and row slices of rho1 select's tests: grad-wmtp ignores the batch's cached reference CE)


def total(v: torch.Tensor) -> list[float]:
    return [float(x) for x in v.tolist()]


def step(
    model: MTPModel,
    micro: list[Batch],
    score: str,
    naive: bool,
    ema: list | None,
    *more: str,
    chunk: int | None = None,
) -> tuple:  # type: ignore[type-arg]
    """One step's gradients, loss and updated running statistics, as train_step computes them."""
    r = recipe(f"algorithm.score={score}", *more)
    model.zero_grad(set_to_none=True)
    dens = [float(sum(int(head_mask(b.token_mask, b.segment_ids, k).sum()) for b in micro)) for k in range(3)]
    scores = grad_step_scores(r, model, micro, ema, total, 1, CPU)
    assert isinstance(scores, GradScores)
    loss = 0.0
    for i, b in enumerate(micro):
        trunk = model.trunk(b.input_ids, b.segment_ids)
        wf, extra = algorithm_hooks(r, b, trunk, None, None, StepDiagnostics(), 1.0, scores=(scores, i))
        assert extra is None
        out = forward_backward(
            model, trunk, b.input_ids, b.token_mask, b.segment_ids, wf, [1.0, 0.5, 0.25], dens,
            score_for=scores.score_fn, naive=naive, ce_chunk=chunk,
        )  # fmt: skip
        loss += float(out.loss)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return grads, loss, scores.updated(total(scores.sums.flatten()))


@pytest.mark.parametrize("score", ["logit", "hidden"])
def test_chunked_ce_scores_and_trains_like_the_whole_sequence(score: str) -> None:
    # train.ce_chunk: the score comes from each chunk's gradient in the pass that makes it
    model, b = tiny(), batch_of_8()
    first = step(model, [b], score, naive=False, ema=None)[2]
    g_all, loss_all, ema_all = step(model, [b], score, False, first)
    g_chk, loss_chk, ema_chk = step(model, [b], score, False, first, chunk=5)
    assert loss_chk == pytest.approx(loss_all, rel=1e-6)
    for a, c in zip(ema_all, ema_chk, strict=True):
        assert a == pytest.approx(c, rel=1e-9)
    for name in g_all:
        assert_close(g_chk[name], g_all[name], atol=2e-6, rtol=1e-5, msg=name)


@pytest.mark.parametrize("score", ["logit", "hidden"])
def test_chunked_ce_makes_the_scores_and_gradients_in_one_pass(score: str) -> None:
    """Each chunk's score is the norm of the gradient the chunked pass makes anyway (softmax - onehot, or its
    product with W, which is grad_h's matmul), so no logits are recomputed and no extra pass scores them: the
    chunked step costs the matmuls of the whole-sequence one, and with `score: hidden` one (B*S, V) x (V, D)
    matmul per head less (the whole-sequence path multiplies by W once for the score, once for grad_h)."""
    model, b = tiny(), batch_of_8()
    first = step(model, [b], score, naive=False, ema=None)[2]
    flops = {}
    for chunk in (None, 5):
        with FlopCounterMode(display=False) as counter:
            step(model, [b], score, False, first, chunk=chunk)
        flops[chunk] = counter.get_total_flops()
    # 3 heads x 2 x (8 * 12 positions) x 32 (D) x 50 (V) = 921,600; was 2 more of those per head when chunked
    assert flops[None] - flops[5] == (921_600 if score == "hidden" else 0) and flops[5] > 0


@pytest.mark.parametrize("score", ["logit", "hidden"])
def test_per_head_backward_equals_naive(score: str) -> None:
    model, b = tiny(), batch_of_8()
    first = step(model, [b], score, naive=False, ema=None)[2]  # the statistics of a first step on this batch
    ema = [(first[0][0] + 1e-3, first[0][1]), first[1], None]  # some history; head 2 has none (w = 1)
    g_seq, loss_seq, ema_seq = step(model, [b], score, naive=False, ema=ema)
    g_nai, loss_nai, ema_nai = step(model, [b], score, naive=True, ema=ema)
    assert loss_seq == pytest.approx(loss_nai, rel=1e-6)
    assert set(g_seq) == set(g_nai) == {n for n, _ in model.named_parameters()}
    for name in g_seq:
        assert_close(g_seq[name], g_nai[name], atol=2e-6, rtol=1e-5, msg=name)
    assert ema_seq == ema_nai
    # The weights really differ from 1 (else this would compare plain MTP with itself).
    r = recipe(f"algorithm.score={score}")
    scores = grad_step_scores(r, model, [b], ema, total, 1, CPU)
    assert scores is not None
    trunk = model.trunk(b.input_ids)
    m = head_mask(b.token_mask, b.segment_ids, 1)
    w_out = model.hf.get_output_embeddings().weight
    score = scores.score_for(1, model.head_logits(1, trunk).detach(), head_targets(b.input_ids, 1), w_out)
    w = scores.weights_for(1, score, m)
    assert float(w[m].std()) > 0.05


def test_first_step_statistics_and_accumulation_independence() -> None:
    model, full = tiny(), batch_of_8()
    halves = [rows(full, 0, 4), rows(full, 4, 8)]
    g_one, loss_one, ema_one = step(model, [full], "logit", False, None, "algorithm.mean_one=false")
    g_two, loss_two, ema_two = step(model, halves, "logit", False, None, "algorithm.mean_one=false")
    # The first step's statistics are its own: the EMA starts at the batch mean and population variance.
    with torch.no_grad():
        trunk = model.trunk(full.input_ids, full.segment_ids)
        for k in range(3):
            m = head_mask(full.token_mask, full.segment_ids, k)
            s = grad_scores(model.head_logits(k, trunk), head_targets(full.input_ids, k))[m].double()
            assert ema_one[k] == pytest.approx((float(s.mean()), float(s.var(unbiased=False))), rel=1e-6)
    # grad_accum 2 x batch 4 = one batch of 8: same statistics, so the same weights, loss and gradients.
    for a, b in zip(ema_one, ema_two, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert loss_two == pytest.approx(loss_one, rel=1e-6)
    for name in g_one:
        assert_close(g_two[name], g_one[name], atol=2e-6, rtol=1e-5, msg=name)
    # With mean_one (the default) the halves are scored before the step and their weights divided by the mean
    # over both, as critic-wmtp's and grpo-wmtp's: the same loss and gradients again (each half rescaled to its
    # own mean, the loss differed by 3.7e-4).
    g1, l1, e1 = step(model, [full], "logit", False, ema_one)
    g2, l2, e2 = step(model, halves, "logit", False, ema_one)
    for a, b in zip(e1, e2, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert l2 == pytest.approx(l1, rel=1e-6)
    for name in g1:
        assert_close(g2[name], g1[name], atol=2e-6, rtol=1e-5, msg=name)
    # The weights: mean 1 over the step's valid entries of each head, not over each half's.
    scores = grad_step_scores(recipe(), model, halves, ema_one, total, 1, CPU)
    assert scores is not None and scores.score_fn is None  # scored already: the training pass does not score
    for k in range(3):
        ms = [head_mask(h.token_mask, h.segment_ids, k) for h in halves]
        ws = [scores.weights(i).before_ce(k, m) for i, m in enumerate(ms)]  # type: ignore[union-attr]
        means = [float(w[m].mean()) for w, m in zip(ws, ms, strict=True)]
        assert float(torch.cat([w[m] for w, m in zip(ws, ms, strict=True)]).mean()) == pytest.approx(
            1.0, abs=1e-6
        )
        assert abs(means[0] - 1.0) > 1e-4, means  # the halves' own means are not 1
    # mean_one_over: micro-batch rescales each half to its own mean, scored in the pass that trains on it: the
    # loss differs by the ratio of the halves' weight means (no extra forward).
    _, l3, e3 = step(model, halves, "logit", False, ema_one, "algorithm.mean_one_over=micro-batch")
    for a, b in zip(e1, e3, strict=True):
        assert a == pytest.approx(b, rel=1e-5)
    assert l3 == pytest.approx(l1, rel=1e-3) and l3 != pytest.approx(l1, rel=1e-5)
    r = recipe("algorithm.mean_one_over=micro-batch")
    assert grad_step_scores(r, model, halves, ema_one, total, 1, CPU).score_fn is not None  # type: ignore[union-attr]


def test_mlflow_params_carry_the_grad_section() -> None:
    # The whole algorithm section is allow-listed: every grad-wmtp field becomes a param with no list to keep.
    params = allowed_params(recipe("algorithm.score=hidden", "algorithm.beta=0.5"))
    assert {k: v for k, v in params.items() if k.startswith("algorithm.")} == {
        "algorithm.name": "grad-wmtp",
        "algorithm.score": "hidden",
        "algorithm.momentum": "0.99",
        "algorithm.beta": "0.5",
        "algorithm.w_min": "0.1",
        "algorithm.w_max": "5.0",
        "algorithm.norm": "zscore",
        "algorithm.mean_one": "True",
        "algorithm.mean_one_over": "step",
    }


@pytest.mark.parametrize("score", ["logit", "hidden"])
def test_one_pass_scores_under_bf16_autocast_match_the_whole_sequence(score: str) -> None:
    """bf16 autocast (the trainer's GPU default): weights read from each entry's score (here w = s / mean s) give
    the whole-sequence path's loss, weights and gradients to bf16's precision when the chunked pass makes the
    score (every gradient within 2 % of its largest entry)."""
    torch.manual_seed(0)
    model = MTPModel(build_tiny_hf("llama", 300, 64, 2, 4, None, 64, {}), 2, "transformer")
    with torch.no_grad():  # confident logits, so that the scores (and the weights) spread
        model.hf.get_output_embeddings().weight.mul_(6.0)
    x = torch.randint(0, 300, (2, 40))
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, 30:] = False
    dens = [float(head_mask(mask, None, k).sum()) for k in range(2)]

    def score_for(_k: int, logits: torch.Tensor, t: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return grad_scores(logits, t, w if score == "hidden" else None)

    def full(_k: int, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.where(m, s / masked_mean(s, m), torch.zeros_like(s))

    weights = EntryWeights(score, full, lambda _k, s, m: s * m, lambda _k, _s, m, u: masked_mean(u, m))  # type: ignore[arg-type]
    out = []
    for chunk in (None, 7):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16):
            stats = forward_backward(
                model, model.trunk(x), x, mask, None, weights, [1.0, 0.5], dens, score_for=score_for,
                ce_chunk=chunk, detail=True,
            )  # fmt: skip
        out.append((stats, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (a, g_a), (b, g_b) = out
    assert float(b.loss) == pytest.approx(float(a.loss), rel=1e-3)
    for wa, wb in zip(a.weights, b.weights, strict=True):  # the weights themselves: not all 1
        assert float(wa.max()) > 1.05
        assert_close(wb, wa, atol=1e-2, rtol=1e-2)
    assert set(g_a) == set(g_b) and len(g_a) > 10
    for name, g in g_a.items():
        assert float((g_b[name] - g).abs().max()) <= 0.02 * float(g.abs().max()), name
