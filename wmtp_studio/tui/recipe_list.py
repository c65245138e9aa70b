"""What the recipes screen lists: the YAML files of the recipes directory and the recipes saved in the database,
as two groups of options under a header each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rich.text import Text
from sqlalchemy.engine import Engine
from textual.widgets.option_list import Option

from wmtp_studio import store


@dataclass(frozen=True)
class Entry:
    """One recipe in the list: a file of the recipes directory or a recipe saved in the database."""

    key: str
    label: str
    name: str
    text: str | None = None
    """The saved YAML (database entries); files are read when opened."""
    path: Path | None = None


def list_recipes(folder: Path | None, engine: Engine) -> tuple[Path | None, list[Entry], list[Entry]]:
    """The recipes directory (None when there is none) and its YAML files, and the recipes saved in the studio."""
    if folder is not None and not folder.is_dir():
        folder = None
    files = [] if folder is None else sorted(folder.glob("*.y*ml"))
    file_entries = [Entry(f"file:{p.name}", p.name, p.stem, path=p) for p in files]
    saved = [
        Entry(f"db:{r.name}", r.name, r.name, text=r.yaml_text)
        for r in store.list_saved_recipes(engine=engine)
    ]
    return folder, file_entries, saved


def list_options(folder: Path | None, files: list[Entry], saved: list[Entry]) -> list[Option]:
    """The two groups, each under a header (a disabled option), with a line saying so when one is empty."""

    def group(header: str, entries: list[Entry], empty: str) -> list[Option]:
        rows = [Option(e.label, id=e.key) for e in entries]
        return [
            Option(header, disabled=True),
            *(rows or [Option(Text(f"  {empty}", style="italic"), disabled=True)]),
        ]

    where = f"{folder.name}/" if folder is not None else "recipes/"
    return [
        *group(
            f"Files in {where}", files, f"no {where} folder here" if folder is None else "no *.yaml files"
        ),
        *group("Saved in the studio", saved, "none yet (ctrl+s saves)"),
    ]
