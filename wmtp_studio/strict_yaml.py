"""YAML as recipes need it: bounded in size, depth and expanded values, and without duplicate keys.

`yaml.safe_load` recurses once per nesting level (a few hundred levels raise RecursionError), constructs dates
that may raise ValueError, expands aliases without limit when the result is walked, and keeps the last of two
equal keys silently. Here every such input is a `RecipeError` naming the source and, where YAML knows it, the line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError

from wmtp_studio.errors import RecipeError

MAX_BYTES = 64 * 1024
"""Largest recipe text accepted (the shipped recipes are under 5 KB); a bigger one is refused before parsing."""
MAX_DEPTH = 32
"""Deepest nesting accepted (a recipe needs 4 levels); refused while composing, long before Python's recursion
limit."""
MAX_VALUES = 10_000
"""Most values a recipe may hold (a shipped one has under 200), counted while composing and again with YAML aliases
expanded, so that neither a long list nor an alias bomb can ask for unbounded work."""
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Loader(yaml.SafeLoader):
    """The safe loader, refusing deep nesting and duplicate keys (a YAML error with the line, like any other)."""

    _depth = 0
    _nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._nodes += 1
        try:
            if self._depth > MAX_DEPTH:
                mark = self.peek_event().start_mark
                raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", mark)
            if self._nodes > MAX_VALUES:
                mark = self.peek_event().start_mark
                raise ComposerError(None, None, f"more than {MAX_VALUES} values", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        first_line: dict[Any, int] = {}
        if not isinstance(node, yaml.MappingNode):  # e.g. `!!set [a]`: safe_load's own error says so
            return super().construct_mapping(node, deep)
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
                continue  # merged keys may be overridden; non-scalar keys are refused by safe_load itself
            key = self.construct_object(key_node)
            if key in first_line:
                shown = repr(key) if len(repr(key)) <= 60 else repr(key)[:57] + "..."
                problem = f"duplicate key {shown} (first at line {first_line[key]})"
                raise ConstructorError(None, None, problem, key_node.start_mark)
            first_line[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep)


def read_text(path: Path) -> str:
    """The UTF-8 text of a recipe file, refused without reading it all when larger than MAX_BYTES."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read recipe ({exc.strerror or exc})") from None
    if len(raw) > MAX_BYTES:
        raise RecipeError(f"{path}: larger than the {MAX_BYTES // 1024} KiB limit of a recipe")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise RecipeError(f"{path}: not UTF-8 text (line {line}: byte 0x{raw[exc.start]:02x})") from None


def parse(text: str, what: str) -> Any:
    """The YAML value of `text`; any problem is a RecipeError starting with `what`."""
    if len(text) > MAX_BYTES:
        raise RecipeError(
            f"{what}: {len(text)} characters, larger than the {MAX_BYTES // 1024} KiB limit of a recipe"
        )
    loader: _Loader | None = None
    try:
        # a SafeLoader (plain data only); its reader refuses unprintable characters here already
        loader = _Loader(text)
        loader.name = what  # YAML's messages say `in "<what>", line 7` instead of `in "<unicode string>"`
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        raise RecipeError(f"{what}: not valid YAML ({exc})") from None
    except (ValueError, OverflowError) as exc:  # safe_load's own constructors, e.g. a date 2024-13-45
        raise RecipeError(f"{what}: not valid YAML ({type(exc).__name__}: {exc})") from None
    finally:
        if loader is not None:
            loader.dispose()


def check_shape(data: Any, source: str) -> None:
    """Refuse data nested deeper than MAX_DEPTH or holding more than MAX_VALUES values (aliases expanded, which
    the composer's depth count does not see), before anything recursive walks it."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    count = 0
    while stack:
        node, depth = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise RecipeError(f"{source}: more than {MAX_VALUES} values (YAML aliases expanded)")
        if depth > MAX_DEPTH:
            raise RecipeError(f"{source}: nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack += [(v, depth + 1) for v in node.values()]
        elif isinstance(node, list | tuple | set | frozenset):
            stack += [(v, depth + 1) for v in node]
