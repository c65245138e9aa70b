"""The compare screen's tables: grouping, pooled pass@k, paired tests against the baseline, config diff."""

from __future__ import annotations

from pathlib import Path

import pytest

from wmtp_studio.compare import expand
from wmtp_studio.models import Evaluation, Run
from wmtp_studio.recipe import load_recipe
from wmtp_studio.tui.export import Interval
from wmtp_studio.tui.results import (
    config_diff_table,
    default_baseline,
    make_groups,
    per_problem_results,
    results_table,
)

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

# Greedy pass@1 on four problems, one sample each (1 = solved).
SOLVED = {
    ("baseline-mtp", 0): [1, 1, 1, 1],
    ("baseline-mtp", 1): [1, 1, 0, 1],
    ("ntp", 0): [1, 0, 0, 0],
    ("ntp", 1): [1, 1, 0, 0],
}


def _runs() -> list[Run]:
    """Runs 1..4: baseline-mtp s0, s1, then ntp s0, s1 (so the ntp baseline is not the first group)."""
    base = load_recipe(RECIPES / "tiny-ntp.yaml", ["train.steps=10"])
    expanded = expand(base, ["baseline-mtp", "ntp"], [0, 1])
    return [
        Run(
            id=i,
            name=r.name,
            recipe_json=r.canonical_json(),
            recipe_sha256=r.sha256(),
            algorithm=r.algorithm.name,
            seed=r.train.seed,
        )
        for i, (r, _) in enumerate(expanded, start=1)
    ]


def _evaluations(runs: list[Run]) -> dict[int, list[Evaluation]]:
    out = {}
    for run in runs:
        solved = SOLVED[(run.algorithm, run.seed)]
        per_problem = {f"t{j}": {"n": 1, "c": c} for j, c in enumerate(solved, start=1)}
        value = sum(solved) / 4
        out[run.id or 0] = [
            Evaluation(
                run_id=run.id or 0,
                benchmark="generated",
                k=1,
                pass_at_k=value,
                ci_low=value - 0.1,
                ci_high=value + 0.1,
                n_problems=4,
                per_problem=per_problem,
            )
        ]
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
    # per-problem differences mtp − ntp = [0, 1, 1, 1]: mean 0.75; Wilcoxon drops the tie, three positive
    # differences out of three: exact two-sided p = 2 x (1/2)^3 = 0.25
    diff = mtp[3]
    assert isinstance(diff, Interval) and diff.value == pytest.approx(0.75)
    assert diff.low is not None and diff.high is not None and diff.low <= 0.75 <= diff.high
    assert mtp[4] == pytest.approx(0.25)
    assert "baseline #3 tiny-ntp-s0" in table.note


def test_algorithm_rows_pool_seeds_and_pair_seed_with_seed() -> None:
    runs = _runs()
    groups = make_groups(list(reversed(runs)), by_algorithm=True)
    assert [(g.label, [r.seed for r in g.runs]) for g in groups] == [
        ("baseline-mtp", [0, 1]),
        ("ntp", [0, 1]),
    ]
    table = results_table(groups, _evaluations(runs), 1, by_algorithm=True)
    assert table.columns[0] == "algorithm"
    mtp, ntp = table.rows
    assert mtp[1] == "0,1"
    # pooled pass@1 = mean over problems of c/n over both seeds: ntp (2/2 + 1/2 + 0 + 0)/4 = 0.375,
    # baseline-mtp (2/2 + 2/2 + 1/2 + 2/2)/4 = 0.875
    assert isinstance(ntp[2], Interval) and ntp[2].value == pytest.approx(0.375)
    assert isinstance(mtp[2], Interval) and mtp[2].value == pytest.approx(0.875)
    # seed-averaged per problem: ntp [1, .5, 0, 0], mtp [1, 1, .5, 1] → differences [0, .5, .5, 1]: mean 0.5;
    # Wilcoxon over the three non-zero, all positive: p = 2 x 1/8 = 0.25
    assert isinstance(mtp[3], Interval) and mtp[3].value == pytest.approx(0.5)
    assert mtp[4] == pytest.approx(0.25)


def test_ties_everywhere_give_no_p_value_and_missing_evaluations_no_value() -> None:
    runs = _runs()
    evaluations = _evaluations(runs)
    groups = make_groups([runs[2], runs[2].model_copy(update={"id": 9})], by_algorithm=False)
    evaluations[9] = [e.model_copy(update={"run_id": 9}) for e in evaluations[3]]
    table = results_table(groups, evaluations, 0, by_algorithm=False)
    diff = table.rows[1][3]
    assert isinstance(diff, Interval) and diff.value == 0.0
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
