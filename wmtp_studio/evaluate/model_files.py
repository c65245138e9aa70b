"""Checks of a model directory's files before transformers reads them, so that a truncated or garbled file is a
StudioError naming that file and the problem, not a SafetensorError, JSONDecodeError or TypeError traceback
from deep inside the loaders. Torch-free: it reads JSON and safetensors headers only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wmtp_studio.errors import StudioError

HEAD_KINDS = ("transformer", "linear")
MAX_HEADS = 16  # as ModelSection.n_heads
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
"""Any one of these lets transformers build a tokenizer (fast serialisation, sentencepiece, BPE or WordPiece)."""


def check_model_dir(model_dir: Path) -> None:
    """Raise StudioError naming the first unusable file of `model_dir` (a HF or WMTP model directory)."""
    if not (model_dir / "config.json").is_file():
        raise StudioError(f"{model_dir / 'config.json'}: missing (not a model directory)")
    for path in sorted(model_dir.glob("*.json")):
        read_json_object(path)
    if (model_dir / "wmtp_config.json").is_file():
        _check_wmtp_config(model_dir / "wmtp_config.json")
    for path in sorted(model_dir.glob("*.safetensors")):
        _check_safetensors(path)
    if not any((model_dir / name).is_file() for name in TOKENIZER_FILES):
        raise StudioError(
            f"{model_dir}: no tokenizer (tokenizer.json is missing, and so are {', '.join(TOKENIZER_FILES[1:])})"
        )


def read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in `path`; StudioError naming the file otherwise."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise StudioError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise StudioError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise StudioError(f"{path}: not valid JSON ({exc})") from None
    except RecursionError:
        raise StudioError(f"{path}: not usable JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise StudioError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _check_wmtp_config(path: Path) -> None:
    meta = read_json_object(path)
    n = meta.get("n_heads")
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_HEADS:
        raise StudioError(f"{path}: n_heads must be an integer from 1 to {MAX_HEADS}, got {n!r}")
    if meta.get("head_kind") not in HEAD_KINDS:
        raise StudioError(
            f"{path}: head_kind must be one of {', '.join(HEAD_KINDS)}, got {meta.get('head_kind')!r}"
        )


def _check_safetensors(path: Path) -> None:
    """Read the header: safetensors checks that it parses and that the file holds every byte it describes, which
    is what an empty or truncated file (an interrupted copy, a full disk) fails."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            pass
    except SafetensorError as exc:
        raise StudioError(f"{path}: truncated or corrupt safetensors file ({exc})") from None
    except OSError as exc:
        raise StudioError(f"{path}: cannot read ({exc.strerror or exc})") from None
