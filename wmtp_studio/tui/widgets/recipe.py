"""A run's frozen recipe as highlighted YAML, and how it differs from its comparison set's base recipe."""

from __future__ import annotations

import json

import yaml
from rich.syntax import Syntax
from rich.text import Text
from textual.widgets import Static

from wmtp_studio.models import ComparisonSet, Run


def recipe_text(run: Run, cset: ComparisonSet | None) -> Text:
    """How the run differs from its comparison set's base (first: it is what the set compares), then the whole
    frozen recipe."""
    text = Text()
    if cset is not None:
        text.append(f"comparison set #{cset.id} {cset.name} ({cset.factor}): ", style="bold")
        text.append("this run differs from its base in\n" if run.diff else "no difference from its base\n")
        for path, (base, this) in (run.diff or {}).items():  # recipe_diff: {dotted path: [base, this run]}
            text.append(f"  {path}: {base!r} -> {this!r}\n")
        text.append("\n")
    recipe_yaml = yaml.safe_dump(json.loads(run.recipe_json), sort_keys=False)
    text.append(f"frozen recipe of run {run.id} ({run.name})\n", style="bold")
    text.append_text(Syntax(recipe_yaml, "yaml", theme="ansi_dark").highlight(recipe_yaml))
    return text


class RecipeView(Static):
    DEFAULT_CSS = """
    RecipeView { padding: 0 1; }
    """

    def show(self, run: Run, cset: ComparisonSet | None) -> None:
        self.update(recipe_text(run, cset))
