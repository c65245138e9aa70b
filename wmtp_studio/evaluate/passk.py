"""pass@k: the unbiased estimator per problem, its mean over problems, bootstrap CIs and paired comparisons.

Torch-free (numpy + scipy). Every confidence interval here is a 95 % percentile bootstrap *over problems*: it
says how much the score would move on another draw of problems like these, not how much it moves between
training seeds or sampling runs (for those, compare several seeds with `paired_comparison`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import wilcoxon

_CHUNK = 1000  # bootstrap replicates drawn at once: bounds memory to _CHUNK x problems indices


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
class PassAtK:
    """Mean pass@k over problems with its 95 % bootstrap CI over problems."""

    k: int
    value: float
    ci_low: float
    ci_high: float
    n_problems: int
    n_samples: int  # the smallest number of samples any problem had


@dataclass(frozen=True)
class Paired:
    """Run b against run a on the same problems (and seeds); diff = mean_b − mean_a."""

    k: int
    mean_a: float
    mean_b: float
    diff: float
    ci_low: float  # 95 % paired bootstrap CI of diff, over problems
    ci_high: float
    wilcoxon_p: float | None  # signed-rank test over problems; None when every problem ties
    n_problems: int
    n_seeds: int
    seed_wilcoxon_p: float | None  # signed-rank test over per-seed means; None with < 2 seeds or all equal


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
        out.append(PassAtK(k, float(scores.mean()), low, high, len(ids), n_min))
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
    Wilcoxon signed-rank test over problems uses zero_method="wilcox": problems on which a and b tie are dropped
    (Wilcoxon 1945), so the test asks whether, where the runs differ, one is consistently better; for greedy
    pass@1 (differences in {−1, 0, 1}) it is the sign test on the discordant problems, like McNemar's. Keeping
    the ties ("zsplit", "pratt") would let the many problems both runs solve, or both fail, mask a real
    difference. With ≥ 2 seeds a second signed-rank test runs over the per-seed means (seed i of a against seed
    i of b). Only problems present in every run of a and b are compared.
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
        wilcoxon_p=_signed_rank_p(diffs),
        n_problems=len(ids),
        n_seeds=len(a),
        seed_wilcoxon_p=_signed_rank_p(seed_diffs) if len(a) >= 2 else None,
    )


def _signed_rank_p(diffs: np.ndarray) -> float | None:
    """Two-sided Wilcoxon signed-rank p-value of paired differences; None when all of them are zero."""
    if not np.any(diffs != 0):
        return None
    return float(wilcoxon(diffs, zero_method="wilcox").pvalue)
