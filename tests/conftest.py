"""Shared test setup: no network for Hugging Face, quiet logs, few CPU threads."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

try:
    import torch
except ImportError:  # the torch-free parts of the suite still run
    torch = None  # type: ignore[assignment]

if torch is not None:
    torch.set_num_threads(2)
