"""The compare screen's tables, computed from stored runs and evaluations (pure; no Textual, no database).

Rows are runs, or algorithms when a comparison set has several seeds: then a row pools its seeds and the paired
test against the baseline pairs seed i with seed i (`wmtp_studio.evaluate.passk.paired_comparison`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from wmtp_studio.compare import recipe_diff
from wmtp_studio.errors import RecipeError, StudioError
from wmtp_studio.evaluate.passk import paired_comparison, summarize
from wmtp_studio.models import Evaluation, Run
from wmtp_studio.recipe import recipe_from_json
from wmtp_studio.tui.export import Cell, Interval, Table

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


def _seed_pairs(
    base: Sequence[Evaluation], other: Sequence[Evaluation], runs: Mapping[int, Run]
) -> list[tuple[Evaluation, Evaluation]]:
    """Pairs (baseline eval, other eval) by equal seed; with no seed in common, by seed order."""
    seed_of = {e.run_id: runs[e.run_id].seed for e in (*base, *other)}
    by_seed_b = {seed_of[e.run_id]: e for e in other}
    common = [(e, by_seed_b[seed_of[e.run_id]]) for e in base if seed_of[e.run_id] in by_seed_b]
    return common or list(zip(base, other, strict=False))


def paired_cells(
    base: Sequence[Evaluation], other: Sequence[Evaluation], k: int, runs: Mapping[int, Run]
) -> tuple[Cell, Cell]:
    """(diff other − baseline with its paired CI, Wilcoxon p over problems); no value without per-problem
    results, without problems in common, or (p) when every problem ties."""
    pairs = _seed_pairs(base, other, runs)
    a = [per_problem_results(e) for e, _ in pairs]
    b = [per_problem_results(e) for _, e in pairs]
    if not pairs or any(r is None for r in (*a, *b)):
        return None, None
    try:
        paired = paired_comparison([r or {} for r in a], [r or {} for r in b], k)
    except ValueError:  # no problem in common, or k larger than some problem's samples
        return None, None
    return Interval(paired.diff, paired.ci_low, paired.ci_high), paired.wilcoxon_p


def results_note(baseline: str, by_algorithm: bool) -> str:
    pooling = " An algorithm row pools the samples of its seeds per problem." if by_algorithm else ""
    pairing = ", seed i paired with seed i" if by_algorithm else ""
    return (
        "pass@k: unbiased estimator (Chen et al. 2021) averaged over problems, 95% bootstrap CI over problems."
        f"{pooling} Δ: paired difference with the baseline {baseline} (mean over problems of row − baseline"
        f"{pairing}), 95% paired bootstrap CI over problems. p: two-sided Wilcoxon signed-rank test over"
        " problems, ties dropped; – when every problem ties."
    )


def results_table(
    groups: Sequence[Group],
    evaluations: Mapping[int, Sequence[Evaluation]],
    baseline: int,
    *,
    by_algorithm: bool,
) -> Table:
    """pass@k with CI for every (benchmark, k), and Δ and p against `groups[baseline]`."""
    keys = sorted({(e.benchmark, e.k) for evals in evaluations.values() for e in evals})
    runs = {r.id or 0: r for g in groups for r in g.runs}
    columns = ["algorithm" if by_algorithm else "run", "seeds"]
    for bench, k in keys:
        columns += [f"{bench} pass@{k}", f"Δ {bench} pass@{k}", f"p {bench} pass@{k}"]
    rows: list[tuple[Cell, ...]] = []
    for i, group in enumerate(groups):
        cells: list[Cell] = [group.label, ",".join(str(r.seed) for r in group.runs)]
        for key in keys:
            mine = _evals(group, evaluations, key)
            cells.append(pass_cell(mine, key[1]))
            if i == baseline:
                cells += ["baseline", None]
            else:
                cells += paired_cells(_evals(groups[baseline], evaluations, key), mine, key[1], runs)
        rows.append(tuple(cells))
    label = groups[baseline].label if groups else "–"
    return Table(tuple(columns), tuple(rows), note=results_note(label, by_algorithm) if keys else "")


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
