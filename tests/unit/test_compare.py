"""Comparison sets: expanded recipes differ from the base only in algorithm, seed and name."""

from __future__ import annotations

from pathlib import Path

import pytest

from wmtp_studio.compare import expand, recipe_diff, run_name
from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import load_recipe
from wmtp_studio.recipe_algorithms import ALGORITHMS

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_recipe_diff_lists_changed_leaves_with_both_values() -> None:
    a = load_recipe(RECIPES / "tiny-baseline-mtp.yaml")
    b = load_recipe(
        RECIPES / "tiny-baseline-mtp.yaml", ["optim.lr=0.1", "model.head_coefficients=[1, 1, 1, 1]"]
    )
    assert recipe_diff(a, a) == {}
    assert recipe_diff(a, b) == {
        "model.head_coefficients": [[1.0, 0.5, 0.25, 0.125], [1.0, 1.0, 1.0, 1.0]],
        "optim.lr": [0.003, 0.1],
    }
    # fields of another algorithm's section are present on one side only
    c = load_recipe(RECIPES / "tiny-ntp.yaml", ["algorithm.name=rho1-wmtp", "algorithm.reference=ref"])
    diff = recipe_diff(a, c)
    assert diff["algorithm.name"] == ["baseline-mtp", "rho1-wmtp"]
    assert diff["algorithm.reference"] == [None, "ref"]


def test_expand_every_algorithm_three_seeds_differ_only_in_the_factor() -> None:
    base = load_recipe(RECIPES / "tiny-rho1-wmtp.yaml")
    out = expand(base, ALGORITHMS, [0, 1, 2])
    assert len(out) == 3 * len(ALGORITHMS) and {"grad-wmtp", "grpo-wmtp"} <= set(ALGORITHMS)
    assert [(r.algorithm.name, r.train.seed) for r, _ in out] == [
        (a, s) for a in ALGORITHMS for s in (0, 1, 2)
    ]
    assert len({r.name for r, _ in out}) == 3 * len(ALGORITHMS)
    for recipe, diff in out:
        assert diff == recipe_diff(base, recipe)
        # ntp's one head is part of its algorithm, and its stored recipe says so
        heads = ("model.n_heads", "model.head_coefficients") if recipe.algorithm.name == "ntp" else ()
        assert all(p in ("name", "train.seed", *heads) or p.startswith("algorithm.") for p in diff)
        assert (recipe.train.seed == base.train.seed) == ("train.seed" not in diff)
        if heads:
            assert (diff["model.n_heads"], diff["model.head_coefficients"]) == (
                [4, 1],
                [[1.0, 0.5, 0.25, 0.125], [1.0]],
            )
        # the rest of the recipe is the base's, section by section
        assert recipe.model.model_copy(update={"n_heads": 4, "head_coefficients": None}) == (
            base.model.model_copy(update={"head_coefficients": None})
        )
        for section in ("tokenizer", "data", "optim", "eval", "tracking"):
            assert getattr(recipe, section) == getattr(base, section)
        assert recipe.train.model_copy(update={"seed": 0}) == base.train.model_copy(update={"seed": 0})
    names = {(r.algorithm.name, r.train.seed): r.name for r, _ in out}
    assert names["ntp", 1] == "tiny-ntp-s1"  # the base's own algorithm suffix is dropped
    assert names["rho1-wmtp", 2] == "tiny-rho1-wmtp-s2"


def test_base_algorithm_section_is_kept_others_get_defaults() -> None:
    base = load_recipe(RECIPES / "tiny-rho1-wmtp.yaml", ["algorithm.ratio=0.3"])
    out = {r.algorithm.name: (r, d) for r, d in expand(base, ["critic-wmtp", "rho1-wmtp"], [0])}
    rho1, rho1_diff = out["rho1-wmtp"]
    assert rho1.algorithm == base.algorithm  # reference, ratio 0.3, ... kept
    assert rho1_diff == {"name": ["tiny-rho1-wmtp", "tiny-rho1-wmtp-s0"]}
    critic, critic_diff = out["critic-wmtp"]
    assert (
        critic.algorithm.model_dump()
        == load_recipe(RECIPES / "tiny-ntp.yaml", ["algorithm.name=critic-wmtp"]).algorithm.model_dump()
    )
    assert critic_diff["algorithm.ratio"] == [0.3, None]
    assert critic_diff["algorithm.beta"] == [None, 1.0]


def test_rho1_needs_a_rho1_base() -> None:
    base = load_recipe(RECIPES / "tiny-ntp.yaml")
    with pytest.raises(StudioError, match=r"rho1-wmtp needs a reference.*algorithm\.reference=PATH"):
        expand(base, ["ntp", "rho1-wmtp"], [0])
    # without rho1 any base works; with overrides that make it rho1 the reference is used
    assert len(expand(base, ["ntp", "baseline-mtp", "critic-wmtp"], [0])) == 3
    made = load_recipe(RECIPES / "tiny-ntp.yaml", ["algorithm.name=rho1-wmtp", "algorithm.reference=/ref"])
    rho1 = [r for r, _ in expand(made, ALGORITHMS, [0]) if r.algorithm.name == "rho1-wmtp"]
    assert rho1[0].algorithm.model_dump()["reference"] == "/ref"


@pytest.mark.parametrize(
    ("algorithms", "seeds", "message"),
    [
        (
            ["ntp", "mtp", "wmtp"],
            [0],
            r"unknown algorithm\(s\): 'mtp', 'wmtp'; valid ones are ntp, baseline-mtp",
        ),
        ([], [0], "at least one algorithm"),
        (["ntp", "ntp"], [0], "algorithms are repeated"),
        (["ntp"], [], "at least one seed"),
        (["ntp"], [1, 2, 1], "seeds are repeated"),
    ],
)
def test_bad_factor_is_refused(algorithms: list[str], seeds: list[int], message: str) -> None:
    base = load_recipe(RECIPES / "tiny-ntp.yaml")
    with pytest.raises(StudioError, match=message):
        expand(base, algorithms, seeds)


def test_run_name() -> None:
    base = load_recipe(RECIPES / "tiny-ntp.yaml", ["name=exp"])
    assert run_name(base, "critic-wmtp", 3) == "exp-critic-wmtp-s3"
