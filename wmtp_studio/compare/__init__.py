"""Comparison sets: one base recipe expanded over algorithms x seeds into recipes that differ only in that factor.

Headless, shared by the dashboard, the CLIs, the report and the MLflow forwarder: this module expands sets;
tables.py computes the results tables (pass@k with the paired tests of evaluate/passk.py) and export.py writes
them (and overlaid curves) as Markdown, LaTeX, CSV, PNG or SVG.

METHOD.md ("Fair comparison"): everything but the declared factor is equal, so each expanded recipe differs from
the base only in `algorithm`, `train.seed` and `name` (and the ntp control in its one head, `model.n_heads`), and the
difference is recorded (`recipe_diff`).

The algorithm section of an expanded recipe is the base recipe's own section when the algorithm is the base's,
and otherwise that algorithm's section with every default. `rho1-wmtp` has no default: it needs a reference
model. Rule: a set that includes `rho1-wmtp` must be expanded from a rho1-wmtp recipe, whose section (reference,
mode, ratio, ...) is kept; any other base is refused with a message saying how to make it one
(`--set algorithm.name=rho1-wmtp --set algorithm.reference=PATH`). A reference is never guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import Recipe, parse_recipe
from wmtp_studio.recipe_algorithms import ALGORITHMS

FACTOR = "algorithm x seed"


def recipe_diff(a: Recipe, b: Recipe) -> dict[str, list[Any]]:
    """{dotted path: [value in a, value in b]} for every leaf of the JSON dumps that differs; a path present in
    only one recipe (another algorithm's fields) has None on the other side. Lists are compared whole."""
    flat_a, flat_b = _flatten(a.model_dump(mode="json")), _flatten(b.model_dump(mode="json"))
    return {
        path: [flat_a.get(path), flat_b.get(path)]
        for path in sorted(flat_a.keys() | flat_b.keys())
        if flat_a.get(path, _MISSING) != flat_b.get(path, _MISSING)
    }


_MISSING = object()


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat |= _flatten(value, f"{path}.")
        else:
            flat[path] = value
    return flat


def check_factor(algorithms: Sequence[str], seeds: Sequence[int]) -> None:
    """Raise StudioError unless `algorithms` are known, distinct and non-empty and `seeds` distinct and non-empty."""
    if not algorithms:
        raise StudioError(f"give at least one algorithm (valid: {', '.join(ALGORITHMS)})")
    unknown = [a for a in algorithms if a not in ALGORITHMS]
    if unknown:
        raise StudioError(
            f"unknown algorithm(s): {', '.join(map(repr, unknown))}; valid ones are {', '.join(ALGORITHMS)}"
        )
    if len(set(algorithms)) != len(algorithms):
        raise StudioError(f"algorithms are repeated in {', '.join(algorithms)}; list each once")
    if not seeds:
        raise StudioError("give at least one seed, e.g. --seeds 0,1,2")
    if len(set(seeds)) != len(seeds):
        raise StudioError(f"seeds are repeated in {', '.join(map(str, seeds))}; list each once")


def _algorithm_section(base: Recipe, algorithm: str) -> dict[str, Any]:
    if base.algorithm.name == algorithm:
        return base.algorithm.model_dump(mode="json")
    if algorithm == "rho1-wmtp":
        raise StudioError(
            f"rho1-wmtp needs a reference model, and the base recipe {base.name!r} is {base.algorithm.name}: "
            "expand a rho1-wmtp recipe (its reference and settings are used), or make this one rho1-wmtp with "
            "--set algorithm.name=rho1-wmtp --set algorithm.reference=PATH"
        )
    return {"name": algorithm}


def run_name(base: Recipe, algorithm: str, seed: int) -> str:
    """`<base name>-<algorithm>-s<seed>`; a base name ending in its own algorithm drops that suffix first
    (tiny-rho1-wmtp expanded to ntp, seed 0 is tiny-ntp-s0)."""
    stem = base.name.removesuffix(f"-{base.algorithm.name}") or base.name
    return f"{stem}-{algorithm}-s{seed}"


def expand(recipe: Recipe, algorithms: Sequence[str], seeds: Sequence[int]) -> list[tuple[Recipe, dict]]:
    """One recipe per (algorithm, seed), algorithm-major, each with its `recipe_diff` against `recipe`."""
    check_factor(algorithms, seeds)
    sections = {a: _algorithm_section(recipe, a) for a in algorithms}  # refuse before building anything
    base = recipe.model_dump(mode="json")
    out: list[tuple[Recipe, dict]] = []
    for algorithm in algorithms:
        for seed in seeds:
            data = base | {
                "name": run_name(recipe, algorithm, seed),
                "algorithm": sections[algorithm],
                "train": base["train"] | {"seed": seed},
            }
            expanded = parse_recipe(data, f"{recipe.name} ({algorithm}, seed {seed})")
            out.append((expanded, recipe_diff(recipe, expanded)))
    return out
