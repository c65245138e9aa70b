"""The comparison tables (the compare screen's, the report's), from stored runs and evaluations (pure; no Textual,
no database).

Rows are runs, or algorithms when a comparison set has several seeds: then a row pools its seeds and the paired
test against the baseline pairs seed i with seed i (`wmtp_studio.evaluate.passk.paired_comparison`). With several
seeds a row also shows the spread over seeds: pass@k's mean over seeds with a t-interval, the per-seed paired
difference with its t-interval and test, and whether the difference is within seed noise (that interval
contains 0).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wmtp_studio.compare import recipe_diff
from wmtp_studio.compare.export import Cell, Interval, PValue, Table
from wmtp_studio.errors import RecipeError, StudioError
from wmtp_studio.evaluate.passk import Paired, SignedTest, paired_comparison, seed_interval, summarize
from wmtp_studio.models import Evaluation, Run
from wmtp_studio.recipe import recipe_from_json

PerProblem = dict[str, list[bool]]


@dataclass(frozen=True)
class Group:
    """One row of the results table: a run, or one algorithm's runs (sorted by seed)."""

    label: str
    runs: tuple[Run, ...]


def make_groups(runs: Sequence[Run], *, by_algorithm: bool) -> list[Group]:
    """One group per run (in id order), or per algorithm (in first-run order) with its runs sorted by seed."""
    ordered = sorted(runs, key=lambda r: r.id or 0)
    if not by_algorithm:
        return [Group(f"#{r.id} {r.name}", (r,)) for r in ordered]
    algorithms = list(dict.fromkeys(r.algorithm for r in ordered))
    return [
        Group(a, tuple(sorted((r for r in ordered if r.algorithm == a), key=lambda r: r.seed)))
        for a in algorithms
    ]


def default_baseline(groups: Sequence[Group]) -> int:
    """Index of the baseline: the first ntp group, else the first group."""
    return next((i for i, g in enumerate(groups) if g.runs and g.runs[0].algorithm == "ntp"), 0)


def per_problem_results(evaluation: Evaluation) -> PerProblem | None:
    """{task: {"n", "c"}} as stored → {task: [True] * c + [False] * (n - c)}, what passk takes."""
    if not evaluation.per_problem:
        return None
    return {
        task: [True] * int(nc["c"]) + [False] * (int(nc["n"]) - int(nc["c"]))
        for task, nc in evaluation.per_problem.items()
    }


EvalKey = tuple[str, int]


def _evals(group: Group, evaluations: Mapping[int, Sequence[Evaluation]], key: EvalKey) -> list[Evaluation]:
    """The group's evaluations for (benchmark, k), one per run, or [] unless every run has one."""
    found = [
        next((e for e in evaluations.get(r.id or 0, ()) if (e.benchmark, e.k) == key), None)
        for r in group.runs
    ]
    return [e for e in found if e is not None] if all(found) else []


def pass_cell(evals: Sequence[Evaluation], k: int) -> Cell:
    """pass@k of a group: a run's stored value and CI; several seeds pool their samples per problem."""
    if not evals:
        return None
    if len(evals) == 1:
        e = evals[0]
        return Interval(e.pass_at_k, e.ci_low, e.ci_high)
    results = [per_problem_results(e) for e in evals]
    if any(r is None for r in results):
        return Interval(sum(e.pass_at_k for e in evals) / len(evals))
    pooled: PerProblem = {}
    for result in results:
        for task, outcomes in (result or {}).items():
            pooled.setdefault(task, []).extend(outcomes)
    summary = summarize(pooled, [k])
    return Interval(summary[0].value, summary[0].ci_low, summary[0].ci_high) if summary else None


def seed_mean_cell(evals: Sequence[Evaluation]) -> Cell:
    """pass@k of each seed's run, averaged over seeds, with its 95 % t-interval over seeds (≥ 2 seeds)."""
    if len(evals) < 2:
        return None
    s = seed_interval([e.pass_at_k for e in evals])
    return Interval(s.mean, s.low, s.high)


WITHIN_NOISE, BEYOND_NOISE = "within seed noise", "beyond seed noise"


def _seed_pairs(
    base: Sequence[Evaluation], other: Sequence[Evaluation], runs: Mapping[int, Run]
) -> list[tuple[Evaluation, Evaluation]]:
    """Pairs (baseline eval, other eval) by equal seed; with no seed in common, by seed order."""
    seed_of = {e.run_id: runs[e.run_id].seed for e in (*base, *other)}
    by_seed_b = {seed_of[e.run_id]: e for e in other}
    common = [(e, by_seed_b[seed_of[e.run_id]]) for e in base if seed_of[e.run_id] in by_seed_b]
    return common or list(zip(base, other, strict=False))


def _p(test: SignedTest | None, *, floor: bool = False) -> Cell:
    if test is None:
        return None
    return PValue(test.p, test.test, test.p_min if floor else None)


def paired(
    base: Sequence[Evaluation], other: Sequence[Evaluation], k: int, runs: Mapping[int, Run]
) -> Paired | None:
    """`paired_comparison` of other against the baseline, seed i with seed i; None without per-problem results,
    without problems in common, or with k larger than some problem's samples."""
    pairs = _seed_pairs(base, other, runs)
    a = [per_problem_results(e) for e, _ in pairs]
    b = [per_problem_results(e) for _, e in pairs]
    if not pairs or any(r is None for r in (*a, *b)):
        return None
    try:
        return paired_comparison([r or {} for r in a], [r or {} for r in b], k)
    except ValueError:
        return None


def paired_cells(comparison: Paired | None, *, seeds: bool) -> list[Cell]:
    """Δ (paired, over problems) and its p; with `seeds` also the per-seed Δ with its t-interval, its p (with
    the smallest attainable one) and whether the difference is within seed noise."""
    if comparison is None:
        return [None] * (5 if seeds else 2)
    c = comparison
    cells: list[Cell] = [Interval(c.diff, c.ci_low, c.ci_high), _p(c.problem_test)]
    if seeds:
        noise = {None: None, True: WITHIN_NOISE, False: BEYOND_NOISE}[c.within_seed_noise]
        cells += [Interval(c.seed_diff.mean, c.seed_diff.low, c.seed_diff.high), _p(c.seed_test, floor=True)]
        cells.append(noise)
    return cells


TESTS_NOTE = (
    "p: two-sided, over the problems where the two differ (ties dropped), with the test named in the cell: the"
    " exact sign test when every such difference has one size (greedy pass@1: ±1), else the exact Wilcoxon"
    " signed-rank distribution over sign flips (ties get mid-ranks; normal approximation only beyond 500"
    " differences); – when every problem ties."
)


def results_note(baseline: str, by_algorithm: bool, n_seeds: int = 1) -> str:
    if not by_algorithm:
        return (
            "pass@k: unbiased estimator (Chen et al. 2021) averaged over problems, 95% bootstrap CI over problems."
            f" Δ: paired difference with the baseline {baseline} (mean over problems of row − baseline), 95%"
            f" paired bootstrap CI over problems. {TESTS_NOTE} One seed per run: the spread between training"
            " seeds is not measured (queue 3 or more seeds to see it)."
        )
    return (
        "pass@k: unbiased estimator (Chen et al. 2021); the seeds' samples pooled per problem, averaged over"
        " problems, 95% bootstrap CI over problems. seed mean: each seed's pass@k averaged over seeds, 95%"
        f" t-interval over seeds. Δ: paired difference with the baseline {baseline}, seed i paired with seed i"
        f" (mean over problems of the seed-averaged row − baseline), 95% paired bootstrap CI over problems. {TESTS_NOTE}"
        " Δ seeds: the per-seed differences' mean with a 95% t-interval over seeds; p seeds: the same tests over"
        f" the per-seed differences, whose smallest attainable value (min) is 2/2^S with S seeds ({n_seeds} seeds:"
        f" {2 / 2**n_seeds:.3g}). within seed noise: that t-interval contains 0, so the seeds do not agree on the"
        " sign of the difference beyond their own spread."
    )


def results_table(
    groups: Sequence[Group],
    evaluations: Mapping[int, Sequence[Evaluation]],
    baseline: int,
    *,
    by_algorithm: bool,
) -> Table:
    """pass@k with CI for every (benchmark, k), and Δ and p against `groups[baseline]`; with `by_algorithm`
    (several seeds) also the seed-level mean, Δ, p and the seed-noise verdict."""
    keys = sorted({(e.benchmark, e.k) for evals in evaluations.values() for e in evals})
    runs = {r.id or 0: r for g in groups for r in g.runs}
    columns = ["algorithm" if by_algorithm else "run", "seeds"]
    for bench, k in keys:
        name = f"{bench} pass@{k}"
        columns += [name, f"{name} seed mean"] if by_algorithm else [name]
        columns += [f"Δ {name}", f"p {name}"]
        if by_algorithm:
            columns += [f"Δ seeds {name}", f"p seeds {name}", f"seed noise {name}"]
    rows: list[tuple[Cell, ...]] = []
    for i, group in enumerate(groups):
        cells: list[Cell] = [group.label, ",".join(str(r.seed) for r in group.runs)]
        for key in keys:
            mine = _evals(group, evaluations, key)
            cells.append(pass_cell(mine, key[1]))
            if by_algorithm:
                cells.append(seed_mean_cell(mine))
            if i == baseline:
                cells += ["baseline", *([None] * (4 if by_algorithm else 1))]
            else:
                comparison = paired(_evals(groups[baseline], evaluations, key), mine, key[1], runs)
                cells += paired_cells(comparison, seeds=by_algorithm)
        rows.append(tuple(cells))
    label = groups[baseline].label if groups else "–"
    n_seeds = max((len(g.runs) for g in groups), default=1)
    note = results_note(label, by_algorithm, n_seeds) if keys else ""
    return Table(tuple(columns), tuple(rows), note=note)


def config_diff_table(baseline: Run, others: Sequence[Run]) -> Table:
    """Dotted recipe paths where any run differs from the baseline: the baseline's value, then each run's
    (`=` where it equals the baseline's)."""
    base = recipe_from_json(baseline.recipe_json, f"run {baseline.id}")
    diffs: list[dict[str, list[Any]]] = []
    for run in others:
        try:
            diffs.append(recipe_diff(base, recipe_from_json(run.recipe_json, f"run {run.id}")))
        except RecipeError:  # a recipe frozen by an older version: show what can be shown
            diffs.append({})
    paths = sorted({p for d in diffs for p in d})
    flat = {p: next(d[p][0] for d in diffs if p in d) for p in paths}
    columns = ("field", f"#{baseline.id} {baseline.name}", *(f"#{r.id} {r.name}" for r in others))
    rows = [(p, _show(flat[p]), *(_show(d[p][1]) if p in d else "=" for d in diffs)) for p in paths]
    return Table(columns, tuple(rows))


def _show(value: Any) -> str:
    return "–" if value is None else str(value)


@dataclass(frozen=True)
class CompareTables:
    results: Table
    config: Table
    labels: list[str]
    """The rows' labels, for the baseline selector."""
    baseline: int


def compare_tables(
    runs: Sequence[Run],
    evaluations: Mapping[int, Sequence[Evaluation]],
    baseline: int | None,
    *,
    is_set: bool,
) -> CompareTables:
    """Both tables of the compare screen. A comparison set with several seeds per algorithm gets one row per
    algorithm; `baseline` (a row index) defaults to the ntp row. The config diff is against the baseline row's
    first run."""
    by_algorithm = is_set and len({r.algorithm for r in runs}) < len(runs)
    groups = make_groups(runs, by_algorithm=by_algorithm)
    if baseline is None or baseline >= len(groups):
        baseline = default_baseline(groups)
    results = results_table(groups, evaluations, baseline, by_algorithm=by_algorithm)
    config = Table((), ())
    if groups:
        first = groups[baseline].runs[0]
        try:
            config = config_diff_table(first, [r for r in runs if r.id != first.id])
        except StudioError as exc:
            config = Table(("problem",), ((str(exc),),))
    return CompareTables(results, config, [g.label for g in groups], baseline)
