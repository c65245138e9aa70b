"""A secret-named variable's value never appears in an error, whatever YAML surrounds it and whatever it holds;
`wmtp validate` and `wmtp-studio submit` exit 2 without it (real processes)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_recipe import BASE
from wmtp_studio.errors import RecipeError
from wmtp_studio.recipe import load_recipe_text, recipe_from_json

SECRET = "hunter2-sentinel"
# values that broke the YAML they were pasted into, so that YAML's error quoted the line holding them
VALUES = [
    f"{SECRET}: [x",
    f"[{SECRET}",
    f"{{{SECRET}",
    f"{SECRET} # c",
    f"'{SECRET}",
    f"{SECRET}\nz: 1",
    SECRET,
]


def message(text: str, value: str, overrides: tuple[str, ...] = ()) -> str:
    with pytest.raises(RecipeError) as info:
        load_recipe_text(text, "r.yaml", overrides, env={"HF_TOKEN": value})
    return str(info.value)


@pytest.mark.parametrize("value", VALUES)
@pytest.mark.parametrize(
    "tail",
    [
        "tracking: {run_name: ${HF_TOKEN}\n",  # malformed flow mapping around the reference
        "tracking: [run_name: ${HF_TOKEN}}\n",
        "tracking:\n  run_name: ${HF_TOKEN}\n bad: indent\n",
        "${HF_TOKEN}: 1\n",  # as a key
        "tracking: {run_name: x}\ntrain: {steps: ${HF_TOKEN}}\n",  # a duplicate section holding it
        "algorithm: {name: ${HF_TOKEN}}\n",  # pydantic quotes a discriminator tag it does not know
    ],
)
def test_no_error_holds_the_secret_value(tail: str, value: str) -> None:
    text = BASE.replace("algorithm: {name: baseline-mtp}\n", "") if tail.startswith("algorithm") else BASE
    msg = message(text + tail, value)
    assert SECRET not in msg, msg
    assert "${HF_TOKEN}" in msg or "r.yaml" in msg


@pytest.mark.parametrize("value", VALUES)
def test_a_secret_with_yaml_syntax_fits_a_text_field(value: str) -> None:
    # its value never goes through YAML, so `: ` or `[` in it cannot break the recipe
    r = load_recipe_text(BASE + "tracking: {run_name: ${HF_TOKEN}}\n", "r.yaml", env={"HF_TOKEN": value})
    assert r.tracking.run_name == "${HF_TOKEN}" and SECRET not in r.canonical_json()


def test_validation_errors_name_the_reference_not_the_value() -> None:
    msg = message(BASE.replace("{steps: 5}", "{steps: ${HF_TOKEN}}"), SECRET)
    assert "train.steps" in msg and "${HF_TOKEN}" in msg and "text fields" in msg and SECRET not in msg


def test_the_trainer_redacts_resolved_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    frozen = load_recipe_text(BASE + "tracking: {run_name: '${HF_TOKEN}'}\n", "r", env={"HF_TOKEN": "x"})
    monkeypatch.setenv("HF_TOKEN", SECRET)
    broken = frozen.canonical_json().replace('"name":"baseline-mtp"', '"name":"${HF_TOKEN}"')
    with pytest.raises(RecipeError) as info:
        recipe_from_json(broken, "recipe.json", resolve_secrets=True)
    assert SECRET not in str(info.value) and "${HF_TOKEN}" in str(info.value)  # pydantic quoted the tag


def run(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    entry = {"cli": "wmtp_main", "studio_cli": "studio_main"}[module]
    code = f"from wmtp_studio.{module} import {entry}; {entry}()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_cli_commands_exit_2_without_the_secret(tmp_path: Path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(BASE + "tracking: {run_name: ${WMTP_TEST_TOKEN}\n")  # unclosed flow mapping
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WMTP_")} | {
        "WMTP_TEST_TOKEN": f"{SECRET}: [x",
        "WMTP_HOME": str(home),
        "WMTP_DATABASE_URL": f"sqlite:///{home / 'studio.db'}",
        "WMTP_QUEUE_URL": f"sqlite:///{home / 'queue.db'}",
    }
    for res in (
        run("cli", "validate", str(recipe), env=env),
        run("studio_cli", "submit", str(recipe), env=env),
    ):
        out = res.stdout + res.stderr
        assert res.returncode == 2, out
        assert "not valid YAML" in out and "${WMTP_TEST_TOKEN}" in out
        assert SECRET not in out and "Traceback" not in out
