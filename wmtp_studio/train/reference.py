"""rho1-wmtp's reference model: loading, the tokenizer identity check, and CE^ref live or cached.

Rho-1 (arXiv 2404.07965) scores its corpus with the reference once, offline; the cache does the same, keyed by
(reference weights fingerprint, tokenizer, data set, max length), so any change to one of them recomputes it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wmtp_studio.errors import StudioError
from wmtp_studio.settings import Settings
from wmtp_studio.train.data import Encoded, example_chunks
from wmtp_studio.train.model import load_hf, packed_attention
from wmtp_studio.train.tokenizer import check_same_tokenizer


def load_reference(name_or_path: str, base_tokenizer: Any, device: torch.device) -> nn.Module:
    """The frozen reference LM on `device`, after checking it tokenises exactly like the base."""
    from transformers import AutoTokenizer

    try:
        ref_tok = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as exc:
        raise StudioError(f"cannot load the tokenizer of reference {name_or_path!r}: {exc}") from None
    check_same_tokenizer(base_tokenizer, ref_tok, name_or_path)
    ref = load_hf(name_or_path).to(device).eval()
    ref.requires_grad_(False)
    return ref


@torch.no_grad()
def reference_ce(
    ref: nn.Module, input_ids: Tensor, segment_ids: Tensor | None = None, chunk: int | None = None
) -> Tensor:
    """CE^ref_j = -log p_ref(x_j | x_{<j}) indexed by target position j; entry 0 is 0. (B, S) -> (B, S) fp32.

    With `segment_ids` (packed rows) the reference reads each example alone, as the model does; the entry at an
    example's first token scores it against the previous example and is never used (the head mask stops there).
    With `chunk` (`train.ce_chunk`) the reference's unembedding runs on `chunk` positions at a time, so its
    (B, S, V) logits never exist at once: logits = output embedding(last hidden state), as the HF causal LMs
    (Llama, GPT-2) compute them.
    """
    packed = packed_attention(ref.config, segment_ids)
    if not chunk:
        logits = ref(input_ids=input_ids, **packed).logits[:, :-1].float()  # (B, S-1, V): j-1 predicts x_j
        ce = F.cross_entropy(logits.transpose(1, 2), input_ids[:, 1:], reduction="none")  # (B, S-1)
        return F.pad(ce, (1, 0))
    hf: Any = ref  # a HF causal LM: its decoder (base_model) and its output embedding
    hidden = hf.base_model(input_ids=input_ids, **packed).last_hidden_state[:, :-1]  # (B, S-1, D)
    unembed, targets = hf.get_output_embeddings(), input_ids[:, 1:]
    parts = [
        F.cross_entropy(
            unembed(hidden[:, i : i + chunk]).float().transpose(1, 2),  # (B, V, chunk)
            targets[:, i : i + chunk],
            reduction="none",
        )
        for i in range(0, hidden.shape[1], chunk)
    ]
    return F.pad(torch.cat(parts, dim=1), (1, 0))


def fingerprint(ref: nn.Module, tokenizer: Any, encoded: list[Encoded], max_len: int) -> str:
    """Cache key of the reference CE: weights, tokenizer, token ids of the data, max length."""
    h = hashlib.sha256()
    for name, t in sorted(ref.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    h.update(
        tokenizer.backend_tokenizer.to_str().encode() if hasattr(tokenizer, "backend_tokenizer") else b""
    )
    for e in encoded:
        h.update(len(e.ids).to_bytes(4, "little"))
        h.update(torch.tensor(e.ids, dtype=torch.int64).numpy().tobytes())
    h.update(str(max_len).encode())
    h.update(b"chunks-scored-alone")  # caches of whole examples (before chunking) are not reused
    return h.hexdigest()[:32]


def cached_reference_ce(
    ref: nn.Module,
    tokenizer: Any,
    encoded: list[Encoded],
    max_len: int,
    device: torch.device,
    batch: int = 16,
    compute: bool = True,
    chunk: int | None = None,
) -> list[list[float]]:
    """Per-example CE^ref (list aligned with `encoded`), from `$WMTP_HOME/ref_ce/<key>.pt` or computed now.

    Each `max_len` chunk of an example is scored alone (`example_chunks`): exactly what the model reads, whether
    rows are truncated to max_len or packed. With compute=False (non-main ranks) the file must exist already.
    `chunk`: see `reference_ce` (the numbers, and so the cache key, do not depend on it).
    """
    path = Settings.from_env().home / "ref_ce" / f"{fingerprint(ref, tokenizer, encoded, max_len)}.pt"
    if path.is_file():
        cached: list[list[float]] = torch.load(path)
        return cached
    if not compute:
        raise StudioError(f"reference CE cache {path} is missing")
    pad = int(tokenizer.pad_token_id)
    chunks = sorted(
        (c for i, e in enumerate(encoded) for c in example_chunks(i, len(e.ids), max_len)),
        key=lambda c: c[2] - c[1],
    )
    out: list[list[float]] = [[0.0] * len(e.ids) for e in encoded]
    for start in range(0, len(chunks), batch):
        part = chunks[start : start + batch]
        ids = torch.full((len(part), max(e - s for _, s, e in part)), pad, dtype=torch.long)
        for r, (i, s, e) in enumerate(part):
            ids[r, : e - s] = torch.tensor(encoded[i].ids[s:e])
        ce = reference_ce(
            ref, ids.to(device), chunk=chunk
        ).cpu()  # right padding never changes earlier positions
        for r, (i, s, e) in enumerate(part):
            out[i][s:e] = ce[r, : e - s].tolist()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(out, tmp)
    Path(tmp).replace(path)
    return out
