"""pass@k estimator against exact binomials; bootstrap summaries and paired comparisons on hand-made runs."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np
import pytest
from scipy.stats import permutation_test, rankdata, wilcoxon

from wmtp_studio.evaluate.passk import (
    EXACT_MAX,
    EXACT_SIGNED_RANK,
    NORMAL_SIGNED_RANK,
    SIGN_TEST,
    PassAtK,
    SeedInterval,
    SignedTest,
    paired_comparison,
    pass_at_k,
    seed_interval,
    signed_test,
    summarize,
)


def test_pass_at_k_matches_exact_binomials_over_a_grid() -> None:
    for n in range(1, 31):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(comb(n - c, k), comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)


def test_pass_at_k_edges() -> None:
    assert pass_at_k(10, 0, 1) == 0.0
    assert pass_at_k(10, 0, 10) == 0.0
    assert pass_at_k(10, 10, 1) == 1.0
    assert pass_at_k(10, 7, 5) == 1.0  # n − c = 3 < k: every 5 samples include a passing one
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)
    assert pass_at_k(200, 1, 100) == pytest.approx(0.5)  # 1 − C(199, 100)/C(200, 100) = 1 − 100/200


@pytest.mark.parametrize(
    ("n", "c", "k", "words"),
    [
        (5, 1, 6, "more than the n=5"),
        (5, 6, 1, "c=6"),
        (-1, 0, 1, "non-negative"),
        (5, 1, -1, "non-negative"),
        (5, 1, 0, "at least 1"),
    ],
)
def test_pass_at_k_rejects_bad_arguments(n: int, c: int, k: int, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        pass_at_k(n, c, k)


RESULTS = {
    "a": [True, False, False, False],  # pass@1 = 1/4; pass@2 = 1 − C(3,2)/C(4,2) = 1 − 3/6 = 1/2
    "b": [True, True, False, False],  # pass@1 = 2/4; pass@2 = 1 − C(2,2)/C(4,2) = 1 − 1/6 = 5/6
    "c": [False, False, False, False],  # 0 and 0
}


def test_summarize_hand_computed_means_and_skips_large_k() -> None:
    out = summarize(RESULTS, [1, 2, 5], iters=2000)
    assert [r.k for r in out] == [1, 2]  # k=5 > 4 samples: skipped
    one, two = out
    assert one.value == pytest.approx((1 / 4 + 2 / 4 + 0) / 3)  # = 0.25
    assert two.value == pytest.approx((1 / 2 + 5 / 6 + 0) / 3)  # = 4/9
    assert (one.n_problems, one.n_samples) == (3, 4)
    for r in out:
        assert 0.0 <= r.ci_low <= r.value <= r.ci_high <= 1.0
        assert r.ci_low < r.ci_high
    # Resampling 3 problems can draw "c" three times (mean 0) or "b" three times (pass@2 = 5/6).
    assert two.ci_low == pytest.approx(0.0)
    assert two.ci_high == pytest.approx(5 / 6)


def test_summarize_ci_collapses_when_problems_are_equal_and_is_seeded() -> None:
    same = {f"p{i}": [True, False] for i in range(10)}
    (r,) = summarize(same, [1], iters=500)
    assert r.value == pytest.approx(0.5)
    assert r.ci_low == pytest.approx(0.5) and r.ci_high == pytest.approx(0.5)
    varied = {f"p{i}": [i % 3 == 0, i % 2 == 0, True] for i in range(30)}
    assert summarize(varied, [1, 2], seed=7) == summarize(varied, [1, 2], seed=7)
    assert summarize(varied, [1], seed=7) != summarize(varied, [1], seed=8)


def test_summarize_n_samples_is_the_minimum_and_rejects_empty() -> None:
    (r,) = summarize({"a": [True], "b": [True, False, True]}, [1], iters=100)
    assert isinstance(r, PassAtK)
    assert r.value == pytest.approx((1 + 2 / 3) / 2)
    assert (r.n_problems, r.n_samples) == (2, 1)
    with pytest.raises(ValueError, match="no problems"):
        summarize({}, [1])


def test_paired_identical_runs() -> None:
    run = {"a": [True, False], "b": [False, False], "c": [True, True]}
    p = paired_comparison([run], [run], 1, iters=500)
    assert p.diff == 0.0
    assert (p.ci_low, p.ci_high) == (0.0, 0.0)
    assert p.problem_test is None and p.seed_test is None
    assert (p.n_problems, p.n_seeds) == (3, 1)
    assert p.seed_diff.n_seeds == 1 and p.within_seed_noise is None  # one seed: seed noise unknown
    assert p.mean_a == p.mean_b == pytest.approx((0.5 + 0 + 1) / 3)


def test_paired_b_strictly_better() -> None:
    a = {f"p{i}": [False, False, True, False] for i in range(20)}  # pass@1 = 1/4 everywhere
    b = {f"p{i}": [True, i % 2 == 0, True, False] for i in range(20)}  # 3/4 on even, 1/2 on odd problems
    p = paired_comparison([a], [b], 1)
    assert p.diff == pytest.approx((3 / 4 + 1 / 2) / 2 - 1 / 4)  # = 3/8
    assert p.mean_a == pytest.approx(1 / 4) and p.mean_b == pytest.approx(5 / 8)
    assert 0 < p.ci_low <= p.diff <= p.ci_high
    # 20 positive differences of two sizes (ties): exact signed-rank, all one way: 2·(1/2)^20
    assert p.problem_test == SignedTest(2 * 0.5**20, EXACT_SIGNED_RANK, 20, 2 * 0.5**20)
    assert p.n_problems == 20


def test_paired_two_seeds_average_per_problem_and_test_over_seeds() -> None:
    ids = [f"p{i}" for i in range(12)]
    a1 = {t: [i < 3] for i, t in enumerate(ids)}  # 3/12 solved
    a2 = {t: [i < 5] for i, t in enumerate(ids)}  # 5/12
    b1 = {t: [i < 8] for i, t in enumerate(ids)}  # 8/12
    b2 = {t: [i < 6] for i, t in enumerate(ids)}  # 6/12
    b2["extra"] = [True]  # only in one run: ignored
    p = paired_comparison([a1, a2], [b1, b2], 1, iters=2000)
    assert (p.n_problems, p.n_seeds) == (12, 2)
    assert p.mean_a == pytest.approx((3 + 5) / 24)
    assert p.mean_b == pytest.approx((8 + 6) / 24)
    assert p.diff == pytest.approx(6 / 24)
    # seed-averaged differences: 0.5 on p3, p4, p6, p7, 1 on p5, 0 elsewhere: five positive (two sizes), so
    # the exact signed-rank p is 2·(1/2)^5 = 0.0625
    assert p.problem_test is not None and p.problem_test.test == EXACT_SIGNED_RANK
    assert p.problem_test.p == pytest.approx(0.0625)
    # per-seed differences 8/12 − 3/12 = 5/12 and 6/12 − 5/12 = 1/12: both positive, p = 2/2^2 = 0.5, the
    # smallest two seeds can give; mean 3/12, t-interval 0.25 ± t(0.975, 1)·sd/√2 with sd = (4/12)/√2, so
    # ± 12.7062 · 1/6 = ± 2.1177: it contains 0, the difference is within seed noise
    assert p.seed_test == SignedTest(0.5, EXACT_SIGNED_RANK, 2, 0.5)
    assert p.seed_diff.mean == pytest.approx(0.25) and p.seed_diff.n_seeds == 2
    assert p.seed_diff.low == pytest.approx(0.25 - 12.706204736 / 6)
    assert p.seed_diff.high == pytest.approx(0.25 + 12.706204736 / 6)
    assert p.within_seed_noise is True
    same = paired_comparison([a1, a2], [a2, a1], 1, iters=100)  # seed means swap: per-problem diffs all 0
    assert same.diff == 0 and same.problem_test is None


def test_paired_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="no problem in common"):
        paired_comparison([{"a": [True]}], [{"b": [True]}], 1)
    with pytest.raises(ValueError, match="equal counts"):
        paired_comparison([{"a": [True]}], [{"a": [True]}, {"a": [False]}], 1)
    with pytest.raises(ValueError, match="at least one run"):
        paired_comparison([], [], 1)
    with pytest.raises(ValueError, match="k=2"):
        paired_comparison([{"a": [True]}], [{"a": [True]}], 2)


def _greedy(solved_a: list[int], solved_b: list[int]) -> tuple[dict[str, list[bool]], dict[str, list[bool]]]:
    a = {f"t{i}": [bool(x)] for i, x in enumerate(solved_a)}
    b = {f"t{i}": [bool(x)] for i, x in enumerate(solved_b)}
    return a, b


def test_greedy_pass1_uses_the_exact_sign_test_on_discordant_problems() -> None:
    # 5 problems only b solves, 10 both solve, 10 neither: 2·(1/2)^5 = 0.0625 (the normal approximation used
    # before gave 0.025)
    a, b = _greedy([0] * 5 + [1] * 10 + [0] * 10, [1] * 5 + [1] * 10 + [0] * 10)
    test = paired_comparison([a], [b], 1, iters=100).problem_test
    assert test == SignedTest(0.0625, SIGN_TEST, 5, 0.0625)
    # 12 problems only b solves, 4 only a, 20 ties: 2·Σ_{k≤4} C(16,k)/2^16 = 2·(1+16+120+560+1820)/65536
    # = 5034/65536 = 0.076812744140625 (the normal approximation gave 0.0455)
    a, b = _greedy([0] * 12 + [1] * 4 + [1] * 10 + [0] * 10, [1] * 12 + [0] * 4 + [1] * 10 + [0] * 10)
    test = paired_comparison([a], [b], 1, iters=100).problem_test
    assert test is not None and test.test == SIGN_TEST and test.n == 16
    assert test.p == pytest.approx(5034 / 65536, abs=1e-15) and test.p_min == pytest.approx(2 / 2**16)
    assert sum(comb(16, k) for k in range(5)) == 2517  # the hand sum above
    # the exact signed-rank distribution agrees where every rank ties: it is the sign test there
    ranks_tied = signed_test(np.array([1.0] * 12 + [-1.0] * 4))
    assert ranks_tied is not None and ranks_tied.p == pytest.approx(5034 / 65536)


def test_exact_signed_rank_with_ties_by_hand_and_by_permutation() -> None:
    # |d| = .5, .5, .5, 1 → mid-ranks 2, 2, 2, 4; W+ = 2 + 2 + 4 = 8 (the −.5 is negative). Over the 16 sign
    # flips W+ = 2k + 4j (k of the three .5 positive, j the 1): W+ ≥ 8 needs j = 1 and k ≥ 2, C(3,2) + C(3,3)
    # = 4 flips: P(W+ ≥ 8) = 4/16; P(W+ ≤ 8) = 1 − P(W+ = 10) = 15/16; p = 2·min = 0.5
    d = [0.5, 0.5, 1.0, -0.5, 0.0]
    assert signed_test(d) == SignedTest(0.5, EXACT_SIGNED_RANK, 4, 0.125)
    # scipy's method="exact" ignores the ties (it uses ranks 1..n) and gives another value
    assert wilcoxon([0.5, 0.5, 1.0, -0.5], method="exact").pvalue != pytest.approx(0.5)
    # an independent exact enumeration: scipy's permutation test over the 2^n sign flips of the pairs
    rng = np.random.default_rng(1)
    for _ in range(5):
        x = rng.integers(-3, 4, size=9) / 4  # many ties and zeros
        x = np.where(x == 0, 0.25, x)

        def w_plus(diff: np.ndarray, axis: int = -1) -> np.ndarray:
            ranks = rankdata(np.abs(diff), axis=axis)
            return np.sum(ranks * (diff > 0), axis=axis)

        ref = permutation_test(
            (x, np.zeros_like(x)),
            lambda u, v, axis=-1: w_plus(u - v, axis),
            permutation_type="samples",
            alternative="two-sided",
            n_resamples=np.inf,
            vectorized=True,
        ).pvalue
        got = signed_test(x)
        assert got is not None and got.p == pytest.approx(min(1.0, ref))


def test_tie_free_small_samples_match_scipy_exact_and_large_ones_are_approximate() -> None:
    # ranks of |d| = .05, .1, .2, .3, .4 are 1..5; W− = 1: subsets of {1..5} with sum ≤ 1 are {} and {1},
    # so P(W− ≤ 1) = 2/32 and p = 2·2/32 = 0.125
    d = [0.1, 0.2, 0.3, 0.4, -0.05]
    assert signed_test(d) == SignedTest(0.125, EXACT_SIGNED_RANK, 5, 0.0625)
    assert wilcoxon(d, method="exact").pvalue == pytest.approx(0.125)
    big = np.linspace(-1, 3, EXACT_MAX + 1) + 1e-3  # tie-free, no zero
    test = signed_test(big)
    assert test is not None and test.test == NORMAL_SIGNED_RANK and test.p_min is None
    assert test.p == pytest.approx(wilcoxon(big, method="approx").pvalue)
    assert signed_test([0.0, 0.0]) is None


def test_seed_interval_is_a_t_interval_over_seeds() -> None:
    # 0.2, 0.4, 0.6: mean 0.4, sd = sqrt((0.04 + 0 + 0.04)/2) = 0.2, t(0.975, 2) = 4.302653,
    # half-width 4.302653 · 0.2/√3 = 0.496828
    s = seed_interval([0.2, 0.4, 0.6])
    assert s.mean == pytest.approx(0.4) and s.n_seeds == 3
    assert s.low == pytest.approx(0.4 - 0.496828, abs=1e-6) and s.high == pytest.approx(
        0.4 + 0.496828, abs=1e-6
    )
    assert seed_interval([0.3]) == SeedInterval(0.3, None, None, 1)  # one seed: no interval
    with pytest.raises(ValueError, match="no values"):
        seed_interval([])


def test_three_seeds_that_agree_are_beyond_seed_noise_and_disagreeing_ones_within() -> None:
    ids = range(10)
    a = [{f"t{i}": [i < 3] for i in ids}, {f"t{i}": [i < 4] for i in ids}, {f"t{i}": [i < 2] for i in ids}]
    b = [{f"t{i}": [i < 6] for i in ids}, {f"t{i}": [i < 8] for i in ids}, {f"t{i}": [i < 5] for i in ids}]
    p = paired_comparison(a, b, 1, iters=200)
    # per-seed differences .3, .4, .3: mean 1/3, sd = sqrt((1/900 + 4/900 + 1/900)/2) = 0.057735, t-interval
    # 1/3 ± 4.302653 · 0.057735/√3 = 1/3 ± 0.143422 = [0.1899, 0.4768]: excludes 0
    assert p.seed_diff.low == pytest.approx(1 / 3 - 0.143422, abs=1e-6)
    assert p.within_seed_noise is False
    # the seed-level test cannot go below 2/2^3 = 0.25 with three seeds, however consistent they are
    assert p.seed_test == SignedTest(0.25, EXACT_SIGNED_RANK, 3, 0.25)
    swapped = paired_comparison([a[0], b[1], a[2]], [b[0], a[1], b[2]], 1, iters=200)
    # differences .3, −.4, .3: mean 0.0667, sd 0.4041, half-width 4.302653 · 0.4041/√3 = 1.004: within noise
    assert swapped.within_seed_noise is True
