"""Every shipped recipe family differs only in `algorithm` (METHOD.md, Fair comparison): same model, tokenizer, data
source and file, budget, optimiser and evaluation for every algorithm of the family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wmtp_studio.compare import expand
from wmtp_studio.recipe import ALGORITHMS, Recipe, load_recipe
from wmtp_studio.submit import QUICKSTART_ALGORITHMS, quickstart_recipes

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def without_algorithm(recipe: Recipe) -> dict[str, Any]:
    """The validated recipe, defaults included, with the algorithm section and the name (a label) removed."""
    data = recipe.model_dump(mode="json")
    del data["algorithm"], data["name"]
    return data


def shipped(prefix: str) -> dict[str, Recipe]:
    # env={}: every ${VAR:-default} takes its default, as on a machine that sets nothing
    return {p.stem: load_recipe(p, env={}) for p in sorted(RECIPES.glob(f"{prefix}-*.yaml"))}


def first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                return first_difference(a.get(key), b.get(key), f"{path}.{key}" if path else key)
    return f"{path}: {a!r} != {b!r}"


@pytest.mark.parametrize("prefix", ["tiny", "mbpp-1b"])
def test_a_shipped_family_differs_only_in_algorithm(prefix: str) -> None:
    family = shipped(prefix)
    assert sorted(r.algorithm.name for r in family.values()) == sorted(ALGORITHMS)  # one recipe per algorithm
    (first_name, first), *rest = family.items()
    for name, recipe in rest:
        a, b = without_algorithm(first), without_algorithm(recipe)
        assert a == b, f"{name} vs {first_name}: {first_difference(b, a)}"


def test_the_quickstart_fine_tunes_differ_only_in_algorithm() -> None:
    _, finetune = quickstart_recipes()
    expanded = [r for r, _ in expand(finetune, QUICKSTART_ALGORITHMS, [0])]
    assert [r.algorithm.name for r in expanded] == list(QUICKSTART_ALGORITHMS)
    for recipe in expanded[1:]:
        assert without_algorithm(recipe) == without_algorithm(expanded[0])


def test_the_mbpp_family_reads_one_data_file_on_the_train_split() -> None:
    family = shipped("mbpp-1b")
    assert {(r.data.source, r.data.path, r.data.split) for r in family.values()} == {
        ("mbpp", "google-research-datasets/mbpp", "train")
    }
