"""Hostile recipes are RecipeErrors naming the problem: size, nesting, value count, encoding, duplicate keys,
strict and finite numbers on every numeric field, field paths, and a capped error listing."""

from __future__ import annotations

import json
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Any

import pytest
from pydantic import BaseModel

from tests.unit.test_recipe import BASE
from wmtp_studio import strict_yaml
from wmtp_studio.errors import RecipeError
from wmtp_studio.recipe import MAX_ERRORS, Recipe, load_recipe, load_recipe_text, recipe_from_json

ALGORITHM_LINE = {
    "CriticConfig": "{name: critic-wmtp}",
    "Stage1Config": "{name: critic-wmtp}",
    "Rho1Config": "{name: rho1-wmtp, reference: some/model}",
    "GRPOConfig": "{name: grpo-wmtp}",
}


def error_of(text: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, "r.yaml", overrides, env={})
    return str(info.value)


def names_field(msg: str, path: str) -> bool:
    return re.search(rf"^\s*{re.escape(path)}: ", msg, re.M) is not None


@pytest.mark.parametrize(
    ("text", "line"),
    [
        pytest.param(
            BASE + "x: " + "[" * 600 + "]" * 600 + "\n", 7, id="flow-600"
        ),  # the RecursionError
        pytest.param(BASE + "x: " + "{a: " * 600 + "1" + "}" * 600 + "\n", 7, id="flow-mappings-600"),
        # block style: the root mapping is level 1, so key k31 (line 38) opens level 33
        pytest.param(
            BASE + "".join(" " * d + f"k{d}:\n" for d in range(40)) + " " * 40 + "v\n", 38, id="block-40"
        ),
    ],
)
def test_deep_nesting_is_refused_with_its_line(text: str, line: int) -> None:
    msg = error_of(text)
    assert msg.startswith("r.yaml: not valid YAML (nested deeper than 32 levels"), msg
    assert f'in "r.yaml", line {line},' in msg


def test_deep_nesting_through_overrides_aliases_and_json_is_refused() -> None:
    msg = error_of(BASE, ("train.steps=" + "[" * 600 + "]" * 600,))
    assert "override train.steps" in msg and "nested deeper than 32 levels" in msg
    msg = error_of(BASE, ("train." + "a." * 600 + "b=1",))  # the dotted path builds the nesting
    assert msg == "r.yaml: nested deeper than 32 levels"
    # each alias adds 20 levels that the composer does not see: 3 of them nest 60 levels deep
    chain = "a0: &a0 " + "[" * 20 + "]" * 20 + "\n"
    chain += "".join(f"a{i}: &a{i} " + "[" * 19 + f"*a{i - 1}" + "]" * 19 + "\n" for i in range(1, 3))
    assert error_of(BASE + chain) == "r.yaml: nested deeper than 32 levels"
    with pytest.raises(RecipeError, match=r"^recipe.json: nested deeper than 32 levels$"):
        recipe_from_json("[" * 100_000 + "]" * 100_000, "recipe.json")  # json.loads' own RecursionError


def test_alias_bombs_and_long_lists_are_refused() -> None:
    # 9 levels of 10 aliases each expand to 10**9 values from 600 bytes
    bomb = "b0: &b0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    bomb += "".join(f"b{i}: &b{i} [{', '.join([f'*b{i - 1}'] * 10)}]\n" for i in range(1, 9))
    assert (
        error_of(BASE + bomb) == f"r.yaml: more than {strict_yaml.MAX_VALUES} values (YAML aliases expanded)"
    )
    msg = error_of(BASE + "eval: {k: [" + "1, " * 20_000 + "1]}\n")  # 60 KB, 20,001 values
    assert f"more than {strict_yaml.MAX_VALUES} values" in msg and "line 7" in msg


def test_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.yaml"
    with open(path, "wb") as fh:  # 50 MB, sparse: only the first 64 KiB + 1 byte are read
        fh.write(BASE.encode())
        fh.truncate(50 * 1024 * 1024)
    with pytest.raises(RecipeError) as info:
        load_recipe(path, env={})
    assert str(info.value) == f"{path}: larger than the 64 KiB limit of a recipe"
    msg = error_of(BASE + "#" * (64 * 1024))  # text from the editor: the same limit, in characters
    assert msg == f"r.yaml: {len(BASE) + 64 * 1024} characters, larger than the 64 KiB limit of a recipe"


def test_non_utf8_file_names_the_line_and_byte(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(BASE.replace("name: unit", "name: caf\xe9").encode("latin-1"))
    with pytest.raises(RecipeError) as info:
        load_recipe(path, env={})
    assert str(info.value) == f"{path}: not UTF-8 text (line 1: byte 0xe9)"


def test_duplicate_keys_and_sections_are_refused_with_both_lines() -> None:
    msg = error_of(BASE + "train: {steps: 9}\n")  # a second `train` section would silently win
    assert "duplicate key 'train' (first at line 5)" in msg and 'in "r.yaml", line 7' in msg
    msg = error_of(BASE.replace("{steps: 5}", "{steps: 5, batch_size: 2, steps: 6}"))
    assert "duplicate key 'steps' (first at line 5)" in msg
    # a merged mapping's keys may be overridden: that is YAML's own way of reusing a section, not a duplicate
    ok = load_recipe_text(BASE + "eval: {<<: {n_samples: 2, k: [1]}, n_samples: 3}\n", "r", env={})
    assert (ok.eval.n_samples, ok.eval.k) == (3, [1])


def test_yaml_constructor_errors_are_recipe_errors() -> None:
    for value in (
        "2024-13-45",
        "!!timestamp 2024-99-99",
        "!!binary @@@",
        "!!python/name:os.system",
        "!!int x",
        "!!set [a]",  # this one and the next once raised TypeError in our loader
        "!!map [[1, 2]]",
    ):
        msg = error_of(BASE.replace("name: unit", f"name: {value}"))
        assert msg.startswith("r.yaml: not valid YAML ("), (value, msg)
    # unprintable characters are refused by YAML's reader
    assert "not valid YAML" in error_of(BASE + "x: \x00\n")


def test_unknown_keys_named_like_an_algorithm_keep_their_path() -> None:
    msg = error_of(BASE.replace("{steps: 5}", "{steps: 5, ntp: 1}"))
    assert names_field(msg, "train.ntp"), msg  # was `train: Extra inputs ...`
    msg = error_of(BASE + "critic-wmtp: {beta: 1}\n")
    assert names_field(msg, "critic-wmtp"), msg
    msg = error_of(BASE.replace("{name: baseline-mtp}", "{name: critic-wmtp, rho1-wmtp: 1}"))
    assert names_field(msg, "algorithm.rho1-wmtp"), msg  # the discriminator tag alone is dropped


@pytest.mark.parametrize(
    ("override", "path"),
    [  # the values of the issue, each of which crashed or ruined training later
        ("train.epochs=.inf", "train.epochs"),
        ("optim.lr=.inf", "optim.lr"),
        ("optim.lr=1e38", "optim.lr"),
        ("optim.betas=[.nan, .nan]", "optim.betas.0"),
        ("optim.betas=[1.5, 0.9]", "optim.betas.0"),
        ("train.steps=true", "train.steps"),
        ("train.seed=-1", "train.seed"),
        ("model.tiny.intermediate_size=0", "model.tiny.intermediate_size"),
    ],
)
def test_values_that_crash_training_later_are_refused(override: str, path: str) -> None:
    text = BASE.replace("{steps: 5}", "{epochs: 1}") if "epochs" in override else BASE
    assert names_field(error_of(text, (override,)), path)


def test_clip_ranges_must_be_ordered() -> None:
    msg = error_of(BASE.replace("{name: baseline-mtp}", "{name: critic-wmtp, w_min: 3, w_max: 2}"))
    assert "algorithm: Value error, w_min (3.0) must be at most w_max (2.0)" in msg
    msg = error_of(BASE.replace("{name: baseline-mtp}", "{name: rho1-wmtp, reference: r, eps: 4, w_max: 3}"))
    assert "algorithm: Value error, eps (4.0) must be at most w_max (3.0)" in msg


def _scalar(annotation: Any) -> Any:
    """int, float, bool, (list | tuple, element) or a model, with Annotated and Optional stripped."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _scalar(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _scalar(args[0]) if len(args) == 1 else None
    if origin in (list, tuple):
        return (origin, _scalar(typing.get_args(annotation)[0]))
    return annotation


def numeric_fields() -> list[tuple[str, str, Any]]:
    """(owner model, dotted path, scalar kind) of every int, float and bool field, nested ones and those of every
    algorithm included."""
    out: list[tuple[str, str, Any]] = []

    def walk(cls: type[BaseModel], prefix: str, owner: str) -> None:
        for name, field in cls.model_fields.items():
            kind = _scalar(field.annotation)
            members = [m for m in typing.get_args(field.annotation) if isinstance(m, type)]
            models = [kind] if isinstance(kind, type) and issubclass(kind, BaseModel) else members
            if kind in (int, float, bool) or (isinstance(kind, tuple) and kind[1] in (int, float)):
                out.append((owner, prefix + name, kind))
            for m in models:
                if issubclass(m, BaseModel):
                    walk(m, f"{prefix}{name}.", m.__name__ if m.__name__ in ALGORITHM_LINE else owner)

    walk(Recipe, "", "Recipe")
    return out


def test_every_numeric_field_is_strict_and_finite() -> None:
    fields = numeric_fields()
    assert len(fields) >= 60, len(fields)  # the walk reaches nested sections and every algorithm's fields
    checked = 0
    for owner, path, kind in fields:
        text = BASE.replace("{name: baseline-mtp}", ALGORITHM_LINE.get(owner, "{name: baseline-mtp}"))
        if kind is float:
            bad, where = [".inf", "-.inf", ".nan", "true", "1e400"], path
        elif kind is int:
            bad, where = ["true", "2.0", "'2'", "2147483648", ".inf"], path
        elif kind is bool:
            bad, where = ["1", "'yes'", "null"], path
        else:  # a list or tuple of numbers: the element is named
            element, count = (".nan" if kind[1] is float else "true"), (2 if kind[0] is tuple else 4)
            bad, where = [f"[{', '.join([element] * count)}]"], path + ".0"
        for value in bad:
            msg = error_of(text, (f"{path}={value}",))
            assert names_field(msg, where), (path, value, msg)
            checked += 1
    assert checked >= 250


def test_error_listing_is_capped() -> None:
    extra = "".join(f"extra_{i}: 1\n" for i in range(MAX_ERRORS + 15))
    msg = error_of(BASE + extra)
    lines = msg.splitlines()
    assert lines[0] == "r.yaml: invalid recipe" and len(lines) == 1 + MAX_ERRORS + 1
    assert lines[-1] == "  ... and 15 more"
    msg = error_of(BASE + "x" * 5000 + ": 1\n")  # a huge key is named, not printed in full
    assert max(len(line) for line in msg.splitlines()) <= 200


def test_frozen_recipe_json_is_held_to_the_same_rules() -> None:
    good = load_recipe_text(BASE, "r", env={})
    data = json.loads(good.canonical_json())
    data["optim"]["lr"] = float("inf")
    with pytest.raises(RecipeError, match=r"optim.lr: Input should be less than or equal to 1"):
        recipe_from_json(json.dumps(data), "recipe.json")  # Python's json writes and reads `Infinity`
