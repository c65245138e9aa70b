"""pass@k estimator against exact binomials; bootstrap summaries and paired comparisons on hand-made runs."""

from __future__ import annotations

from fractions import Fraction
from math import comb

import pytest

from wmtp_studio.evaluate.passk import PassAtK, paired_comparison, pass_at_k, summarize


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
    assert p.wilcoxon_p is None and p.seed_wilcoxon_p is None
    assert (p.n_problems, p.n_seeds) == (3, 1)
    assert p.mean_a == p.mean_b == pytest.approx((0.5 + 0 + 1) / 3)


def test_paired_b_strictly_better() -> None:
    a = {f"p{i}": [False, False, True, False] for i in range(20)}  # pass@1 = 1/4 everywhere
    b = {f"p{i}": [True, i % 2 == 0, True, False] for i in range(20)}  # 3/4 on even, 1/2 on odd problems
    p = paired_comparison([a], [b], 1)
    assert p.diff == pytest.approx((3 / 4 + 1 / 2) / 2 - 1 / 4)  # = 3/8
    assert p.mean_a == pytest.approx(1 / 4) and p.mean_b == pytest.approx(5 / 8)
    assert 0 < p.ci_low <= p.diff <= p.ci_high
    assert p.wilcoxon_p is not None and p.wilcoxon_p < 0.01
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
    assert p.wilcoxon_p is not None and 0 < p.wilcoxon_p < 1  # diffs: 0.5 on p3..p7, 0 elsewhere
    assert p.seed_wilcoxon_p == pytest.approx(0.5)  # two seeds, both b > a: the smallest two-sided p
    same = paired_comparison([a1, a2], [a2, a1], 1, iters=100)  # seed means swap: per-problem diffs all 0
    assert same.diff == 0 and same.wilcoxon_p is None


def test_paired_rejects_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="no problem in common"):
        paired_comparison([{"a": [True]}], [{"b": [True]}], 1)
    with pytest.raises(ValueError, match="equal counts"):
        paired_comparison([{"a": [True]}], [{"a": [True]}, {"a": [False]}], 1)
    with pytest.raises(ValueError, match="at least one run"):
        paired_comparison([], [], 1)
    with pytest.raises(ValueError, match="k=2"):
        paired_comparison([{"a": [True]}], [{"a": [True]}], 2)
