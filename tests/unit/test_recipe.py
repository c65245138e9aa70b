"""Recipes: strict validation with file + dotted path in errors, env substitution, overrides, hashing."""

from __future__ import annotations

import hashlib
import json
import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from wmtp_studio.errors import RecipeError
from wmtp_studio.recipe import Recipe, load_recipe, load_recipe_text, recipe_from_json
from wmtp_studio.recipe_algorithms import BaselineMTPConfig, CriticConfig, NTPConfig, Rho1Config
from wmtp_studio.recipe_sections import Section

RECIPES = Path(__file__).resolve().parents[2] / "recipes"

BASE = """\
name: unit
model:
  tiny: {hidden_size: 32, num_layers: 2, num_attention_heads: 4}
  n_heads: 4
train: {steps: 5}
algorithm: {name: baseline-mtp}
"""


def write(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path, overrides: tuple[str, ...] = (), env: dict[str, str] | None = None) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe(path, overrides, env={} if env is None else env)
    return str(info.value)


def test_minimal_recipe_loads_with_defaults(tmp_path: Path) -> None:
    r = load_recipe(write(tmp_path, BASE), env={})
    assert isinstance(r.algorithm, BaselineMTPConfig)
    assert r.model.tiny is not None and r.model.tiny.hidden_size == 32
    assert (r.train.steps, r.optim.lr, r.train.packing) == (5, 3e-4, False)  # 3e-4 and False are defaults
    assert r.n_heads == 4 and r.head_coefficients == [1.0, 1.0, 1.0, 1.0]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, BASE + "foo: 1\n")
    msg = error_of(path)
    assert str(path) in msg
    assert re.search(r"^\s*foo: Extra inputs are not permitted", msg, re.M), msg


def test_unknown_nested_key(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("num_attention_heads: 4}", "num_attention_heads: 4, foo: 2}"))
    msg = error_of(path)
    assert str(path) in msg
    assert re.search(r"^\s*model\.tiny\.foo: Extra inputs", msg, re.M), msg


def test_unknown_key_in_algorithm_section(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("{name: baseline-mtp}", "{name: critic-wmtp, beta2: 0.5}"))
    msg = error_of(path)
    assert str(path) in msg
    # the discriminator tag is not part of the path the user sees (not algorithm.critic-wmtp.beta2)
    assert re.search(r"^\s*algorithm\.beta2: Extra inputs", msg, re.M), msg


@pytest.mark.parametrize(
    ("algorithm", "cls"),
    [
        ("{name: ntp}", NTPConfig),
        ("{name: baseline-mtp}", BaselineMTPConfig),
        ("{name: critic-wmtp, beta: 0.5}", CriticConfig),
        ("{name: rho1-wmtp, reference: some/model, mode: weighted}", Rho1Config),
    ],
)
def test_algorithm_name_picks_its_config(tmp_path: Path, algorithm: str, cls: type) -> None:
    r = load_recipe(write(tmp_path, BASE.replace("{name: baseline-mtp}", algorithm)), env={})
    assert type(r.algorithm) is cls


def test_algorithm_fields_belong_to_their_algorithm(tmp_path: Path) -> None:
    critic = load_recipe(write(tmp_path, BASE.replace("baseline-mtp}", "critic-wmtp, beta: 0.5}")), env={})
    assert isinstance(critic.algorithm, CriticConfig)
    assert (critic.algorithm.beta, critic.algorithm.w_max, critic.algorithm.stage1.steps) == (0.5, 5.0, 200)
    # `beta` is a critic field: baseline-mtp rejects it
    msg = error_of(write(tmp_path, BASE.replace("baseline-mtp}", "baseline-mtp, beta: 0.5}"), "b.yaml"))
    assert re.search(r"^\s*algorithm\.beta: Extra inputs", msg, re.M), msg
    # rho1-wmtp requires its reference model
    msg = error_of(write(tmp_path, BASE.replace("baseline-mtp}", "rho1-wmtp}"), "c.yaml"))
    assert re.search(r"^\s*algorithm\.reference: Field required", msg, re.M), msg


def test_unknown_algorithm_name(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("baseline-mtp}", "magic-wmtp}"))
    msg = error_of(path)
    assert str(path) in msg and "algorithm" in msg and "magic-wmtp" in msg


def test_env_substitution(tmp_path: Path) -> None:
    path = write(
        tmp_path, BASE.replace("steps: 5", "steps: ${STEPS}").replace("name: unit", "name: ${N:-dflt}")
    )
    r = load_recipe(path, env={"STEPS": "7"})
    assert (r.train.steps, r.name) == (7, "dflt")  # ${N:-dflt} falls back to its default
    r = load_recipe(path, env={"STEPS": "8", "N": "mine"})
    assert (r.train.steps, r.name) == (8, "mine")  # a set variable wins over the default


def test_env_missing_variable_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("steps: 5", "steps: ${WMTP_UNIT_STEPS}"))
    msg = error_of(path, env={"OTHER": "1"})
    assert str(path) in msg and "WMTP_UNIT_STEPS" in msg


def test_secret_variables_stay_references_in_the_stored_recipe(tmp_path: Path, monkeypatch) -> None:
    text = BASE.replace("name: unit", "name: unit\ntracking: {run_name: 'x-${HF_TOKEN}', experiment: ${EXP}}")
    path = write(tmp_path, text)
    r = load_recipe(path, env={"HF_TOKEN": "hf_sentinel", "EXP": "e1"})
    # EXP does not look secret: its value is substituted as before
    assert (r.tracking.run_name, r.tracking.experiment) == ("x-${HF_TOKEN}", "e1")
    assert "hf_sentinel" not in r.canonical_json()
    assert "HF_TOKEN" in error_of(path, env={"EXP": "e1"})  # still checked: it must be set
    monkeypatch.setenv("HF_TOKEN", "hf_at_use")
    frozen = recipe_from_json(r.canonical_json(), "recipe.json")
    assert frozen == r  # read back as stored (a resume compares hashes)
    resolved = recipe_from_json(r.canonical_json(), "recipe.json", resolve_secrets=True)
    assert resolved.tracking.run_name == "x-hf_at_use"  # the trainer resolves it from its own environment


def test_secret_variables_only_fit_text_fields(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.replace("steps: 5", "steps: ${STEPS_AUTH}"))
    msg = error_of(path, env={"STEPS_AUTH": "5"})
    assert "train.steps" in msg and "${STEPS_AUTH}" in msg and "text fields" in msg


def test_dotted_overrides_are_parsed_as_yaml(tmp_path: Path) -> None:
    overrides = ("optim.lr=3e-3", "train.packing=true", "model.head_coefficients=[1,0.5,0.25,0.125]")
    r = load_recipe(write(tmp_path, BASE), overrides, env={})
    assert isinstance(r.optim.lr, float) and r.optim.lr == pytest.approx(3e-3, rel=1e-12)
    assert r.train.packing is True
    assert r.model.head_coefficients == [1.0, 0.5, 0.25, 0.125]
    assert r.head_coefficients == [1.0, 0.5, 0.25, 0.125]


def test_override_of_a_missing_key_names_its_path(tmp_path: Path) -> None:
    path = write(tmp_path, BASE)
    msg = error_of(path, ("optim.momentum=0.9",))
    assert str(path) in msg
    assert re.search(r"^\s*optim\.momentum: Extra inputs", msg, re.M), msg
    msg = error_of(path, ("train.steps=many",))  # a bad value is reported at its path too
    assert re.search(r"^\s*train\.steps: ", msg, re.M), msg


def test_fsdp_takes_chunked_ce_and_the_hidden_score(tmp_path: Path) -> None:
    # both read the unembedding's weight inside a gathered root method (tests/integration/test_fsdp.py trains them)
    path = write(tmp_path, BASE)
    r = load_recipe(path, ["train.parallel=fsdp", "train.ce_chunk=128"], env={})
    assert (r.train.parallel, r.train.ce_chunk) == ("fsdp", 128)
    grad = BASE.replace("baseline-mtp}", "grad-wmtp, score: hidden}")
    r = load_recipe(write(tmp_path, grad, "g.yaml"), ["train.parallel=fsdp"], env={})
    assert r.algorithm.name == "grad-wmtp" and getattr(r.algorithm, "score", None) == "hidden"


def test_ntp_always_trains_one_head(tmp_path: Path) -> None:
    text = BASE.replace("baseline-mtp}", "ntp}").replace(
        "\n  n_heads: 4\n", "\n  n_heads: 4\n  head_coefficients: [1, 0.5, 0.25, 0.125]\n"
    )
    r = load_recipe(write(tmp_path, text), env={})
    assert r.n_heads == 1 and r.head_coefficients == [1.0]
    # stored as it runs: the frozen recipe (and MLflow's params) say 1 head, not the 4 written in the YAML
    frozen = json.loads(r.canonical_json())["model"]
    assert (frozen["n_heads"], frozen["head_coefficients"]) == (1, [1.0])
    assert recipe_from_json(r.canonical_json(), "recipe.json") == r


def test_canonical_json_and_sha256_ignore_key_order(tmp_path: Path) -> None:
    shuffled = """\
algorithm: {name: baseline-mtp}
train: {steps: 5}
model:
  n_heads: 4
  tiny: {num_attention_heads: 4, num_layers: 2, hidden_size: 32}
name: unit
"""
    a = load_recipe(write(tmp_path, BASE, "a.yaml"), env={})
    b = load_recipe(write(tmp_path, shuffled, "b.yaml"), env={})
    assert a.canonical_json() == b.canonical_json()
    assert a.sha256() == b.sha256() == hashlib.sha256(a.canonical_json().encode()).hexdigest()
    assert json.loads(a.canonical_json())["optim"]["lr"] == 3e-4  # defaults are part of what is hashed
    c = load_recipe(write(tmp_path, BASE, "c.yaml"), ("train.steps=6",), env={})
    assert c.sha256() != a.sha256()
    assert recipe_from_json(a.canonical_json(), "recipe.json") == a


def _models_in(annotation: object) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def test_every_field_of_every_section_has_a_docstring() -> None:
    seen: dict[str, type[BaseModel]] = {}
    todo: list[type[BaseModel]] = [Recipe, *Section.__subclasses__()]
    while todo:
        cls = todo.pop()
        if cls.__name__ in seen:
            continue
        seen[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
        for field in cls.model_fields.values():
            todo.extend(_models_in(field.annotation))
    # the walk reaches the nested and the union members, not only the top level
    assert {"Recipe", "TinyModel", "Stage1Config", "CriticConfig", "Rho1Config", "GeneratedData"} <= set(seen)
    missing = [
        f"{name}.{field_name}"
        for name, cls in seen.items()
        for field_name, field in cls.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert missing == []
    assert all(issubclass(cls, Section) for cls in seen.values())  # so every section forbids unknown keys


def test_every_shipped_recipe_loads() -> None:
    paths = sorted(RECIPES.glob("*.yaml"))
    assert paths, f"no recipes in {RECIPES}"
    for path in paths:  # the Meta checkpoint's copy has no default: it lives wherever it was downloaded to
        assert isinstance(load_recipe(path, env={"WMTP_META_7B": "/models/7B_1T_4"}), Recipe), path


def test_recipe_text_is_validated_like_a_file() -> None:
    text = BASE.replace("steps: 5", "steps: ${STEPS:-7}")
    assert load_recipe_text(text, "editor", env={}).train.steps == 7
    assert load_recipe_text(text, "editor", ["train.steps=9"], env={}).train.steps == 9
    with pytest.raises(RecipeError, match=r"^editor: invalid recipe\n  train.steps"):
        load_recipe_text(BASE.replace("steps: 5", "steps: -1"), "editor", env={})


def test_eval_limits_are_recipe_fields_passed_to_the_evaluator() -> None:
    from wmtp_studio.evaluate.__main__ import recipe_request

    path = RECIPES / "tiny-ntp.yaml"
    assert load_recipe(path).eval.timeout_s is None  # default: the benchmark's published protocol
    recipe = load_recipe(
        path, ["eval.timeout_s=1.5", "eval.memory_mb=512", "eval.n_samples=4", "eval.k=[1,5,4]"]
    )
    req = recipe_request(recipe, Path("/runs/r"), "humaneval", Path("out"))
    assert (req.timeout_s, req.memory_mb, req.n, req.ks) == (1.5, 512, 4, (1, 4))  # k=5 > 4 samples: left out
    plain = recipe_request(load_recipe(path), Path("/runs/r"), "humaneval", Path("out"))
    assert (plain.timeout_s, plain.memory_mb, plain.ks) == (None, None, (1,))
    with pytest.raises(RecipeError):
        load_recipe(path, ["eval.timeout_s=0"])
