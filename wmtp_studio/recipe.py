"""Recipes: what to train, as a typed pydantic model loaded from YAML (its sections: recipe_sections.py and
recipe_algorithms.py).

`load_recipe(path, overrides)` substitutes `${VAR}` / `${VAR:-default}` from the environment, reads the YAML
(strict_yaml.py: bounded size and depth, no duplicate keys), applies dotted overrides (`optim.lr=3e-4`) and
validates. Unknown keys are errors at every level; numbers are strict (counts are integers that fit 32 bits, not
`true` or `2.0`; reals are finite; switches are booleans). Any problem raises one `RecipeError` naming the file and
the dotted path of the field.

Secrets: a variable whose name looks secret (recipe_text.py) must be set, but its value never reaches YAML, the
validation or a message: it stays a `${VAR}` reference in the recipe (canonical JSON, hash, database, recipe.json,
MLflow), so it only fits text fields; the trainer resolves it from its own environment
(`recipe_from_json(..., resolve_secrets=True)`), redacting it from any error there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pydantic import ValidationError, model_validator

from wmtp_studio import strict_yaml
from wmtp_studio.errors import RecipeError
from wmtp_studio.recipe_algorithms import ALGORITHMS, AlgorithmConfig
from wmtp_studio.recipe_sections import (
    DataSection,
    EvalSection,
    ModelSection,
    OptimSection,
    Section,
    TokenizerSection,
    TrackingSection,
    TrainSection,
)
from wmtp_studio.recipe_text import apply_override, redact, resolve_secret_refs, restore_refs, substitute_env

MAX_ERRORS = 20
"""Validation errors listed in one message; the rest are counted."""


class Recipe(Section):
    """One experiment: model, tokenizer, data, budget, optimiser, algorithm, evaluation, tracking."""

    name: str = "recipe"
    """Human-readable name."""
    model: ModelSection
    """The network."""
    tokenizer: TokenizerSection = TokenizerSection()
    """Token ids."""
    data: DataSection = DataSection()
    """Training data."""
    train: TrainSection
    """Budget and batching."""
    optim: OptimSection = OptimSection()
    """Optimiser and schedule."""
    algorithm: AlgorithmConfig
    """Which weighting algorithm; one section per algorithm."""
    eval: EvalSection = EvalSection()
    """Validation and post-training evaluation."""
    tracking: TrackingSection = TrackingSection()
    """MLflow."""

    @model_validator(mode="after")
    def _ntp_has_one_head(self) -> Recipe:
        """The NTP control trains one head: its stored recipe says so (model.n_heads 1, head 0's coefficient),
        so the frozen recipe, the database and MLflow show what runs, whatever the base recipe it came from."""
        if self.algorithm.name == "ntp" and self.model.n_heads != 1:
            coefs = self.model.head_coefficients
            self.model = self.model.model_copy(
                update={"n_heads": 1, "head_coefficients": coefs and coefs[:1]}
            )
        return self

    @property
    def n_heads(self) -> int:
        """Heads actually trained: the NTP control always has one."""
        return 1 if self.algorithm.name == "ntp" else self.model.n_heads

    @property
    def head_coefficients(self) -> list[float]:
        """c_k for the heads actually trained."""
        coefs = self.model.head_coefficients or [1.0] * self.model.n_heads
        return coefs[: self.n_heads]

    def canonical_json(self) -> str:
        """Stable JSON of the full recipe (defaults included): what is frozen in a run directory and hashed."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """Content hash of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _field_path(loc: tuple[int | str, ...]) -> str:
    # pydantic puts the discriminator tag after `algorithm` (algorithm.critic-wmtp.beta): drop it there only, so
    # that a key named like an algorithm elsewhere (train.ntp) keeps its path.
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] == "algorithm" and parts[1] in ALGORITHMS:
        del parts[1]
    return ".".join(parts) or "(top level)"


def _clip(text: str, width: int = 200) -> str:
    """One error line at most `width` characters: a huge key or value is named, not printed."""
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_recipe(data: Any, source: str) -> Recipe:
    """Validate a parsed mapping; raise one RecipeError naming `source` and every failing dotted field path."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        lines = [_clip(f"{_field_path(err['loc'])}: {err['msg']}") for err in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            lines.append(f"... and {len(errors) - MAX_ERRORS} more")
        raise RecipeError(f"{source}: invalid recipe\n  " + "\n  ".join(lines)) from None


def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Recipe:
    """Load, substitute, override and validate a YAML recipe file."""
    return load_recipe_text(strict_yaml.read_text(Path(path)), str(path), overrides, env)


def load_recipe_text(
    text: str, source: str, overrides: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Recipe:
    """Substitute, override and validate recipe YAML text (e.g. from an editor); errors name `source`. YAML sees
    placeholders for secret-looking variables (their values could break it, and its errors quote the text)."""
    kept: dict[str, str] = {}
    literal = substitute_env(text, source, env, kept)
    try:
        data = _yaml_data(literal, source, overrides)
    except RecipeError as exc:
        raise RecipeError(restore_refs(str(exc), kept)) from None
    try:
        return parse_recipe(restore_refs(data, kept), source)
    except RecipeError as exc:
        hint = (
            f"\n  (secret-looking variables stay ${{VAR}} references, so they only fit text fields: "
            f"{', '.join(sorted(set(kept.values())))})"
        )
        raise RecipeError(restore_refs(str(exc), kept) + (hint if kept else "")) from None


def _yaml_data(text: str, source: str, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    data = strict_yaml.parse(text, source)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
    for assignment in overrides:
        apply_override(data, assignment, source)
    strict_yaml.check_shape(data, source)
    return data


def recipe_from_json(text: str, source: str, *, resolve_secrets: bool = False) -> Recipe:
    """Load a frozen `recipe.json` (as written by `Recipe.canonical_json`). `resolve_secrets`: substitute the
    secret-looking `${VAR}` references it keeps from the environment (only where the recipe is used: the
    trainer); without it they stay references, as stored."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{source}: not valid JSON ({exc})") from None
    except RecursionError:
        raise RecipeError(f"{source}: nested deeper than {strict_yaml.MAX_DEPTH} levels") from None
    strict_yaml.check_shape(data, source)
    if not resolve_secrets:
        return parse_recipe(data, source)
    values: dict[str, str] = {}
    try:
        return parse_recipe(resolve_secret_refs(data, source, values), source)
    except RecipeError as exc:
        raise RecipeError(redact(str(exc), values)) from None
