"""Evaluation rows as a worker stores them, for tests of what is read from them (pass@k tables, paired tests,
reports, MLflow): greedy pass@1, one sample per problem, with its per-problem outcomes."""

from __future__ import annotations

from collections.abc import Sequence

from wmtp_studio.models import Evaluation


def first_solved(solved: int, n: int) -> list[int]:
    """n problems of which the first `solved` are solved."""
    return [1] * solved + [0] * (n - solved)


def greedy_pass1(
    run_id: int,
    outcomes: Sequence[int],
    *,
    benchmark: str = "generated",
    ci: tuple[float, float] = (0.0, 1.0),
) -> Evaluation:
    """pass@1 of problems t0, t1, ... (outcomes[j] = 1 where t{j}'s one sample passed) with the interval `ci`."""
    n = len(outcomes)
    return Evaluation(
        run_id=run_id,
        benchmark=benchmark,
        k=1,
        pass_at_k=sum(outcomes) / n,
        ci_low=ci[0],
        ci_high=ci[1],
        n_problems=n,
        per_problem={f"t{j}": {"n": 1, "c": c} for j, c in enumerate(outcomes)},
    )
