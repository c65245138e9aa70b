"""Tokenizers: the model's own HF tokenizer, or a byte-level BPE trained locally with `tokenizers` and cached."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import Recipe
from wmtp_studio.settings import Settings

EOS = "<|endoftext|>"
PAD = "<|pad|>"
# Probe strings for the tokenizer identity check (rho1 reference vs base).
PROBES = ("def f(x):\n    return x + 1\n", "assert add(2, 3) == 5", "  \t\n[DONE]", "héllo wörld 123")


def train_bpe(texts: Iterable[str], vocab_size: int, cache_dir: Path) -> Any:
    """Train (or load from cache) a byte-level BPE; the cache key is the corpus hash and the vocabulary size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = list(texts)
    digest = hashlib.sha256()
    for t in corpus:
        digest.update(hashlib.sha256(t.encode()).digest())
    key = f"bpe-{vocab_size}-{digest.hexdigest()[:16]}"
    path = cache_dir / key / "tokenizer.json"
    if not path.is_file():
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOS, PAD],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(corpus, trainer=trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tok.save(str(tmp))
        os.replace(tmp, path)  # atomic: concurrent runs may train the same tokenizer
    return PreTrainedTokenizerFast(tokenizer_file=str(path), eos_token=EOS, pad_token=PAD)


def load_tokenizer(recipe: Recipe, corpus: Iterable[str] | None = None) -> Any:
    """The recipe's tokenizer, with eos and pad tokens set (pad falls back to eos)."""
    spec = recipe.tokenizer
    if spec.kind == "bpe":
        if corpus is None:
            raise StudioError("a bpe tokenizer needs the training corpus")
        cache = Path(spec.cache_dir) if spec.cache_dir else Settings.from_env().home / "tokenizers"
        return train_bpe(corpus, spec.vocab_size, cache)
    from transformers import AutoTokenizer

    source = spec.path or recipe.model.name_or_path or recipe.model.meta_checkpoint
    if not source:
        raise StudioError(
            "tokenizer.kind 'model' needs tokenizer.path or model.name_or_path (use kind: bpe with tiny)"
        )
    try:
        tok = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise StudioError(f"cannot load tokenizer {source!r}: {exc}") from None
    if tok.eos_token_id is None:
        raise StudioError(f"tokenizer {source!r} has no eos token")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


SPECIAL_TOKENS = ("bos", "eos", "pad", "unk", "sep", "cls", "mask")


def vocabulary_fingerprint(tok: Any) -> str:
    """sha256 of every (token, id) pair of the vocabulary, added tokens included."""
    h = hashlib.sha256()
    for token, i in sorted(tok.get_vocab().items(), key=lambda kv: (kv[1], kv[0])):
        h.update(f"{i}\t{token}\n".encode())
    return h.hexdigest()[:16]


def _specials(tok: Any) -> dict[str, tuple[str | None, int | None]]:
    """Each named special token as (text, id), and every other registered special token by its text."""
    out: dict[str, tuple[str | None, int | None]] = {
        name: (getattr(tok, f"{name}_token", None), getattr(tok, f"{name}_token_id", None))
        for name in SPECIAL_TOKENS
    }
    named = {text for text, _ in out.values()}
    for text in getattr(tok, "all_special_tokens", []):
        if text not in named:
            out[f"special {text!r}"] = (text, tok.convert_tokens_to_ids(text))
    return out


def _vocab_difference(base: Any, ref: Any) -> str:
    """The first ids where the two vocabularies disagree, for the error message."""
    b = {i: t for t, i in base.get_vocab().items()}
    r = {i: t for t, i in ref.get_vocab().items()}
    diff = [i for i in sorted(set(b) | set(r)) if b.get(i) != r.get(i)]
    shown = ", ".join(f"id {i}: {r.get(i)!r} vs {b.get(i)!r}" for i in diff[:3])
    return f"{len(diff)} ids differ ({shown}{', ...' if len(diff) > 3 else ''})"


def check_same_tokenizer(base: Any, ref: Any, ref_name: str) -> None:
    """Raise unless `ref` tokenises exactly like `base` (METHOD.md, rho1-wmtp): vocabulary size, ids of the probe
    strings, every special token (text and id: bos, eos, pad, unk, sep, cls, mask and any other registered one),
    every added token, and a fingerprint of the whole vocabulary. The message names each difference.

    The reference's pad falls back to its eos, as `load_tokenizer` does for the base.
    """
    problems = []
    if len(base) != len(ref):
        problems.append(f"vocabulary size {len(ref)} != {len(base)}")
    for s in PROBES:
        if base.encode(s, add_special_tokens=False) != ref.encode(s, add_special_tokens=False):
            problems.append(f"different ids for {s!r}")
            break
    if ref.pad_token_id is None and ref.eos_token_id is not None:
        ref.pad_token = ref.eos_token
    ours, theirs = _specials(base), _specials(ref)
    for name in sorted(set(ours) | set(theirs), key=lambda n: (n.startswith("special"), n)):
        mine, other = ours.get(name, (None, None)), theirs.get(name, (None, None))
        if mine != other:
            problems.append(f"{name} token {other[0]!r} (id {other[1]}) != {mine[0]!r} (id {mine[1]})")
    added = {i: str(t) for i, t in base.added_tokens_decoder.items()}
    ref_added = {i: str(t) for i, t in ref.added_tokens_decoder.items()}
    if added != ref_added:
        extra = {i: t for i, t in ref_added.items() if added.get(i) != t}
        missing = {i: t for i, t in added.items() if ref_added.get(i) != t}
        problems.append(f"added tokens differ (reference has {extra}, base has {missing})")
    if vocabulary_fingerprint(base) != vocabulary_fingerprint(ref):
        problems.append(
            f"vocabulary fingerprint {vocabulary_fingerprint(ref)} != {vocabulary_fingerprint(base)}: "
            + _vocab_difference(base, ref)
        )
    if problems:
        raise StudioError(
            f"reference {ref_name!r} does not share the base model's tokenizer: " + "; ".join(problems)
        )
