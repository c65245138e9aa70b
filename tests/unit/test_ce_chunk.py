"""`train.ce_chunk`: the chunked unembedding + CE gives the losses, gradients and statistics of the whole-sequence
path for every algorithm (float64, so that only the order of sums can differ), and really runs in chunks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import Recipe, load_recipe
from wmtp_studio.train.algorithms import StepDiagnostics, algorithm_hooks
from wmtp_studio.train.data import Batch
from wmtp_studio.train.loss import (
    WeightFn,
    forward_backward,
    head_ce,
    head_mask,
    head_targets,
    upfront_head_loss,
)
from wmtp_studio.train.model import MTPModel, ValueHead, build_tiny_hf
from wmtp_studio.train.reference import reference_ce
from wmtp_studio.train.rho1 import rho1_step_selection

ROOT = Path(__file__).resolve().parents[2]
V, S, CHUNK = 50, 12, 5  # 12 positions in chunks of 5, 5, 2: the last chunk is ragged
TOL = 1e-12


def recipe(name: str, *overrides: str) -> Recipe:
    extra = ["algorithm.reference=unused", "algorithm.cache=false"] if name == "rho1-wmtp" else []
    return load_recipe(
        ROOT / "recipes" / f"tiny-{name}.yaml",
        ["model.n_heads=3", "model.head_coefficients=[1.0,0.5,0.25]", *extra, *overrides],
        env={},
    )


def tiny(n: int, arch: str = "llama", kind: str = "transformer", seed: int = 0) -> MTPModel:
    torch.manual_seed(seed)
    model = MTPModel(build_tiny_hf(arch, V, 32, 2, 4, None, 64, {}), n_heads=n, head_kind=kind)
    with torch.no_grad():  # heads start as copies of head 0: make them differ
        for p in model.extra_heads.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.double()


def micro_batches() -> list[Batch]:
    """Two micro-batches of 3 rows: right padding, a packed row, correct and incorrect examples."""
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(0, V, (6, S), generator=g)
    seg = torch.tensor([[0] * 12, [0] * 9 + [-1] * 3, [0] * 5 + [1] * 7] * 2)  # (6, S)
    comp = (torch.arange(S) % 6 >= 2).expand(6, S) & (seg >= 0)  # prompts: the first 2 tokens of each 6
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0])[:, None].expand(6, S).clone()
    rewards[2, 5:] = 0.0  # row 2's second packed example is incorrect
    return [
        Batch(ids[i : i + 3], comp[i : i + 3], comp[i : i + 3], seg[i : i + 3], rewards[i : i + 3], None, 1)
        for i in (0, 3)
    ]


def one_step(
    r: Recipe, model: MTPModel, value_head: ValueHead | None, reference: torch.nn.Module | None
) -> tuple[list[float], torch.Tensor, dict[str, float], dict[str, torch.Tensor]]:
    """The micro-batch loop of `train_step` (without the optimiser): losses, stats, diagnostics, gradients."""
    micro = micro_batches()
    n, chunk = r.n_heads, r.train.ce_chunk
    dens = [float(sum(int(head_mask(b.token_mask, b.segment_ids, k).sum()) for b in micro)) for k in range(n)]
    for p in [*model.parameters(), *(value_head.parameters() if value_head else [])]:
        p.grad = None
    diag = StepDiagnostics()
    selection = rho1_step_selection(r, model, micro, reference, 1, torch.device("cpu"))
    losses, stats = [], []
    for i, b in enumerate(micro):
        trunk = model.trunk(b.input_ids, b.segment_ids)
        weights_for, extra = algorithm_hooks(
            r, b, trunk, value_head, reference, diag, 2.0, selection=selection[i] if selection else None
        )
        h = forward_backward(
            model, trunk, b.input_ids, b.token_mask, b.segment_ids, weights_for, r.head_coefficients, dens,
            extra_loss=extra, detail=True, ce_chunk=chunk, naive=r.train.naive_loss,
        )  # fmt: skip
        losses += [float(h.loss), float(h.extra)]
        stats.append(h.stats.double())
    named = [*model.named_parameters(), *(value_head.named_parameters("value.") if value_head else [])]
    grads = {name: p.grad.clone() for name, p in named if p.grad is not None}
    return losses, torch.cat(stats), diag.means(), grads


CASES = [
    ("ntp", ()),
    ("baseline-mtp", ()),
    ("baseline-mtp", ("train.naive_loss=true",)),
    ("critic-wmtp", ()),
    ("critic-wmtp", ("algorithm.value_trunk_grad=true",)),
    ("rho1-wmtp", ("algorithm.mode=select",)),
    ("rho1-wmtp", ("algorithm.mode=weighted",)),
]


@pytest.mark.parametrize(("name", "overrides"), CASES)
def test_chunked_ce_equals_whole_sequence(name: str, overrides: tuple[str, ...]) -> None:
    whole, chunked = recipe(name, *overrides), recipe(name, *overrides, f"train.ce_chunk={CHUNK}")
    assert (whole.train.ce_chunk, chunked.train.ce_chunk) == (None, CHUNK)
    model = tiny(whole.n_heads)
    torch.manual_seed(7)
    value_head = ValueHead(32) if name == "critic-wmtp" else None  # fp32: it reads h.float() by design
    reference = (
        build_tiny_hf("llama", V, 32, 2, 4, None, 64, {}).double().eval() if name == "rho1-wmtp" else None
    )
    base = one_step(whole, model, value_head, reference)
    got = one_step(chunked, model, value_head, reference)
    assert any(abs(x) > 0.1 for x in base[0])  # real losses, not zeros
    assert got[0] == pytest.approx(base[0], abs=TOL, rel=TOL)
    torch.testing.assert_close(got[1], base[1], atol=TOL, rtol=TOL)  # CE sums, hits, counts, weights
    assert got[2] == pytest.approx(
        base[2], abs=TOL, rel=TOL
    )  # excess loss, selected fraction, value loss, EV
    assert set(got[3]) == set(base[3]) and len(base[3]) > 0
    if not (name == "critic-wmtp" and not overrides):  # the default critic's value loss is all the trunk sees
        assert all(float(g.abs().max()) > 0 for g in base[3].values())
    for key, g in base[3].items():
        torch.testing.assert_close(got[3][key], g, atol=TOL, rtol=TOL, msg=key)


class LogitShapes(TorchDispatchMode):
    """Records the shape of every tensor an op makes whose last dimension is the vocabulary (logits and their
    gradients), in the forward and the backward alike."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor) and t.ndim == 3 and t.shape[-1] == V:
                self.shapes.append(tuple(t.shape))
        return out


@pytest.mark.parametrize(("arch", "kind"), [("llama", "transformer"), ("gpt2", "linear")])
def test_no_tensor_holds_a_whole_sequence_of_logits(arch: str, kind: str) -> None:
    """Chunked, neither the forward nor the backward makes a (B, S, V) tensor, only (B, <= chunk, V) ones, and the
    result equals the whole-sequence path, which does make them (so the recorder sees logits)."""
    model = tiny(2, arch, kind)
    x = micro_batches()[0].input_ids
    trunk = model.trunk(x)
    with LogitShapes() as forward:
        ce, hits = head_ce(model, 1, trunk, None, head_targets(x, 1), CHUNK)
    with LogitShapes() as backward:
        ce.sum().backward()
    assert {s[1] for s in forward.shapes} == {5, 2} and {s[1] for s in backward.shapes} == {5, 2}
    with torch.no_grad(), LogitShapes() as whole_path:
        whole, whole_hits = head_ce(model, 1, model.trunk(x), None, head_targets(x, 1), None)
    assert (3, S, V) in whole_path.shapes
    torch.testing.assert_close(ce.detach(), whole, atol=TOL, rtol=TOL)
    assert torch.equal(hits, whole_hits)


@pytest.mark.parametrize("bias", [False, True])
def test_weights_known_up_front_make_no_logits_in_the_backward(bias: bool) -> None:
    """With the coefficients known before the CE, the chunked pass makes each chunk's gradients as it computes its
    CE: the backward makes no logits at all (nothing recomputed), and the loss, CE, hits and gradients are those of
    the whole-sequence path."""
    model = tiny(2)
    if bias:  # a biased output layer (HF's lm_heads have none), untied from the input embedding
        torch.manual_seed(1)
        model.hf.set_output_embeddings(torch.nn.Linear(32, V, bias=True).double())
    x = micro_batches()[0].input_ids
    coef = torch.rand(3, S, generator=torch.Generator().manual_seed(5), dtype=torch.float64)  # (B, S)
    targets = head_targets(x, 1)
    with LogitShapes() as forward:
        loss, ce, hits = upfront_head_loss(model, 1, model.trunk(x), None, targets, coef, CHUNK)
    with LogitShapes() as backward:
        loss.backward()
    assert {s[1] for s in forward.shapes} == {5, 2} and backward.shapes == []
    chunked = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    whole, whole_ce, whole_hits = upfront_head_loss(model, 1, model.trunk(x), None, targets, coef, None)
    whole.backward()
    assert not ce.requires_grad and loss.item() == pytest.approx(whole.item(), abs=TOL, rel=TOL)
    torch.testing.assert_close(ce, whole_ce, atol=TOL, rtol=TOL)
    assert torch.equal(hits, whole_hits)
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(chunked) == set(grads) and ("hf.lm_head.bias" in grads) == bias
    for name, g in grads.items():
        torch.testing.assert_close(chunked[name], g, atol=TOL, rtol=TOL, msg=name)


def step_flops(weights_for: WeightFn, chunk: int | None) -> int:
    """Matmul FLOPs of one `forward_backward` (3 heads) on the first micro-batch, counted by torch."""
    model, b = tiny(3), micro_batches()[0]
    dens = [float(head_mask(b.token_mask, b.segment_ids, k).sum()) for k in range(3)]
    with FlopCounterMode(display=False) as flops:
        trunk = model.trunk(b.input_ids, b.segment_ids)
        forward_backward(
            model, trunk, b.input_ids, b.token_mask, b.segment_ids, weights_for, [1.0, 0.5, 0.25], dens,
            ce_chunk=chunk,
        )  # fmt: skip
    return int(flops.get_total_flops())


def test_chunked_ce_costs_a_recompute_only_when_the_weights_read_the_ce() -> None:
    """baseline-mtp's weights (known before the CE): chunked costs the matmuls of the whole-sequence path. Weights
    read from the CE (as rho1-wmtp's): one more unembedding per head, the backward's recompute of the logits."""
    r = recipe("baseline-mtp")
    known, _ = algorithm_hooks(r, micro_batches()[0], None, None, None, StepDiagnostics(), 1.0)  # type: ignore[arg-type]

    def reads_ce(_k: int, ce: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return m.float() * (ce >= 0)  # = 1 on valid entries, but only known once the CE is

    assert step_flops(known, CHUNK) == step_flops(known, None) > 0
    # 3 heads x one (B*S, D) x (D, V) matmul: 3 x 2 x (3 * 12) x 32 x 50 = 345,600
    assert step_flops(reads_ce, CHUNK) - step_flops(reads_ce, None) == 345_600


@pytest.mark.parametrize(("mode", "recomputed"), [("select", 0), ("weighted", 691_200)])
def test_rho1_select_over_a_step_recomputes_no_logits(mode: str, recomputed: int) -> None:
    """rho1 select chosen over the whole step (two micro-batches here) knows every weight before the training pass
    (its selection pass scored the CE), so chunked CE makes the gradients as it computes the CE: the step costs
    the matmuls of the whole-sequence one. rho1 weighted reads the CE inside the pass: the backward recomputes
    each chunk's logits, 3 heads x 2 micro-batches x 2 x (3 * 12) x 32 x 50 = 691,200 more. Either way the chunked
    reference skips each row's last position, which predicts nothing: 2 x 3 rows x 2 x 32 x 50 = 19,200 fewer."""
    model = tiny(3)
    reference = build_tiny_hf("llama", V, 32, 2, 4, None, 64, {}).double().eval()
    flops = []
    for chunk in ((), (f"train.ce_chunk={CHUNK}",)):
        r = recipe("rho1-wmtp", f"algorithm.mode={mode}", *chunk)
        with FlopCounterMode(display=False) as counter:
            one_step(r, model, None, reference)
        flops.append(counter.get_total_flops())
    assert flops[1] - flops[0] == recomputed - 19_200 and flops[0] > 0


def test_chunked_reference_ce_equals_whole() -> None:
    ref = build_tiny_hf("gpt2", V, 32, 2, 4, None, 64, {}).double().eval()
    b = micro_batches()[1]
    whole = reference_ce(ref, b.input_ids, b.segment_ids)
    for chunk in (1, 4, 11, 64):  # 11 = S - 1 positions predict: one chunk; 64 > S
        torch.testing.assert_close(
            reference_ce(ref, b.input_ids, b.segment_ids, chunk), whole, atol=TOL, rtol=TOL
        )
    assert float(whole[:, 0].abs().max()) == 0.0 and float(whole[:, 1:].min()) > 0


def test_chunked_ce_under_bf16_autocast_matches_the_whole_sequence() -> None:
    """bf16 autocast (the trainer's GPU default): the backward recomputes the logits under the forward's autocast
    state; CE and gradients agree with the whole-sequence path to bf16's precision (measured: 0 on CE, 0.85 % of
    the largest gradient entry; against fp32 gradients both paths err by 0.55 % in norm)."""
    torch.manual_seed(0)
    model = MTPModel(build_tiny_hf("llama", 300, 64, 2, 4, None, 64, {}), 2, "transformer")
    x = torch.randint(0, 300, (2, 40))
    out = []
    for chunk in (None, 7):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16):
            ce, _ = head_ce(model, 1, model.trunk(x), None, head_targets(x, 1), chunk)
        ce.mean().backward()
        assert ce.dtype == torch.float32
        out.append((ce.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (ce_a, g_a), (ce_b, g_b) = out
    torch.testing.assert_close(ce_b, ce_a, atol=1e-4, rtol=1e-4)
    assert set(g_a) == set(g_b) and len(g_a) > 10
    for name, g in g_a.items():
        assert g_b[name].dtype == g.dtype
        assert float((g_b[name] - g).abs().max()) <= 0.02 * float(g.abs().max()), name


def test_upfront_chunked_ce_under_bf16_autocast_matches_the_whole_sequence() -> None:
    """The same under bf16 autocast for the pass that makes the gradients in the forward (measured: 0 on CE, 0.83 %
    of the largest gradient entry)."""
    torch.manual_seed(0)
    model = MTPModel(build_tiny_hf("llama", 300, 64, 2, 4, None, 64, {}), 2, "transformer")
    x = torch.randint(0, 300, (2, 40))
    coef = torch.rand(2, 40) / 80  # (B, S)
    out = []
    for chunk in (None, 7):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16):
            loss, ce, _ = upfront_head_loss(model, 1, model.trunk(x), None, head_targets(x, 1), coef, chunk)
        loss.backward()
        assert ce.dtype == torch.float32
        out.append((ce, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    (ce_a, g_a), (ce_b, g_b) = out
    torch.testing.assert_close(ce_b, ce_a, atol=1e-4, rtol=1e-4)
    assert set(g_a) == set(g_b) and len(g_a) > 10
    for name, g in g_a.items():
        assert g_b[name].dtype == g.dtype
        assert float((g_b[name] - g).abs().max()) <= 0.02 * float(g.abs().max()), name


def test_a_non_linear_output_embedding_is_refused() -> None:
    model = tiny(2)
    model.hf.set_output_embeddings(torch.nn.Sequential(model.hf.get_output_embeddings()))
    x = micro_batches()[0].input_ids
    with pytest.raises(
        StudioError, match=r"train\.ce_chunk needs a linear output embedding, this model has Sequential"
    ):
        head_ce(model, 0, model.trunk(x), None, head_targets(x, 0), CHUNK)
