"""`run:N`: naming an earlier studio run's model in a recipe, and local paths that must not depend on a cwd.

`model.name_or_path`, `tokenizer.path` and rho1-wmtp's `algorithm.reference` may be `run:N`, the model that run N
wrote (`<runs dir>/N/model`). The canonical recipe keeps `run:N`, so it reads "fine-tuned from run 12" and its
hash does not depend on where the runs directory is mounted. The studio makes the new run depend on run N (it
waits until N succeeded); the trainer resolves the reference against its own runs directory (the parent of its
run directory) when it starts. Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from wmtp_studio.errors import RecipeError, StudioError
from wmtp_studio.recipe import Recipe, parse_recipe

REF_FIELDS: tuple[tuple[str, str], ...] = (
    ("model", "name_or_path"),
    ("model", "meta_checkpoint"),
    ("tokenizer", "path"),
    ("algorithm", "reference"),
)
_REF = re.compile(r"run:(\d+)")
_HUB_ID = re.compile(r"[\w.-]+(/[\w.-]+)?")
"""A Hugging Face repo id: `name` or `namespace/name` (huggingface_hub's validate_repo_id, roughly)."""


def _fields(data: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str, str]]:
    """(section dict, key, value) of every reference field that holds a string."""
    for section, key in REF_FIELDS:
        value = (data.get(section) or {}).get(key)
        if isinstance(value, str):
            yield data[section], key, value


def run_refs(recipe: Recipe) -> set[int]:
    """The run ids the recipe names with `run:N`; a malformed `run:` value is a RecipeError naming the field."""
    ids: set[int] = set()
    for _, key, value in _fields(recipe.model_dump(mode="json")):
        if value.startswith("run:"):
            match = _REF.fullmatch(value)
            if match is None:
                raise RecipeError(f"{recipe.name}: {key} {value!r}: write an earlier run as run:N (N its id)")
            ids.add(int(match.group(1)))
    return ids


def resolve_run_refs(recipe: Recipe, runs_dir: Path) -> Recipe:
    """The recipe with every `run:N` replaced by `<runs_dir>/N/model` (absolute)."""
    if not run_refs(recipe):
        return recipe
    data = recipe.model_dump(mode="json")
    for section, key, value in _fields(data):
        if match := _REF.fullmatch(value):
            section[key] = str((runs_dir / match.group(1) / "model").resolve())
    return parse_recipe(data, recipe.name)


def absolutize_local_paths(recipe: Recipe, cwd: Path) -> Recipe:
    """The recipe with every relative reference path that exists under `cwd` (a local model directory) made
    absolute, so that a worker started elsewhere finds it. Hub ids and `run:N` are left alone."""
    data = recipe.model_dump(mode="json")
    changed = False
    for section, key, value in _fields(data):
        if value.startswith("run:") or Path(value).is_absolute() or not (cwd / value).exists():
            continue
        section[key], changed = str((cwd / value).resolve()), True
    return parse_recipe(data, recipe.name) if changed else recipe


def is_local_path(value: str) -> bool:
    """Whether a reference can only be a local path, never a Hugging Face id: absolute, `~`, `./`, `../`, or more
    than one `/` (hub ids are `name` or `namespace/name`). `org/model` stays ambiguous: a hub id unless it exists
    here."""
    if value.startswith("run:"):
        return False
    return value.startswith(("/", "~", "./", "../")) or value in (".", "..") or not _HUB_ID.fullmatch(value)


def check_local_paths(recipe: Recipe, cwd: Path | None = None) -> None:
    """Raise a StudioError naming the field and the path of every reference that can only be a local path and
    does not exist (relative ones resolved against `cwd`, default the current directory), so that a missing
    directory is reported as such before anything runs, not as the hub's "Repo id must be in the form" later.
    `run:N` references are checked by the studio against its runs."""
    cwd = cwd or Path.cwd()
    missing = []
    for section, key in REF_FIELDS:
        value = getattr(getattr(recipe, section), key, None)
        if isinstance(value, str) and is_local_path(value):
            path = cwd / Path(value).expanduser()
            if not path.exists():
                missing.append(
                    f"{section}.{key}: {value} does not exist" + ("" if path == Path(value) else f" ({path})")
                )
    if missing:
        raise StudioError(
            f"{recipe.name}: "
            + "; ".join(missing)
            + ". Point it at a model directory, a Hugging Face id, or an "
            "earlier studio run's model as run:N (train a local reference first, e.g. `wmtp train "
            "recipes/tiny-ntp.yaml --run-dir runs/tiny-ntp` for the tiny rho1 recipes)"
        )
