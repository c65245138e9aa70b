"""The locally trained byte-level BPE: cache, special tokens, lossless round trip, and the identity check."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.unit.test_data import CORPUS as CODE
from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import Recipe
from wmtp_studio.recipe_algorithms import NTPConfig
from wmtp_studio.recipe_sections import ModelSection, TinyModel, TokenizerSection, TrainSection
from wmtp_studio.train.tokenizer import EOS, PAD, PROBES, check_same_tokenizer, load_tokenizer, train_bpe

PROSE = [
    "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.",
    "Many people enjoy reading novels, walking along rivers, and talking with old friends at dinner.",
    "Mountains rise above quiet villages; farmers harvest wheat and barley before the autumn rains.",
] * 4


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("WMTP_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_train_bpe_second_call_loads_the_cache_without_retraining(home: Path) -> None:
    cache = home / "tokenizers"
    first = train_bpe(CODE, vocab_size=300, cache_dir=cache)
    [saved] = cache.rglob("tokenizer.json")
    mtime = saved.stat().st_mtime_ns
    second = train_bpe(iter(CODE), vocab_size=300, cache_dir=cache)  # any iterable of the same texts
    assert list(cache.rglob("tokenizer.json")) == [saved]
    assert saved.stat().st_mtime_ns == mtime
    for s in (*PROBES, *CODE[:5]):
        assert second.encode(s, add_special_tokens=False) == first.encode(s, add_special_tokens=False)
    assert len(first) == len(second) == 300


def test_train_bpe_other_vocab_size_is_another_cache_entry(home: Path) -> None:
    cache = home / "tokenizers"
    small = train_bpe(CODE, vocab_size=300, cache_dir=cache)
    large = train_bpe(CODE, vocab_size=320, cache_dir=cache)
    assert len(small) == 300 and len(large) == 320
    entries = sorted(p.parent.name for p in cache.rglob("tokenizer.json"))
    assert len(entries) == 2 and entries[0].startswith("bpe-300-") and entries[1].startswith("bpe-320-")


def test_eos_and_pad_exist_and_differ(home: Path) -> None:
    tok = train_bpe(CODE, vocab_size=300, cache_dir=home / "tokenizers")
    assert (tok.eos_token, tok.pad_token) == (EOS, PAD)
    assert tok.eos_token_id is not None and tok.pad_token_id is not None
    assert tok.eos_token_id != tok.pad_token_id
    assert tok.encode(EOS, add_special_tokens=False) == [tok.eos_token_id]  # one token, never split
    assert tok.encode("def f():", add_special_tokens=True) == tok.encode("def f():", add_special_tokens=False)


@pytest.mark.parametrize(
    "text",
    [
        "def f(x):\n\tif x:\n\t\treturn 'ünïcödé ✓ 日本語'\n",
        "from . import models\nprint(a , b) ; x = y .z ? 1 : 2  # spaces before punctuation\n",
        '  leading and trailing spaces  \n\n\n\t \t\nx = "it\'s"\r\n',
        "emoji 🐍 and a NUL-free byte soup: \x7f\x1b[0m",
    ],
)
def test_decode_encode_round_trips_code(home: Path, text: str) -> None:
    tok = train_bpe(CODE, vocab_size=300, cache_dir=home / "tokenizers")
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text


def test_load_tokenizer_bpe_caches_under_wmtp_home(home: Path) -> None:
    recipe = Recipe(
        model=ModelSection(tiny=TinyModel()),
        tokenizer=TokenizerSection(kind="bpe", vocab_size=300),
        train=TrainSection(steps=1),
        algorithm=NTPConfig(),
    )
    tok = load_tokenizer(recipe, CODE)
    assert len(tok) == 300
    assert len(list((home / "tokenizers").rglob("tokenizer.json"))) == 1
    with pytest.raises(StudioError, match="corpus"):
        load_tokenizer(recipe, None)


def test_check_same_tokenizer_accepts_identical_tokenizers(home: Path) -> None:
    a = train_bpe(CODE, vocab_size=300, cache_dir=home / "a")
    b = train_bpe(CODE, vocab_size=300, cache_dir=home / "b")  # trained twice, independently
    check_same_tokenizer(a, b, "ref-model")
    check_same_tokenizer(a, a, "ref-model")


def test_check_same_tokenizer_rejects_another_vocabulary_size(home: Path) -> None:
    base = train_bpe(CODE, vocab_size=300, cache_dir=home / "tokenizers")
    ref = train_bpe(CODE, vocab_size=320, cache_dir=home / "tokenizers")
    with pytest.raises(StudioError, match=r"'runs/ref/model'.*vocabulary size 320 != 300"):
        check_same_tokenizer(base, ref, "runs/ref/model")


def test_check_same_tokenizer_rejects_same_size_with_other_merges(home: Path) -> None:
    base = train_bpe(CODE, vocab_size=300, cache_dir=home / "tokenizers")
    ref = train_bpe(PROSE, vocab_size=300, cache_dir=home / "tokenizers")
    assert len(base) == len(ref) == 300 and base.eos_token_id == ref.eos_token_id
    with pytest.raises(StudioError, match=r"'prose-ref'.*different ids"):
        check_same_tokenizer(base, ref, "prose-ref")


def variant(home: Path, name: str, edit: Any = None, **specials: str) -> Any:
    """The CODE tokenizer saved again with its tokenizer.json edited and/or other special tokens."""
    from transformers import PreTrainedTokenizerFast

    train_bpe(CODE, vocab_size=300, cache_dir=home / "tokenizers")
    [saved] = (home / "tokenizers").rglob("tokenizer.json")
    data = json.loads(saved.read_text())
    if edit is not None:
        edit(data)
    path = home / name / "tokenizer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path), **({"eos_token": EOS, "pad_token": PAD} | specials)
    )


def test_check_same_tokenizer_rejects_another_pad_id_naming_it(home: Path) -> None:
    base = train_bpe(CODE, vocab_size=300, cache_dir=home / "tokenizers")
    ref = variant(home, "pad-is-eos", pad_token=EOS)  # same vocabulary, same eos, pad id 0 instead of 1
    assert len(ref) == len(base) and ref.eos_token_id == base.eos_token_id  # all the old check looked at
    with pytest.raises(
        StudioError, match=r"'ref'.*pad token '<\|endoftext\|>' \(id 0\) != '<\|pad\|>' \(id 1\)"
    ):
        check_same_tokenizer(base, ref, "ref")


def test_check_same_tokenizer_rejects_another_unk_or_bos(home: Path) -> None:
    base = train_bpe(CODE, vocab_size=300, cache_dir=home / "tokenizers")
    with pytest.raises(StudioError, match=r"unk token '<\|pad\|>' \(id 1\) != None \(id None\)"):
        check_same_tokenizer(base, variant(home, "unk", unk_token=PAD), "ref")
    with pytest.raises(StudioError, match=r"bos token '<\|endoftext\|>' \(id 0\) != None"):
        check_same_tokenizer(base, variant(home, "bos", bos_token=EOS), "ref")


def test_check_same_tokenizer_rejects_an_added_token(home: Path) -> None:
    base = train_bpe(CODE, vocab_size=300, cache_dir=home / "tokenizers")
    ref = variant(home, "added")
    ref.add_tokens(["<|fim|>"])
    with pytest.raises(StudioError, match=r"added tokens differ \(reference has \{300: '<\|fim\|>'\}"):
        check_same_tokenizer(base, ref, "ref")
    special = variant(home, "added-special", additional_special_tokens=["<|fim|>"])
    with pytest.raises(StudioError, match=r"special '<\|fim\|>' token '<\|fim\|>' \(id 300\) != None"):
        check_same_tokenizer(base, special, "ref")


def test_check_same_tokenizer_fingerprint_catches_a_token_the_probes_miss(home: Path) -> None:
    base = train_bpe(CODE, vocab_size=300, cache_dir=home / "tokenizers")
    used = {i for s in PROBES for i in base.encode(s, add_special_tokens=False)}
    last = len(base) - 1  # the last merge: no later merge builds on it
    assert last not in used
    old = base.convert_ids_to_tokens(last)

    def rename_last_merge(data: dict[str, Any]) -> None:
        vocab, merges = data["model"]["vocab"], data["model"]["merges"]
        del vocab[old]
        vocab["QZ"] = last  # Q + Z: a pair no probe string contains
        merges[-1] = ["Q", "Z"] if isinstance(merges[-1], list) else "Q Z"

    ref = variant(home, "renamed", rename_last_merge)
    assert len(ref) == len(base)
    for s in PROBES:
        assert ref.encode(s, add_special_tokens=False) == base.encode(s, add_special_tokens=False)
    with pytest.raises(StudioError, match=rf"vocabulary fingerprint .* 1 ids differ \(id {last}: 'QZ' vs "):
        check_same_tokenizer(base, ref, "ref")
