"""grpo-wmtp (DeepSeekMath GRPO advantages as token weights): hand-computed advantages and weights, detached
weights, groups from labelled data, and the per-head backward equal to the naive path with grpo's weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from tests.unit.test_loss import COEFS, tiny_mtp
from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import load_recipe
from wmtp_studio.recipe_algorithms import GRPOConfig
from wmtp_studio.train import grpo, grpo_refresh
from wmtp_studio.train.algorithms import StepDiagnostics, algorithm_hooks, grpo_step
from wmtp_studio.train.data import Encoded, Example, collate
from wmtp_studio.train.loss import forward_backward, head_mask, weighted_mtp_loss
from wmtp_studio.train.weights import group_advantages, grpo_weights

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
TOL = {"atol": 1e-5, "rtol": 1e-5}

# Groups used below (eps = 1e-4):
#   A = [1, 0, 0, 1]: mean 0.5, population std 0.5 -> A = +-0.5 / 0.5001 = +-0.99980004
#       (the sample std sqrt(1/3) = 0.57735 would give +-0.86588: the test tells them apart)
#   B = [1, 0, 0]: mean 1/3, population var (1/3)(2/3)^2 + (2/3)(1/3)^2 = 2/9, std 0.47140452
#       -> A(1) = (2/3) / 0.47150452 = 1.41391363, A(0) = -(1/3) / 0.47150452 = -0.70695681
#   C = [1, 1] and D = [0]: zero variance -> A = 0, no signal
A_POS, B_POS, B_NEG = 0.99980004, 1.41391363, -0.70695681


def test_group_advantages_by_hand() -> None:
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 0, 0, 1, 1, 0])
    group = torch.tensor([0, 0, 0, 0, 1, 1, 1, 2, 2, 3])
    adv, signal = group_advantages(rewards, group, eps=1e-4)
    expected = [A_POS, -A_POS, -A_POS, A_POS, B_POS, B_NEG, B_NEG, 0, 0, 0]
    assert_close(adv, torch.tensor(expected), **TOL)
    assert signal.tolist() == [True] * 7 + [False] * 3


def test_grpo_weights_by_hand() -> None:
    # row 0: a completion of group A with R = 1 (A = 0.9998); row 1: group B, R = 0 (A = -0.70696);
    # row 2: group C (no signal). Three valid entries per row, the last position of each row is not valid.
    adv = torch.tensor([[A_POS] * 4, [B_NEG] * 4, [0.0] * 4])
    signal = torch.tensor([[True] * 4, [True] * 4, [False] * 4])
    mask = torch.tensor([[True, True, True, False]] * 3)
    w = grpo_weights(adv, signal, mask, beta=1.0, w_min=0.1, w_max=5.0, mean_one=False)
    # exp(0.9998) = 2.71773834, exp(-0.70696) = 0.49314264; no signal -> 0; invalid -> 0
    assert_close(w, torch.tensor([[2.71773834] * 3 + [0], [0.49314264] * 3 + [0], [0.0] * 4]), **TOL)
    w1 = grpo_weights(adv, signal, mask, beta=1.0, w_min=0.1, w_max=5.0)
    # mean over the 9 valid entries: (3 * 2.71773834 + 3 * 0.49314264 + 3 * 0) / 9 = 1.07029366
    # -> 2.71773834 / 1.07029366 = 2.53924548, 0.49314264 / 1.07029366 = 0.46075452
    assert_close(w1, torch.tensor([[2.53924548] * 3 + [0], [0.46075452] * 3 + [0], [0.0] * 4]), **TOL)
    assert float(w1[mask].mean()) == pytest.approx(1.0)
    # beta 0.5 and the clip: exp(2 * 0.9998) = 7.3861 -> 5; exp(2 * -0.70696) = 0.24319 (inside [0.1, 5])
    w2 = grpo_weights(adv, signal, mask, beta=0.5, w_min=0.1, w_max=5.0, mean_one=False)
    assert_close(w2[:2, 0], torch.tensor([5.0, 0.24318966]), **TOL)
    # a batch without any signal weighs 0 everywhere (no NaN from the mean-1 rescale)
    none = grpo_weights(adv, torch.zeros_like(signal), mask)
    assert torch.equal(none, torch.zeros_like(none))


def test_grpo_weights_are_detached_and_non_negative() -> None:
    adv = torch.tensor([[-3.0, -1.0, 0.5, 2.0]], requires_grad=True)
    signal = torch.ones(1, 4, dtype=torch.bool)
    mask = torch.ones(1, 4, dtype=torch.bool)
    for norm in ("none", "zscore"):
        w = grpo_weights(adv, signal, mask, norm=norm, w_min=0.0)
        assert not w.requires_grad and w.grad_fn is None
        assert bool((w >= 0).all())
    # zscore: A = [-3, -1, 0.5, 2], mean -0.375, population std sqrt((2.625^2 + 0.625^2 + 0.875^2 + 2.375^2) / 4)
    # = sqrt((6.890625 + 0.390625 + 0.765625 + 5.640625) / 4) = sqrt(3.421875) = 1.84983;
    # z(2) = 2.375 / 1.84983 = 1.28390 -> exp = 3.61070
    z = grpo_weights(adv, signal, mask, norm="zscore", mean_one=False)
    assert float(z[0, 3]) == pytest.approx(3.61070, rel=1e-4)


def test_groups_are_the_completions_of_one_prompt() -> None:
    examples = [
        Example("p1", "c", 0, ("assert 1",), "t1/bad"),
        Example("p2", "b", 1, ("assert 2",), "t2"),
        Example("p1", "a", 1, ("assert 1",), "t1"),
        Example("p3", "d", 0, ("assert 3",), "t3"),
    ]
    # p1: [0, 1] -> A = -+0.5 / 0.5001; p2 [1] and p3 [0]: single completions, no signal
    assert grpo.group_advantages_of(examples, 1e-4) == pytest.approx([-0.99980004, None, 0.99980004, None])
    stats = grpo.group_stats(examples)
    # 3 groups, 2 without variance; mean reward 2/4; mean population std (0.5 + 0 + 0) / 3
    assert stats == pytest.approx(
        {
            "groups": 3,
            "zero_var_groups": 2,
            "zero_var_fraction": 2 / 3,
            "reward_mean": 0.5,
            "reward_std": 1 / 6,
        }
    )
    groups = grpo.offline_groups(examples)
    # one per prompt in data order, the correct one where there is one (a refresh's samples take its id)
    assert [(e.prompt, e.id) for e in groups.pool] == [("p1", "t1"), ("p2", "t2"), ("p3", "t3")]
    assert groups.made_at == -1
    assert grpo_refresh.refresh_prompts(groups.pool, 2, 0, 6) == grpo_refresh.refresh_prompts(
        groups.pool, 2, 0, 6
    )
    assert len(grpo_refresh.refresh_prompts(groups.pool, 2, 0, 6)) == 2


def test_a_recipe_without_mixed_groups_is_refused(tmp_path: Path) -> None:
    from wmtp_studio.train.setup import setup

    run = tmp_path / "r"
    run.mkdir()
    recipe = load_recipe(
        RECIPES / "tiny-grpo-wmtp.yaml",
        ["data.generated.incorrect_fraction=0.0", "data.generated.num_train=50", "algorithm.refresh_steps=0"],
    )
    (run / "recipe.json").write_text(recipe.canonical_json())
    with pytest.raises(StudioError, match="grpo-wmtp needs groups with mixed rewards"):
        setup(run, None)


@pytest.mark.parametrize(("arch", "kind"), [("llama", "transformer"), ("gpt2", "linear")])
def test_per_head_backward_equals_naive_with_grpo_weights(arch: str, kind: str) -> None:
    recipe = load_recipe(RECIPES / "tiny-grpo-wmtp.yaml")
    assert isinstance(recipe.algorithm, GRPOConfig)
    model, _ = tiny_mtp(arch, kind)
    F, T = False, True
    encoded = [
        Encoded([5, 6, 7, 8, 9, 10], [F, F, T, T, T, T], 1.0, advantage=A_POS),
        Encoded([11, 12, 13, 14], [F, T, T, T], 0.0, advantage=B_NEG),
        Encoded([15, 16, 17, 18, 19], [F, F, T, T, T], 1.0, advantage=None),  # its group has no signal
    ]
    batch = collate([[(0, 0, 6)], [(1, 0, 4), (2, 0, 5)]], encoded, recipe.train, 0, None)  # row 1 packs two
    x, tm, seg = batch.input_ids, batch.token_mask, batch.segment_ids
    dens = [float(head_mask(tm, seg, k).sum()) for k in range(3)]

    def run(naive: bool) -> tuple[list[torch.Tensor], float, dict[str, torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        trunk = model.trunk(x, seg)
        weights_for, extra = algorithm_hooks(recipe, batch, trunk, None, None, StepDiagnostics(), 1.0)
        assert extra is None
        stats = forward_backward(model, trunk, x, tm, seg, weights_for, COEFS, dens, naive=naive, detail=True)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return stats.weights, float(stats.loss), grads

    w_seq, loss_seq, g_seq = run(naive=False)
    w_nai, loss_nai, g_nai = run(naive=True)
    assert loss_seq == pytest.approx(loss_nai, rel=1e-5, abs=1e-5)
    assert set(g_seq) == set(g_nai) == {n for n, _ in model.named_parameters()}
    for name in g_seq:
        assert_close(g_seq[name], g_nai[name], atol=1e-5, rtol=1e-5, msg=name)
    for k, w in enumerate(w_seq):
        m = head_mask(tm, seg, k)
        assert not w.requires_grad and bool((w >= 0).all())
        assert torch.equal(w, w_nai[k])
        assert float(w[m].mean()) == pytest.approx(1.0, rel=1e-5)  # mean 1 over the head's valid entries
        assert float(w[1, 4:].abs().sum()) == 0.0  # the example without signal weighs 0
        # head k on row 0 (A = 0.9998) and row 1's first example (A = -0.70696): exp(A) = 2.71774, 0.49314,
        # both divided by the same mean, so their ratio is exp(0.9998 + 0.70696) = 5.51108
        r0, r1 = w[0][m[0]], w[1, :4][m[1, :4]]
        if len(r0) and len(r1):
            assert float(r0[0] / r1[0]) == pytest.approx(5.51108, rel=1e-4)
    mask = torch.stack([head_mask(tm, seg, k) for k in range(3)], dim=2)
    with torch.no_grad():
        ref = weighted_mtp_loss(model(x, seg), x, mask, torch.stack(w_seq, dim=2), COEFS)
    assert float(ref) == pytest.approx(loss_seq, rel=1e-5, abs=1e-5)


def test_only_targets_inside_the_completion_are_weighted_when_the_prompt_is_trained_too() -> None:
    recipe = load_recipe(RECIPES / "tiny-grpo-wmtp.yaml", ["train.loss_on=all"])
    F, T = False, True
    encoded = [
        Encoded([5, 6, 7, 8, 9], [F, F, F, T, T], 1.0, advantage=A_POS),
        Encoded([5, 6, 7, 10, 11], [F, F, F, T, T], 0.0, advantage=-A_POS),
    ]
    batch = collate([0, 1], encoded, recipe.train, 0, None)
    weights_for, _ = algorithm_hooks(recipe, batch, None, None, None, StepDiagnostics(), 1.0)  # type: ignore[arg-type]
    m = head_mask(batch.token_mask, batch.segment_ids, 0)
    assert m.tolist() == [[T, T, T, T, F]] * 2  # loss_on all: prompt targets x_1, x_2 are valid entries too
    w = weights_for(0, torch.zeros(2, 5), m)
    # valid entries t = 0..3; targets x_3, x_4 (t = 2, 3) lie in the completion: exp(+-0.9998) = 2.71774, 0.36795;
    # mean over the 8 valid entries (2 * 2.71774 + 2 * 0.36795) / 8 = 0.77142 -> 3.52302, 0.47698
    assert_close(
        w, torch.tensor([[0, 0, 3.52302, 3.52302, 0], [0, 0, 0.47698, 0.47698, 0]]), atol=1e-4, rtol=1e-4
    )


def test_an_epoch_budget_gives_grpo_the_steps_of_baseline(tmp_path: Path) -> None:
    from wmtp_studio.train.setup import setup

    steps = {}
    for name in ("baseline-mtp", "grpo-wmtp"):
        run = tmp_path / name
        run.mkdir()
        recipe = load_recipe(
            RECIPES / f"tiny-{name}.yaml",
            ["data.generated.num_train=200", "train.epochs=2", "train.steps=null", "train.batch_size=8"],
        )
        (run / "recipe.json").write_text(recipe.canonical_json())
        steps[name] = setup(run, None).total_steps
    # 200 problems, 10 held out (val_fraction 0.05): 190 correct completions x 2 epochs / 8 = 47.5 -> 48 steps
    assert steps == {"baseline-mtp": 48, "grpo-wmtp": 48}


def test_refresh_slices_depend_on_prompt_and_group_counts_only() -> None:
    """Slice j is one generate call seeded with (seed, step, j), whatever process samples it."""
    cut = grpo_refresh.slices

    def spans(prompts: int, group: int) -> list[tuple[int, int]]:
        return [(part.start, part.stop) for part in cut(prompts, group)]

    # 8 prompts, G = 4: per = max(1, min(64 // 4 = 16, ceil(8 / 8) = 1)) = 1 -> 8 slices of 4 samples
    assert spans(8, 4) == [(i, i + 1) for i in range(8)]
    # 100 prompts, G = 4: per = min(16, ceil(100 / 8) = 13) = 13 -> 7 x 13 = 91, then 9
    assert spans(100, 4) == [(13 * i, 13 * i + 13) for i in range(7)] + [(91, 100)]
    # 300 prompts, G = 8: per = min(64 // 8 = 8, ceil(300 / 8) = 38) = 8 -> 64 samples a call, 37 x 8 = 296, then 4
    assert spans(300, 8)[-2:] == [(288, 296), (296, 300)] and len(spans(300, 8)) == 38
    # G = 128 > 64: one prompt a call; no prompts: no slice
    assert spans(3, 128) == [(0, 1), (1, 2), (2, 3)] and spans(0, 4) == []
    seeds = {grpo_refresh.slice_seed(0, 6, j) for j in range(8)}
    assert len(seeds) == 8 and grpo_refresh.slice_seed(0, 6, 3) == grpo_refresh.slice_seed(0, 6, 3)
    assert grpo_refresh.slice_seed(0, 6, 3) != grpo_refresh.slice_seed(0, 9, 3)
    # a refresh under fsdp is a valid recipe
    assert load_recipe(RECIPES / "tiny-grpo-wmtp.yaml", ["train.parallel=fsdp"]).train.parallel == "fsdp"


@pytest.mark.parametrize("norm", ["none", "zscore"])
def test_a_step_of_two_micro_batches_weighs_as_one_batch(norm: str) -> None:
    # grad_accum 2 x 2 rows: the z-score and the mean-one rescale are the step's (grpo_step), so every valid entry
    # gets the weight one batch of the 4 rows gives it; each half's own statistics would give other weights.
    recipe = load_recipe(RECIPES / "tiny-grpo-wmtp.yaml", [f"algorithm.norm={norm}"])
    F, T = False, True
    encoded = [
        Encoded([5, 6, 7, 8, 9, 10], [F, F, T, T, T, T], 1.0, advantage=A_POS),
        Encoded([11, 12, 13, 14], [F, T, T, T], 0.0, advantage=B_NEG),
        Encoded([15, 16, 17, 18, 19], [F, F, T, T, T], 1.0, advantage=None),  # its group has no signal
        Encoded([20, 21, 22, 23, 24, 25, 26], [F, F, F, T, T, T, T], 0.0, advantage=-0.3),
    ]
    whole = collate([0, 1, 2, 3], encoded, recipe.train, 0, None)
    halves = [
        collate([0, 1], encoded, recipe.train, 0, None),
        collate([2, 3], encoded, recipe.train, 0, None),
    ]
    total = lambda v: [float(x) for x in v.tolist()]  # noqa: E731  (one process: the sum is the vector)
    assert grpo_step(recipe, [whole], total, 1) is None  # nothing to coordinate
    step = grpo_step(recipe, halves, total, 1)
    assert step is not None

    def valid_weights(batches: list, stats: list | None) -> torch.Tensor:  # type: ignore[type-arg]
        out = []
        for b in batches:
            weights_for, _ = algorithm_hooks(recipe, b, None, None, None, StepDiagnostics(), 1.0, grpo=stats)  # type: ignore[arg-type]
            for k in range(recipe.n_heads):
                m = head_mask(b.token_mask, b.segment_ids, k)
                out.append((k, weights_for(k, torch.zeros(m.shape), m)[m]))
        return torch.cat([w for _, w in sorted(out, key=lambda x: x[0])])  # head by head, rows in order

    want = valid_weights([whole], None)
    assert float(want.std()) > 0.1  # the weights vary
    assert_close(valid_weights(halves, step), want)
    assert not torch.allclose(valid_weights(halves, None), want, atol=1e-3)  # each half's own rescale
