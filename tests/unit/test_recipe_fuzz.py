"""Property-based fuzz of recipe loading (hypothesis, derandomized: the same few thousand cases on every run).

YAML text, YAML structures, dotted overrides, secret values and nesting depths are generated and fed to
`load_recipe_text`, `load_recipe` and `wmtp validate` (typer's CliRunner, in-process). Properties: the only error
is a RecipeError (never a traceback); no message holds a secret value; a refused recipe's message is bounded; the
size and depth caps hold; an accepted recipe survives its canonical JSON (so it holds no inf, nan or bool-as-int).
benchmarks/bench_recipe_fuzz.py runs 10,000 random mutations of the shipped recipes with counts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from wmtp_studio import strict_yaml
from wmtp_studio.cli import app
from wmtp_studio.errors import RecipeError, StudioError
from wmtp_studio.recipe import Recipe, load_recipe, load_recipe_text, recipe_from_json

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
SHIPPED = [p.read_text() for p in sorted(RECIPES.glob("tiny-*.yaml"))]
BASE = """\
name: fuzz
model:
  tiny: {hidden_size: 32, num_layers: 2, num_attention_heads: 4}
  n_heads: 4
train: {steps: 5}
algorithm: {name: critic-wmtp}
"""
MARKER = "Zq7sEcReT"  # every secret value starts with it, so a partial echo is caught too
MAX_MESSAGE = 8_000  # 20 clipped lines of 200 characters, a YAML snippet and the secret hint fit under it
FUZZ = settings(
    derandomize=True,  # the same cases on every run and machine: CI cannot be flaky
    database=None,
    deadline=None,  # CI machines are loaded; time is the benchmark's business
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
FIELDS = [
    "name", "model.n_heads", "model.head_coefficients", "model.tiny.hidden_size", "model.tiny.intermediate_size",
    "tokenizer.vocab_size", "data.generated.seed", "data.max_examples", "train.steps", "train.epochs",
    "train.packing", "train.seed", "train.grad_clip", "train.num_threads", "optim.lr", "optim.betas",
    "optim.weight_decay", "optim.eps", "algorithm.beta", "algorithm.w_min", "algorithm.stage1.lr",
    "algorithm.name", "eval.k", "eval.top_p", "eval.temperature", "tracking.run_name", "train.ntp", "x.y.z",
]  # fmt: skip
HOSTILE = [
    ".inf", "-.inf", ".nan", "true", "no", "null", "1e38", "1e400", "-1", "0", "2147483648", "2.0", "'5'",
    "[.nan, .nan]", "[1.5, 0.9]", "[]", "{}", "2024-13-45", "!!binary AAAA", "!!set [a]", "*nope", "&a 1",
    "[" * 40 + "]" * 40, "0x10", "1_000", "~", "'3e-4'", "3e-4",
]  # fmt: skip
SYNTAX = ":-[]{}'\"#&*!|>%@`,?\t\n \\\x00\x85\u2028\ufeff"

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
)
structures = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12) | st.integers(), inner, max_size=5)
    ),
    max_leaves=40,
)
# no NUL: no environment variable can hold one
secret_values = st.text(alphabet=st.sampled_from(SYNTAX.replace("\x00", "") + "ab1"), max_size=12).map(
    lambda t: MARKER + t
)


def outcome(
    text: str, overrides: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> tuple[Recipe | None, str]:
    """(recipe, "") or (None, message); anything but a RecipeError fails the test with its traceback."""
    try:
        return load_recipe_text(text, "fuzz.yaml", overrides, env={} if env is None else env), ""
    except RecipeError as exc:
        return None, str(exc)


def check(recipe: Recipe | None, message: str, secrets: tuple[str, ...] = ()) -> None:
    kinds = ("not valid YAML", "invalid recipe", "nested deeper", "more than", "limit of a recipe")
    event("accepted" if recipe is not None else next((k for k in kinds if k in message), "other refusal"))
    if recipe is not None:
        assert recipe_from_json(recipe.canonical_json(), "recipe.json") == recipe
        return
    assert message.startswith("fuzz.yaml") and len(message) <= MAX_MESSAGE, message[:300]
    assert MARKER not in message and not any(s in message for s in secrets if s), message


@settings(FUZZ, max_examples=1000)
@given(
    base=st.sampled_from([BASE, *SHIPPED]),
    edits=st.lists(
        st.tuples(st.floats(0, 1), st.text(alphabet=st.sampled_from(SYNTAX + "ax1"), max_size=6)), max_size=4
    ),
    cut=st.floats(0, 1),
)
def test_random_text_edits(base: str, edits: list[tuple[float, str]], cut: float) -> None:
    text = base
    for where, insert in edits:
        at = int(where * len(text))
        text = text[:at] + insert + text[at:]
    if cut < 0.2:
        text = text[: int(cut * 5 * len(text))]
    check(*outcome(text))


@settings(FUZZ, max_examples=600)
@given(
    section=st.sampled_from(["train", "optim", "model", "eval", "algorithm", "extra", "data"]),
    value=structures,
    flow=st.booleans(),
)
def test_yaml_structures_in_any_section(section: str, value: Any, flow: bool) -> None:
    lines = [line for line in BASE.splitlines() if not line.startswith(f"{section}:")]
    if flow:  # JSON is YAML's flow style (NaN and Infinity read as strings)
        dumped = f"{section}: {json.dumps(value)}\n"
    else:
        dumped = yaml.safe_dump(
            {section: value}, default_flow_style=False, allow_unicode=True, sort_keys=False
        )
    check(*outcome("\n".join(lines) + "\n" + dumped))


@settings(FUZZ, max_examples=600)
@given(
    fields=st.lists(
        st.tuples(st.sampled_from(FIELDS), st.sampled_from(HOSTILE) | st.text(max_size=20)), max_size=3
    )
)
def test_hostile_overrides(fields: list[tuple[str, str]]) -> None:
    recipe, message = outcome(BASE, tuple(f"{path}={value}" for path, value in fields))
    check(recipe, message)
    if recipe is not None:  # what was accepted is sane, not merely present
        assert recipe.optim.lr <= 1 and all(0 <= b < 1 for b in recipe.optim.betas)
        assert recipe.train.seed >= 0 and (recipe.train.epochs or 1) <= 10_000


@settings(FUZZ, max_examples=600)
@given(
    value=secret_values,
    template=st.sampled_from(
        [
            "tracking: {run_name: ${X_TOKEN}}\n",
            "tracking: {run_name: ${X_TOKEN}\n",
            "tracking: [run_name: ${X_TOKEN}}\n",
            "tracking:\n  run_name: ${X_TOKEN}\n bad: 1\n",
            "tracking: {run_name: 'a-${X_TOKEN}-b'}\n",
            'tracking: {run_name: "${X_TOKEN}"}\n',
            "${X_TOKEN}: 1\n",
            "train: {steps: ${X_TOKEN}}\n",
            "eval: {k: [${X_TOKEN}]}\n",
            "${X_TOKEN}\n",
            "tracking: {experiment: ${X_TOKEN}, experiment: ${X_TOKEN}}\n",
        ]
    ),
    edit=st.text(alphabet=st.sampled_from(SYNTAX), max_size=3),
)
def test_secret_values_never_reach_a_message(value: str, template: str, edit: str) -> None:
    base = BASE.replace("train: {steps: 5}\n", "") if template.startswith("train") else BASE
    recipe, message = outcome(
        base + template.replace("${X_TOKEN}", "${X_TOKEN}" + edit, 1), env={"X_TOKEN": value}
    )
    check(recipe, message, (value,))
    if recipe is not None:
        assert MARKER not in recipe.canonical_json()  # stored as the reference


@settings(FUZZ, max_examples=100)
@given(
    depth=st.integers(1, 100) | st.sampled_from([490, 1_000, 5_000]),
    flow=st.booleans(),
    where=st.sampled_from(["x", "train", "eval"]),
)
def test_depth_cap_holds(depth: int, flow: bool, where: str) -> None:
    # levels, counting the root mapping as 1 and the innermost scalar as one more
    if flow:
        nested, deepest = f"{where}: " + "[" * depth + "1" + "]" * depth + "\n", depth + 2
    else:
        keys = "".join(" " * d + f"{where if d == 0 else f'k{d}'}:\n" for d in range(depth))
        nested, deepest = keys + " " * depth + "v\n", depth + 1
    body = "\n".join(line for line in BASE.splitlines() if not line.startswith(f"{where}:")) + "\n"
    recipe, message = outcome(body + nested)
    assert recipe is None  # x is unknown; train and eval take no lists or such keys
    check(recipe, message)
    if len(body + nested) <= strict_yaml.MAX_BYTES:
        too_deep = f"nested deeper than {strict_yaml.MAX_DEPTH} levels" in message
        assert too_deep == (deepest > strict_yaml.MAX_DEPTH), (depth, flow, message[:300])


@settings(FUZZ, max_examples=30)
@given(size=st.integers(strict_yaml.MAX_BYTES - 200, strict_yaml.MAX_BYTES + 200), as_file=st.booleans())
def test_size_cap_holds(tmp_path_factory: Any, size: int, as_file: bool) -> None:
    text = BASE + "#" * (size - len(BASE))  # a comment: valid YAML of exactly `size` characters
    if as_file:
        path = tmp_path_factory.mktemp("size") / "r.yaml"
        path.write_text(text)
        try:
            load_recipe(path, env={})
            accepted = True
        except StudioError as exc:
            assert "64 KiB limit of a recipe" in str(exc)
            accepted = False
    else:
        recipe, message = outcome(text)
        accepted = recipe is not None
        assert accepted or "64 KiB limit of a recipe" in message
    assert accepted == (size <= strict_yaml.MAX_BYTES)


@settings(FUZZ, max_examples=100)
@given(
    text=st.sampled_from([BASE, *SHIPPED]).flatmap(
        lambda b: st.tuples(
            st.just(b), st.integers(0, len(b)), st.text(alphabet=st.sampled_from(SYNTAX + "a"), max_size=4)
        )
    ),
    override=st.sampled_from(FIELDS).flatmap(lambda f: st.sampled_from(HOSTILE).map(lambda v: f"{f}={v}")),
    value=secret_values,
    raw=st.binary(max_size=3),
)
def test_wmtp_validate_exits_0_or_2(
    tmp_path_factory: Any, text: tuple[str, int, str], override: str, value: str, raw: bytes
) -> None:
    base, at, insert = text
    path = tmp_path_factory.mktemp("cli") / "r.yaml"
    body = base[:at] + insert + base[at:] + "tracking: {run_name: ${X_TOKEN}}\n"
    path.write_bytes(body.encode("utf-8", "surrogatepass") + raw)
    res = CliRunner().invoke(app, ["validate", str(path), "--set", override], env={"X_TOKEN": value})
    assert res.exit_code in (0, 2) and isinstance(res.exception, SystemExit | None), (
        res.exception,
        res.output,
    )
    assert "Traceback" not in res.output and MARKER not in res.output, res.output
