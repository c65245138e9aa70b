"""Shared helpers for tests that train tiny models for real (CPU, seconds each)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.studio_fixtures import engine, env, worker  # noqa: F401 - a studio home's fixtures
from wmtp_studio.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
# Small and fast: 600 generated problems, short runs, a log line every step.
FAST = [
    "eval.benchmarks=[]",  # post-training evaluations only where a test asks for them
    "data.generated.num_train=600",
    "train.log_every=1",
    "train.batch_size=16",
    "eval.val_every=5",
    "train.hist_every=5",
    "train.top_tokens_every=5",
]


@pytest.fixture(scope="session", autouse=True)
def wmtp_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tokenizer and reference-CE caches live in a temp dir shared by the session."""
    home = tmp_path_factory.mktemp("wmtp-home")
    os.environ["WMTP_HOME"] = str(home)
    return home


def make_run(run_dir: Path, recipe: str, *overrides: str) -> Path:
    """Freeze a tiny recipe (with FAST and the given overrides) into run_dir/recipe.json."""
    r = load_recipe(RECIPES / recipe, [*FAST, *overrides])
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "recipe.json").write_text(r.canonical_json())
    return run_dir


def lines(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir: Path) -> dict[int, float]:
    return {m["step"]: m["metrics"]["loss"] for m in lines(run_dir) if m["kind"] == "train"}


def assert_same_training(straight: Path, resumed: Path, steps: int) -> None:
    """`resumed` (interrupted and resumed) logged the losses of `straight` at steps 1..steps and exported the same
    weights, to 1e-6."""
    from safetensors.torch import load_file

    a, b = train_losses(straight), train_losses(resumed)
    assert sorted(a) == list(range(1, steps + 1)) == sorted(b)
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-6 * max(1.0, abs(a[step])), step
    wa = load_file(str(straight / "model" / "model.safetensors"))
    wb = load_file(str(resumed / "model" / "model.safetensors"))
    assert all((wa[k] - wb[k]).abs().max() <= 1e-6 for k in wa)
