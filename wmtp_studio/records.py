"""Reading records from JSON arrays and JSONL files, with errors that name the file and the line or record."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wmtp_studio.errors import StudioError


def read_records(path: Path) -> list[tuple[str, dict[str, Any]]]:
    """(where, record) for a JSON array ("record 3") or a JSONL file ("line 7"), decided by the content."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StudioError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise StudioError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    if text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StudioError(f"{path}: not a valid JSON array ({exc})") from None
        records = [(f"record {i}", rec) for i, rec in enumerate(data)]
    else:
        records = []
        # JSON Lines ends lines with \n only: splitlines() would also cut at U+2028 and others inside strings
        for number, line in enumerate(text.split("\n"), start=1):
            if line.strip():
                try:
                    records.append((f"line {number}", json.loads(line)))
                except (json.JSONDecodeError, RecursionError) as exc:  # RecursionError: nested too deeply
                    raise StudioError(f"{path} line {number}: not valid JSON ({exc})") from None
    for where, rec in records:
        if not isinstance(rec, dict):
            raise StudioError(f"{path} {where}: expected a JSON object, got {type(rec).__name__}")
    return records


def require_fields(rec: dict[str, Any], fields: Sequence[str], where: str) -> None:
    """Raise naming `where` and every missing field."""
    missing = [f for f in fields if f not in rec]
    if missing:
        raise StudioError(f"{where}: missing field(s) {', '.join(missing)}")
