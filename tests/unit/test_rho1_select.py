"""rho1-wmtp `select` over gradient accumulation (METHOD.md): the top-`ratio` threshold covers the whole optimiser
step, so grad_accum 2 x batch 4 keeps exactly the tokens, and gives the gradients, of one batch of 8."""

from __future__ import annotations

from pathlib import Path

import torch
from torch.testing import assert_close

from wmtp_studio.recipe import load_recipe
from wmtp_studio.train.algorithms import StepDiagnostics, algorithm_hooks
from wmtp_studio.train.data import Batch
from wmtp_studio.train.loss import forward_backward, head_mask, head_targets, token_ce
from wmtp_studio.train.model import MTPModel, build_tiny_hf
from wmtp_studio.train.rho1 import rho1_step_selection
from wmtp_studio.train.weights import excess_loss, rho1_weights

ROOT = Path(__file__).resolve().parents[2]
RECIPE = load_recipe(
    ROOT / "recipes" / "tiny-rho1-wmtp.yaml",
    ["model.n_heads=3", "model.head_coefficients=[1.0,0.5,0.25]", "algorithm.reference=unused"],
)
CPU = torch.device("cpu")


def tiny() -> MTPModel:
    torch.manual_seed(0)
    model = MTPModel(build_tiny_hf("llama", 50, 32, 2, 4, None, 64, {}), n_heads=3, head_kind="transformer")
    with torch.no_grad():
        for p in model.extra_heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def batch_of_8() -> Batch:
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, 50, (8, 12), generator=g)
    lengths = [12, 9, 12, 7, 11, 12, 10, 8]  # different completions, right-padded
    seg = torch.tensor([[0 if j < n else -1 for j in range(12)] for n in lengths])
    comp = (torch.arange(12) >= 3).expand(8, 12) & (seg >= 0)
    ref = torch.rand(8, 12, generator=g) * 4  # a cached CE^ref
    return Batch(ids, comp.clone(), comp.clone(), seg, torch.ones(8, 12), ref, int((seg >= 0).sum()))


def rows(b: Batch, lo: int, hi: int) -> Batch:
    assert b.ref_ce is not None
    return Batch(
        b.input_ids[lo:hi],
        b.token_mask[lo:hi],
        b.completion_mask[lo:hi],
        b.segment_ids[lo:hi],
        b.rewards[lo:hi],
        b.ref_ce[lo:hi],
        int((b.segment_ids[lo:hi] >= 0).sum()),
    )


@torch.no_grad()
def kept_in_one_batch(model: MTPModel, b: Batch, k: int) -> torch.Tensor:
    assert b.ref_ce is not None
    ce = token_ce(model.head_logits(k, model.trunk(b.input_ids)), head_targets(b.input_ids, k))
    m = head_mask(b.token_mask, b.segment_ids, k)
    return rho1_weights(excess_loss(ce, b.ref_ce, k), m, head=k, ratio=0.6).bool()


def test_accumulated_selection_keeps_exactly_what_one_batch_keeps() -> None:
    model, full = tiny(), batch_of_8()
    micro = [rows(full, 0, 4), rows(full, 4, 8)]
    selection = rho1_step_selection(RECIPE, model, micro, None, 1, CPU)
    assert selection is not None
    assert all(s.kept[0] is None for s in selection)  # keep_head0
    for k in (1, 2):
        want = kept_in_one_batch(model, full, k)
        got = torch.cat([s.kept[k] for s in selection])  # type: ignore[misc]
        assert torch.equal(got, want)
        n = int(head_mask(full.token_mask, full.segment_ids, k).sum())
        assert int(want.sum()) == round(0.6 * n)
        assert selection[0].scale[k] == n / round(0.6 * n)
    # Per micro-batch (the old behaviour) the two halves keep another set: 0.6 of each half's own entries.
    half = [kept_in_one_batch(model, b, 1) for b in micro]
    assert not torch.equal(torch.cat(half), kept_in_one_batch(model, full, 1))


def grads(model: MTPModel, micro: list[Batch], accumulated: bool) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    dens = [float(sum(int(head_mask(b.token_mask, b.segment_ids, k).sum()) for b in micro)) for k in range(3)]
    selection = rho1_step_selection(RECIPE, model, micro, None, 1, CPU) if accumulated else None
    for i, b in enumerate(micro):
        trunk = model.trunk(b.input_ids)
        sel = selection[i] if selection else None
        wf, _ = algorithm_hooks(RECIPE, b, trunk, None, None, StepDiagnostics(), 1.0, selection=sel)
        forward_backward(model, trunk, b.input_ids, b.token_mask, b.segment_ids, wf, [1.0, 0.5, 0.25], dens)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_accumulated_gradients_equal_one_batch_of_8() -> None:
    model, full = tiny(), batch_of_8()
    one = grads(model, [full], accumulated=False)  # one micro-batch: selected inside the single pass
    two = grads(model, [rows(full, 0, 4), rows(full, 4, 8)], accumulated=True)
    assert one.keys() == two.keys()
    for name in one:
        assert_close(two[name], one[name], atol=2e-6, rtol=1e-5, msg=name)
