"""The compare screen's tables: grouping, pooled pass@k, paired tests against the baseline, config diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.evaluations import first_solved, greedy_pass1
from wmtp_studio.compare import expand
from wmtp_studio.compare.export import Interval, PValue
from wmtp_studio.compare.tables import (
    BEYOND_NOISE,
    WITHIN_NOISE,
    config_diff_table,
    default_baseline,
    make_groups,
    per_problem_results,
    results_table,
)
from wmtp_studio.evaluate.passk import EXACT_SIGNED_RANK, SIGN_TEST
from wmtp_studio.models import Evaluation, Run
from wmtp_studio.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def assert_interval(cell: object, value: float, low: float, high: float) -> None:
    assert isinstance(cell, Interval)
    assert (cell.value, cell.low, cell.high) == pytest.approx((value, low, high), abs=1e-6)


def assert_p(cell: object, p: float, test: str, floor: float | None = None) -> None:
    assert isinstance(cell, PValue) and (cell.test, cell.floor) == (test, floor)
    assert cell.value == pytest.approx(p, abs=1e-12)


# Greedy pass@1 on four problems, one sample each (1 = solved).
SOLVED = {
    ("baseline-mtp", 0): [1, 1, 1, 1],
    ("baseline-mtp", 1): [1, 1, 0, 1],
    ("ntp", 0): [1, 0, 0, 0],
    ("ntp", 1): [1, 1, 0, 0],
}


def _runs_of(algorithms: list[str], seeds: list[int]) -> list[Run]:
    """Unstored runs 1, 2, ... of the tiny recipe (10 steps) over algorithms x seeds, in that order."""
    base = load_recipe(RECIPES / "tiny-ntp.yaml", ["train.steps=10"])
    return [
        Run(
            id=i,
            name=r.name,
            recipe_json=r.canonical_json(),
            recipe_sha256=r.sha256(),
            algorithm=r.algorithm.name,
            seed=r.train.seed,
        )
        for i, (r, _) in enumerate(expand(base, algorithms, seeds), start=1)
    ]


def _runs() -> list[Run]:
    """Runs 1..4: baseline-mtp s0, s1, then ntp s0, s1 (so the ntp baseline is not the first group)."""
    return _runs_of(["baseline-mtp", "ntp"], [0, 1])


def _evaluations(runs: list[Run]) -> dict[int, list[Evaluation]]:
    out = {}
    for run in runs:
        solved = SOLVED[(run.algorithm, run.seed)]
        value = sum(solved) / 4
        out[run.id or 0] = [greedy_pass1(run.id or 0, solved, ci=(value - 0.1, value + 0.1))]
    return out


def test_per_problem_counts_become_outcomes() -> None:
    evaluation = Evaluation(
        run_id=1, benchmark="b", k=1, pass_at_k=0, ci_low=0, ci_high=0, n_problems=1, per_problem={}
    )
    assert per_problem_results(evaluation) is None
    evaluation.per_problem = {"t1": {"n": 3, "c": 1}}
    assert per_problem_results(evaluation) == {"t1": [True, False, False]}


def test_one_row_per_run_with_paired_test_against_ntp() -> None:
    runs = _runs()
    groups = make_groups([runs[0], runs[2]], by_algorithm=False)  # baseline-mtp s0 and ntp s0
    assert [g.label for g in groups] == ["#1 tiny-baseline-mtp-s0", "#3 tiny-ntp-s0"]
    baseline = default_baseline(groups)
    assert baseline == 1  # the ntp run
    table = results_table(groups, _evaluations(runs), baseline, by_algorithm=False)
    assert table.columns == ("run", "seeds", "generated pass@1", "Δ generated pass@1", "p generated pass@1")
    mtp, ntp = table.rows
    assert ntp[2:] == (Interval(0.25, 0.15, 0.35), "baseline", None)  # the stored value and CI
    # per-problem differences mtp − ntp = [0, 1, 1, 1]: mean 0.75; the tie is dropped, three discordant problems
    # all one way: the exact sign test, p = 2 x (1/2)^3 = 0.25
    diff = mtp[3]
    assert isinstance(diff, Interval) and diff.value == pytest.approx(0.75)
    assert diff.low is not None and diff.high is not None and diff.low <= 0.75 <= diff.high
    assert_p(mtp[4], 0.25, SIGN_TEST)
    assert "baseline #3 tiny-ntp-s0" in table.note and "exact sign test" in table.note


def test_algorithm_rows_pool_seeds_and_pair_seed_with_seed() -> None:
    runs = _runs()
    groups = make_groups(list(reversed(runs)), by_algorithm=True)
    assert [(g.label, [r.seed for r in g.runs]) for g in groups] == [
        ("baseline-mtp", [0, 1]),
        ("ntp", [0, 1]),
    ]
    table = results_table(groups, _evaluations(runs), 1, by_algorithm=True)
    name = "generated pass@1"
    assert table.columns == (
        "algorithm",
        "seeds",
        name,
        f"{name} seed mean",
        f"Δ {name}",
        f"p {name}",
        f"Δ seeds {name}",
        f"p seeds {name}",
        f"seed noise {name}",
    )
    mtp, ntp = table.rows
    assert ntp[4:] == ("baseline", None, None, None, None)
    assert mtp[1] == "0,1"
    # pooled pass@1 = mean over problems of c/n over both seeds: ntp (2/2 + 1/2 + 0 + 0)/4 = 0.375,
    # baseline-mtp (2/2 + 2/2 + 1/2 + 2/2)/4 = 0.875
    assert isinstance(ntp[2], Interval) and ntp[2].value == pytest.approx(0.375)
    assert isinstance(mtp[2], Interval) and mtp[2].value == pytest.approx(0.875)
    # seed-averaged per problem: ntp [1, .5, 0, 0], mtp [1, 1, .5, 1] → differences [0, .5, .5, 1]: mean 0.5;
    # Wilcoxon over the three non-zero, all positive: p = 2 x 1/8 = 0.25
    assert isinstance(mtp[4], Interval) and mtp[4].value == pytest.approx(0.5)
    assert_p(mtp[5], 0.25, EXACT_SIGNED_RANK)
    # per seed: ntp .25, .5 → mean .375 ± t(.975, 1)·(.25/√2)/√2 = ± 12.7062 · 0.125 = ± 1.588276
    assert_interval(ntp[3], 0.375, 0.375 - 1.588276, 0.375 + 1.588276)
    # per-seed differences 1 − .25 = .75 and .75 − .5 = .25: mean .5 ± 12.7062 · (.5/√2)/√2 = ± 3.176551, which
    # contains 0; two positive differences of two sizes: p = 2/2^2 = 0.5, also the smallest with two seeds
    assert_interval(mtp[6], 0.5, 0.5 - 3.176551, 0.5 + 3.176551)
    assert mtp[7] == PValue(0.5, EXACT_SIGNED_RANK, 0.5)
    assert mtp[8] == WITHIN_NOISE
    assert "2/2^S" in table.note and "t-interval" in table.note


def test_ties_everywhere_give_no_p_value_and_missing_evaluations_no_value() -> None:
    runs = _runs()
    evaluations = _evaluations(runs)
    groups = make_groups([runs[2], runs[2].model_copy(update={"id": 9})], by_algorithm=False)
    evaluations[9] = [e.model_copy(update={"run_id": 9}) for e in evaluations[3]]
    table = results_table(groups, evaluations, 0, by_algorithm=False)
    diff = table.rows[1][3]
    assert isinstance(diff, Interval) and diff.value == 0.0
    assert "seeds is not measured" in table.note
    assert table.rows[1][4] is None  # every problem ties
    del evaluations[9]
    assert results_table(groups, evaluations, 0, by_algorithm=False).rows[1][2:] == (None, None, None)


def test_config_diff_lists_fields_that_differ_from_the_baseline() -> None:
    runs = _runs()
    ntp0 = runs[2]
    table = config_diff_table(ntp0, [runs[3], runs[0], runs[1]])
    assert table.columns == (
        "field",
        "#3 tiny-ntp-s0",
        "#4 tiny-ntp-s1",
        "#1 tiny-baseline-mtp-s0",
        "#2 tiny-baseline-mtp-s1",
    )
    assert table.rows == (
        ("algorithm.name", "ntp", "=", "baseline-mtp", "baseline-mtp"),
        ("name", "tiny-ntp-s0", "tiny-ntp-s1", "tiny-baseline-mtp-s0", "tiny-baseline-mtp-s1"),
        ("train.seed", "0", "1", "=", "1"),
    )


# Greedy pass@1 on eight problems; each seed solves the first c of them: c per (algorithm, seed).
SOLVED_FIRST = {"ntp": (2, 3, 2), "baseline-mtp": (5, 7, 5), "critic-wmtp": (4, 2, 3)}


def three_seed_set() -> tuple[list[Run], dict[int, list[Evaluation]]]:
    """ntp, baseline-mtp, critic-wmtp x seeds 0, 1, 2 (runs 1..9), with the SOLVED_FIRST evaluations."""
    runs = _runs_of(list(SOLVED_FIRST), [0, 1, 2])
    return runs, {
        run.id or 0: [greedy_pass1(run.id or 0, first_solved(SOLVED_FIRST[run.algorithm][run.seed], 8))]
        for run in runs
    }


def test_three_seeds_pool_per_algorithm_with_t_intervals_and_mark_seed_noise() -> None:
    runs, evaluations = three_seed_set()
    groups = make_groups(runs, by_algorithm=True)
    ntp, mtp, critic = results_table(groups, evaluations, 0, by_algorithm=True).rows
    assert ntp[:2] == ("ntp", "0,1,2")
    # ntp solves 2, 3, 2 of 8: per problem t0, t1 by all seeds, t2 by one: pooled (1 + 1 + 1/3)/8 = 7/24.
    # Seed mean (.25 + .375 + .25)/3 = 7/24; sd = sqrt(((1/24)² + (2/24)² + (1/24)²)/2) = √3/24, so the
    # t-interval is 7/24 ± t(.975, 2)·(√3/24)/√3 = 7/24 ± 4.302653/24 = 7/24 ± 0.179277
    assert isinstance(ntp[2], Interval) and ntp[2].value == pytest.approx(7 / 24)
    assert_interval(ntp[3], 7 / 24, 7 / 24 - 0.179277, 7 / 24 + 0.179277)
    # baseline-mtp solves 5, 7, 5: pooled (5 + 2/3)/8 = 17/24. Per-problem Δ (seed-averaged): t2 2/3, t3 1,
    # t4 1, t5 1/3, t6 1/3, others 0: mean (10/3)/8 = 5/12; five positive of three sizes: exact signed-rank
    # p = 2/2^5 = 0.0625
    assert isinstance(mtp[2], Interval) and mtp[2].value == pytest.approx(17 / 24)
    assert isinstance(mtp[4], Interval) and mtp[4].value == pytest.approx(5 / 12)
    assert_p(mtp[5], 0.0625, EXACT_SIGNED_RANK)
    # per-seed Δ 3/8, 4/8, 3/8: mean 5/12, sd √3/24 as above, interval 5/12 ± 0.179277 = [0.2374, 0.5959]:
    # beyond seed noise, although the seed-level p cannot go below 2/2^3 = 0.25
    assert_interval(mtp[6], 5 / 12, 5 / 12 - 0.179277, 5 / 12 + 0.179277)
    assert mtp[7] == PValue(0.25, EXACT_SIGNED_RANK, 0.25)
    assert mtp[8] == BEYOND_NOISE
    # critic-wmtp solves 4, 2, 3: per problem t2 2/3 vs ntp 1/3, t3 1/3 vs 0: two differences of 1/3, one size:
    # the exact sign test, p = 2·(1/2)^2 = 0.5
    assert_p(critic[5], 0.5, SIGN_TEST)
    # per-seed Δ 2/8, −1/8, 1/8: mean 1/12, sd = sqrt(((4/24)² + (5/24)² + (1/24)²)/2) = √21/24, interval
    # 1/12 ± 4.302653 · (√21/24)/√3 = 1/12 ± 4.302653 · √7/24 = 1/12 ± 0.474323: contains 0, within seed noise.
    # Seed test: mid-ranks of |Δ| 1.5, 1.5, 3 (doubled 3, 3, 6), 2·W+ = 6 + 3 = 9; the 8 sign flips give 2·W+
    # 0, 3, 3, 6, 6, 9, 9, 12: P(≥ 9) = 3/8, P(≤ 9) = 7/8, p = 2·3/8 = 0.75
    assert isinstance(critic[6], Interval) and critic[6].low == pytest.approx(1 / 12 - 0.474323, abs=1e-6)
    assert_p(critic[7], 0.75, EXACT_SIGNED_RANK, 0.25)
    assert critic[8] == WITHIN_NOISE
