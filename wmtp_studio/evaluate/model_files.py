"""The model directory a path means (a run directory, a checkpoint or a model directory), and checks of its files
before transformers reads them, so that a truncated or garbled file is a StudioError naming that file and the
problem, not a SafetensorError, JSONDecodeError or TypeError traceback from deep inside the loaders. Torch-free:
it reads JSON and safetensors headers only."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wmtp_studio.errors import StudioError
from wmtp_studio.rundir import MODEL, RECIPE
from wmtp_studio.rundir.checkpoints import TRAINER_STATE, latest_checkpoint

HEAD_KINDS = ("transformer", "linear")
MAX_HEADS = 16  # as ModelSection.n_heads
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
"""Any one of these lets transformers build a tokenizer (fast serialisation, sentencepiece, BPE or WordPiece)."""


def resolve_model_dir(path: Path) -> tuple[Path, Path | None]:
    """(model directory, run directory or None) for a run directory, a checkpoint or a model directory; its files
    are checked (`check_model_dir`), so a corrupted one is a StudioError naming it."""
    model_dir, run_dir = _locate_model_dir(path)
    check_model_dir(model_dir)
    return model_dir, run_dir


def _locate_model_dir(path: Path) -> tuple[Path, Path | None]:
    if (path / RECIPE).is_file():
        if (path / MODEL).is_dir():
            return path / MODEL, path
        latest = latest_checkpoint(path)
        if latest is None:
            raise StudioError(f"{path} is a run directory without a model or a checkpoint yet")
        return latest / MODEL, path
    if (path / MODEL).is_dir() and (path / TRAINER_STATE).is_file():
        return path / MODEL, None  # a checkpoint directory
    if (path / "config.json").is_file():
        return path, None
    raise StudioError(f"{path} is neither a run directory, a checkpoint nor a model directory")


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
