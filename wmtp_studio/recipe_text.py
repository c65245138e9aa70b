"""Recipe text before validation: `${VAR}` substitution, with secret-looking variables kept as references, and
dotted overrides (recipe.py validates what comes out).

A variable whose name looks secret (contains TOKEN, SECRET, PASSWORD, PASSWD, KEY, CREDENTIAL or AUTH) must be set,
but its value is never put into text that YAML parses: a placeholder is, and the reference as written replaces it
after parsing. So no YAML or validation message can quote the value, whatever it contains (`: `, `[`, newlines).
"""

from __future__ import annotations

import os
import re
from typing import Any

from wmtp_studio import strict_yaml
from wmtp_studio.errors import RecipeError

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSWORD|PASSWD|KEY|CREDENTIAL|AUTH", re.IGNORECASE)


def is_secret_name(name: str) -> bool:
    """Whether a variable's value is kept out of stored recipes (see the module docstring)."""
    return _SECRET_NAME.search(name) is not None


def substitute_env(
    text: str, source: str, env: dict[str, str] | None = None, kept: dict[str, str] | None = None
) -> str:
    """Replace `${VAR}` and `${VAR:-default}` with environment values; a missing VAR without default is an error.
    With `kept`, secret-looking references are checked but replaced by placeholders recorded in `kept`
    (placeholder -> the reference as written)."""
    env = dict(os.environ) if env is None else env

    def repl(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name not in env and default is None:
            raise RecipeError(f"{source}: environment variable {name} is not set (use ${{{name}:-default}})")
        if kept is not None and is_secret_name(name):
            placeholder = f"wmtp-secret-{len(kept)}-ref"  # plain YAML scalar text, in flow and block style
            kept[placeholder] = match.group(0)
            return placeholder
        return env[name] if name in env else str(default)

    return _VAR.sub(repl, text)


def _map_strings(data: Any, fn: Any) -> Any:
    """`data` with `fn` applied to every string inside it (dict keys excepted)."""
    if isinstance(data, dict):
        return {k: _map_strings(v, fn) for k, v in data.items()}
    if isinstance(data, list):
        return [_map_strings(v, fn) for v in data]
    return fn(data) if isinstance(data, str) else data


def restore_refs(data: Any, kept: dict[str, str]) -> Any:
    def restore(text: str) -> str:
        for placeholder, ref in kept.items():
            text = text.replace(placeholder, ref)
        return text

    return _map_strings(data, restore)


def resolve_secret_refs(data: Any, source: str, values: dict[str, str]) -> Any:
    """Substitute the secret-looking `${VAR}` references kept in a frozen recipe from the environment; record
    each value used in `values` (value -> reference) so that errors can be redacted."""

    def secret(match: re.Match[str]) -> str:
        if not is_secret_name(match.group(1)):
            return match.group(0)
        value = substitute_env(match.group(0), source)
        values[value] = match.group(0)
        return value

    return _map_strings(data, lambda text: _VAR.sub(secret, text))


def redact(message: str, values: dict[str, str]) -> str:
    """`message` with every secret value (longest first, so none is left in part) replaced by its reference."""
    for value in sorted(values, key=len, reverse=True):
        if value:
            message = message.replace(value, values[value])
    return message


def apply_override(data: dict[str, Any], assignment: str, source: str) -> None:
    """Apply one dotted override `a.b.c=value`; the value is parsed as YAML (numbers, booleans, lists)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"{source}: override {assignment!r} is not of the form key.path=value")
    parts = key.strip().split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        if not isinstance(node.get(part, {}), dict):
            raise RecipeError(f"{source}: override {key}: {'.'.join(parts[: i + 1])} is not a section")
        node = node.setdefault(part, {})
    shown = repr(raw) if len(raw) <= 60 else repr(raw[:57]) + "..."
    node[parts[-1]] = strict_yaml.parse(raw, f"{source}: override {key}: value {shown}")
