"""pass@k: the unbiased estimator per problem, its mean over problems, bootstrap CIs and paired comparisons.

Torch-free (numpy + scipy). Every confidence interval here is a 95 % percentile bootstrap *over problems*: it
says how much the score would move on another draw of problems like these, not how much it moves between
training seeds or sampling runs (for those, compare several seeds with `paired_comparison`, whose intervals over
seeds are t-intervals).

p-values are exact wherever the normal approximation is wrong (METHOD.md, "Evaluation"): the exact two-sided sign
test when every non-zero difference has the same size (greedy pass@1: all ±1), else the exact distribution of the
Wilcoxon signed-rank statistic over the 2^n sign flips (mid-ranks for ties) up to `EXACT_MAX` differences, and
the normal approximation (with tie correction) only beyond that. Each p comes with the name of its test.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, rankdata, wilcoxon
from scipy.stats import t as student_t

from wmtp_studio.rundir.results import PassAtK as PassAtK  # results.json's model of one k

_CHUNK = 1000  # bootstrap replicates drawn at once: bounds memory to _CHUNK x problems indices
EXACT_MAX = 500
"""Most non-zero differences whose signed-rank p is computed exactly (the distribution over sign flips costs
O(n^3): 0.3 s at 500, 2 s at 1000); beyond it the normal approximation, accurate at that size, is used. The
sign test is exact at any size. 500 covers MBPP's test split and HumanEval."""
SIGN_TEST = "exact sign test"
EXACT_SIGNED_RANK = "exact Wilcoxon signed-rank"
NORMAL_SIGNED_RANK = "Wilcoxon signed-rank, normal approx."


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with n samples of which c pass (Chen et al. 2021, "Evaluating Large
    Language Models Trained on Code", §2.1): 1 − C(n−c, k)/C(n, k).

    Computed as the product 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which never forms the huge binomials.
    """
    if n < 0 or c < 0 or k < 0:
        raise ValueError(f"pass_at_k needs non-negative n, c, k; got n={n}, c={c}, k={k}")
    if k < 1:
        raise ValueError(f"pass_at_k: k must be at least 1, got k={k}")
    if c > n:
        raise ValueError(f"pass_at_k: c={c} passing samples is more than the n={n} samples drawn")
    if k > n:
        raise ValueError(f"pass_at_k: k={k} is more than the n={n} samples drawn; draw at least k samples")
    if n - c < k:  # every size-k subset holds a passing sample
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


@dataclass(frozen=True)
class SignedTest:
    """A two-sided test that paired differences are centred on 0, on the non-zero ones (ties at 0 dropped)."""

    p: float
    test: str  # SIGN_TEST, EXACT_SIGNED_RANK or NORMAL_SIGNED_RANK
    n: int  # non-zero differences tested
    p_min: float | None  # the smallest p this test can give with n differences (2/2^n); None if approximate


@dataclass(frozen=True)
class SeedInterval:
    """Mean over seeds with its 95 % t-interval over seeds (None with a single seed)."""

    mean: float
    low: float | None
    high: float | None
    n_seeds: int


@dataclass(frozen=True)
class Paired:
    """Run b against run a on the same problems (and seeds); diff = mean_b − mean_a."""

    k: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float  # 95 % paired bootstrap CI of diff, over problems
    ci_high: float
    problem_test: SignedTest | None  # over problems (seed-averaged); None when every problem ties
    n_problems: int
    n_seeds: int
    seed_diff: SeedInterval  # per-seed differences (seed i of b − seed i of a): mean, t-interval over seeds
    seed_test: SignedTest | None  # over per-seed differences; None with < 2 seeds or when all are 0

    @property
    def within_seed_noise(self) -> bool | None:
        """True when the 95 % t-interval over seeds of the per-seed difference contains 0: the seeds do not
        agree on the sign of the difference beyond their own spread. None with a single seed (unknown)."""
        low, high = self.seed_diff.low, self.seed_diff.high
        return None if low is None or high is None else low <= 0.0 <= high


def _per_problem(results: Mapping[str, Sequence[bool]], ids: Sequence[str], k: int) -> np.ndarray:
    return np.array([pass_at_k(len(results[i]), sum(map(bool, results[i])), k) for i in ids])  # (P,)


def _bootstrap_means(values: np.ndarray, iters: int, seed: int) -> np.ndarray:
    """Means of `iters` resamples (with replacement) of the rows of `values` (P,) or (P, m): (iters,) or
    (iters, m). Rows are resampled together, so columns stay paired."""
    rng = np.random.default_rng(seed)
    p = values.shape[0]
    out = []
    for start in range(0, iters, _CHUNK):
        idx = rng.integers(0, p, size=(min(_CHUNK, iters - start), p))  # (B, P)
        out.append(values[idx].mean(axis=1))
    return np.concatenate(out)


def _ci(means: np.ndarray) -> tuple[float, float]:
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def summarize(
    results: Mapping[str, Sequence[bool]], ks: Sequence[int], *, iters: int = 10000, seed: int = 0
) -> list[PassAtK]:
    """pass@k (Chen et al. 2021 estimator) for each k, averaged over problems, with a 95 % percentile bootstrap
    CI over problems (problems resampled with replacement, `iters` times, numpy Generator seeded by `seed`).

    `results` maps a problem id to the pass/fail of each of its samples. A k larger than the smallest number of
    samples of any problem is skipped (pass@k is undefined there), so the list may be shorter than `ks`.
    """
    if not results:
        raise ValueError("summarize: no problems")
    ids = sorted(results)
    n_min = min(len(results[i]) for i in ids)
    out = []
    for k in ks:
        if k < 1:
            raise ValueError(f"summarize: k must be at least 1, got {k}")
        if k > n_min:
            continue
        scores = _per_problem(results, ids, k)
        low, high = _ci(_bootstrap_means(scores, iters, seed))
        out.append(
            PassAtK(
                k=k,
                value=float(scores.mean()),
                ci_low=low,
                ci_high=high,
                n_problems=len(ids),
                n_samples=n_min,
            )
        )
    return out


def paired_comparison(
    a: Sequence[Mapping[str, Sequence[bool]]],
    b: Sequence[Mapping[str, Sequence[bool]]],
    k: int,
    *,
    iters: int = 10000,
    seed: int = 0,
) -> Paired:
    """Compare run b with run a at pass@k: both are lists of runs, one per seed, run i of a paired with run i
    of b (or a single run each).

    Per problem, pass@k (Chen et al. 2021) is averaged over seeds; diff is the mean over problems of b − a.
    The CI is a 95 % paired percentile bootstrap over problems (the same resampled problems for a and b). The
    test over problems (`signed_test`) drops the problems on which a and b tie (zero_method "wilcox", Wilcoxon
    1945), so it asks whether, where the runs differ, one is consistently better; for greedy pass@1 (differences
    in {−1, 0, 1}) that is the exact sign test on the discordant problems, like McNemar's exact test. Keeping
    the ties ("zsplit", "pratt") would let the many problems both runs solve, or both fail, mask a real
    difference. Over seeds: the per-seed difference (seed i of b − seed i of a, on the common problems) with
    its mean and 95 % t-interval, and with ≥ 2 seeds a second `signed_test` over those differences (its
    smallest attainable p is 2/2^S for S seeds). Only problems present in every run of a and b are compared.
    """
    if not a or not b:
        raise ValueError("paired_comparison: each side needs at least one run")
    if len(a) != len(b):
        raise ValueError(
            f"paired_comparison: {len(a)} runs against {len(b)}; pair seed i with seed i (equal counts)"
        )
    ids = sorted(set.intersection(*(set(run) for run in (*a, *b))))
    if not ids:
        raise ValueError("paired_comparison: the runs have no problem in common")
    scores_a = np.stack([_per_problem(run, ids, k) for run in a])  # (S, P)
    scores_b = np.stack([_per_problem(run, ids, k) for run in b])  # (S, P)
    mean_a, mean_b = scores_a.mean(axis=0), scores_b.mean(axis=0)  # (P,)
    diffs = mean_b - mean_a  # (P,)
    low, high = _ci(_bootstrap_means(diffs, iters, seed))
    seed_diffs = scores_b.mean(axis=1) - scores_a.mean(axis=1)  # (S,)
    return Paired(
        k=k,
        mean_a=float(mean_a.mean()),
        mean_b=float(mean_b.mean()),
        diff=float(diffs.mean()),
        ci_low=low,
        ci_high=high,
        problem_test=signed_test(diffs),
        n_problems=len(ids),
        n_seeds=len(a),
        seed_diff=seed_interval(seed_diffs),
        seed_test=signed_test(seed_diffs) if len(a) >= 2 else None,
    )


def seed_interval(values: Sequence[float] | np.ndarray) -> SeedInterval:
    """Mean of per-seed values with its 95 % Student t-interval over seeds, mean ± t(0.975, S−1)·sd/√S (sd with
    S−1 in the denominator); no interval with one seed. It is not clipped to [0, 1]."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("seed_interval: no values")
    mean = float(x.mean())
    if x.size < 2:
        return SeedInterval(mean, None, None, 1)
    half = float(student_t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    return SeedInterval(mean, mean - half, mean + half, int(x.size))


def signed_test(diffs: Sequence[float] | np.ndarray) -> SignedTest | None:
    """Two-sided test that paired differences are centred on 0, on the non-zero differences; None when every
    difference is 0. Differences are rounded to 12 decimals first, so that means of the same fractions tie.

    - every non-zero difference of one size (greedy pass@1: ±1): the exact sign test, binomial(n, 1/2) on the
      number of positive ones; the signed-rank test reduces to it there, since every rank ties;
    - otherwise, up to `EXACT_MAX` differences: the exact distribution of the signed-rank statistic W+ (sum of
      the mid-ranks of |d| of the positive differences) over the 2^n equally likely sign flips;
    - beyond: scipy's normal approximation with tie correction.
    Both exact p-values are 2·min(P(W ≤ w), P(W ≥ w)), capped at 1; their smallest value is 2/2^n.
    """
    d = np.round(np.asarray(diffs, dtype=float), 12)
    d = d[d != 0]
    n = int(d.size)
    if n == 0:
        return None
    p_min = min(1.0, 2.0 * 0.5**n)
    if np.all(np.abs(d) == abs(d[0])):
        return SignedTest(float(binomtest(int((d > 0).sum()), n, 0.5).pvalue), SIGN_TEST, n, p_min)
    if n <= EXACT_MAX:
        return SignedTest(_exact_signed_rank_p(d), EXACT_SIGNED_RANK, n, p_min)
    p = wilcoxon(d, zero_method="wilcox", method="approx").pvalue
    return SignedTest(float(p), NORMAL_SIGNED_RANK, n, None)


def _exact_signed_rank_p(d: np.ndarray) -> float:
    """Exact two-sided p of W+ for non-zero differences `d`, ties given mid-ranks. Mid-ranks are multiples of
    1/2, so twice W+ is an integer sum of independent terms 0 or 2·rank_i (each with probability 1/2), and its
    distribution is built by adding one term at a time (scipy's method="exact" assumes untied ranks 1..n)."""
    doubled = np.rint(2 * rankdata(np.abs(d))).astype(np.int64)  # (n,)
    w = int(doubled[d > 0].sum())
    dist = np.ones(1)  # dist[j] = P(2·W+ = j) over the terms added so far
    for r in doubled:
        grown = np.zeros(dist.size + r)
        grown[: dist.size] += dist
        grown[r:] += dist
        dist = 0.5 * grown
    return float(min(1.0, 2.0 * min(dist[: w + 1].sum(), dist[w:].sum())))
