"""Every shipped recipe family differs only in `algorithm` (METHOD.md, Fair comparison): same model, tokenizer, data
source and file, budget, optimiser and evaluation for every algorithm of the family."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from wmtp_studio.compare import expand
from wmtp_studio.recipe import Recipe, load_recipe
from wmtp_studio.recipe_algorithms import ALGORITHMS
from wmtp_studio.submit import QUICKSTART_ALGORITHMS, quickstart_recipes

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def without_algorithm(recipe: Recipe) -> dict[str, Any]:
    """The validated recipe, defaults included, with the algorithm section and the name (a label) removed. An ntp
    recipe is stored with one head (its coefficients cut to head 0's): the MTP heads' fields are compared as
    head 0's."""
    data = recipe.model_dump(mode="json")
    del data["algorithm"], data["name"]
    if recipe.algorithm.name == "ntp":
        data["model"]["n_heads"] = "any"
        if data["model"]["head_coefficients"] is not None:
            data["model"]["head_coefficients"] = [*data["model"]["head_coefficients"][:1], "any"]
    return data


def comparable(a: dict[str, Any], b: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """a and b with the heads an ntp side does not have taken from the other side."""
    for x, y in ((a, b), (b, a)):
        if x["model"]["n_heads"] == "any":
            x["model"]["n_heads"] = y["model"]["n_heads"]
            if x["model"]["head_coefficients"] is not None and y["model"]["head_coefficients"] is not None:
                x["model"]["head_coefficients"] = (
                    x["model"]["head_coefficients"][:1] + y["model"]["head_coefficients"][1:]
                )
    return a, b


@pytest.mark.parametrize("prefix", ["tiny", "mbpp-1b"])
def test_ntp_is_stored_with_one_head(prefix: str) -> None:
    for r in shipped(prefix).values():
        if r.algorithm.name == "ntp":
            assert r.model.n_heads == 1
            assert r.model.head_coefficients is None or len(r.model.head_coefficients) == 1
        else:
            assert r.model.n_heads > 1
            assert r.model.head_coefficients is None or len(r.model.head_coefficients) == r.model.n_heads


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
        a, b = comparable(without_algorithm(first), without_algorithm(recipe))
        assert a == b, f"{name} vs {first_name}: {first_difference(b, a)}"


def test_the_quickstart_fine_tunes_differ_only_in_algorithm() -> None:
    _, finetune = quickstart_recipes()
    expanded = [r for r, _ in expand(finetune, QUICKSTART_ALGORITHMS, [0])]
    assert [r.algorithm.name for r in expanded] == list(QUICKSTART_ALGORITHMS)
    for recipe in expanded[1:]:
        a, b = comparable(without_algorithm(recipe), without_algorithm(expanded[0]))
        assert a == b


def test_the_mbpp_family_reads_one_data_file_on_the_train_split() -> None:
    family = shipped("mbpp-1b")
    assert {(r.data.source, r.data.path, r.data.split) for r in family.values()} == {
        ("mbpp", "google-research-datasets/mbpp", "train")
    }
