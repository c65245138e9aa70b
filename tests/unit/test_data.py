"""Training data: sources, MBPP prompts, encoding, batching, packing without leakage, determinism, held-out split."""

from __future__ import annotations

import json
import math
import random
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from wmtp_studio import prompts
from wmtp_studio.errors import StudioError
from wmtp_studio.gentask import generate
from wmtp_studio.recipe_sections import DataSection, GeneratedData, TrainSection
from wmtp_studio.train.data import (
    Batch,
    Encoded,
    Example,
    collate,
    encode,
    epoch_plan,
    load_examples,
    split_heldout,
)
from wmtp_studio.train.loss import head_mask
from wmtp_studio.train.tokenizer import train_bpe

# MBPP fixtures vendored under tests/data (CC BY 4.0, see its README).
MBPP = Path(__file__).resolve().parents[1] / "data" / "mbpp"
F, T = False, True

CORPUS = [
    'def add(a, b):\n    """Return a plus b."""\n    return a + b\n',
    "def first(xs):\n\tfor x in xs:\n\t\treturn x\n\treturn None\n",
    "class Node:\n    def __init__(self, data):\n        self.data = data\n        self.left = None\n",
    "assert add(2, 3) == 5\nassert first([1, 2]) == 1\nprint('héllo wörld')\n",
    "import re\n\ndef words(text):\n    return re.findall(r'\\w+', text.lower())\n",
] * 4


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("wmtp_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WMTP_HOME", str(home))
        return train_bpe(CORPUS, vocab_size=300, cache_dir=home / "tokenizers")


def mbpp_records(split: str) -> list[dict[str, Any]]:
    path = MBPP / f"{split}.json"
    if not path.is_file():
        pytest.skip(f"MBPP copy not found at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def mbpp_task(task_id: int) -> dict[str, Any]:
    for split in ("train", "test", "prompt"):  # the vendored copy has no validation split
        for rec in mbpp_records(split):
            if rec["task_id"] == task_id:
                return rec
    raise AssertionError(f"task {task_id} not in the MBPP copy")


def run_python(program: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-I", "-c", program], capture_output=True, text=True, timeout=30)


# --- MBPP -------------------------------------------------------------------------------------------------------


def test_mbpp_train_split_loads_every_record_as_prompt_and_normalised_completion() -> None:
    records = mbpp_records("train")
    shots = [mbpp_task(i) for i in (2, 3, 4)]  # from prompt.json beside train.json
    examples = load_examples(DataSection(source="mbpp", path=str(MBPP / "train.json")))
    assert len(examples) == 374
    assert [e.id for e in examples] == [f"mbpp/{i}" for i in range(601, 975)]
    for rec, ex in zip(records, examples, strict=True):
        assert ex.prompt == prompts.mbpp_prompt(rec, shots)  # evaluation's 3-shot format
        assert rec["text"] in ex.prompt
        assert all(t in ex.prompt for t in rec["test_list"])
        assert ex.prompt.endswith("[BEGIN]\n")
        # The code with \r\n -> \n (its trailing whitespace dropped), one newline, then the stop sequence.
        assert ex.completion == rec["code"].replace("\r\n", "\n").rstrip() + "\n[DONE]"
        assert "\r" not in ex.completion
        assert ex.is_correct == 1
        assert ex.tests == tuple(rec["test_list"])
    assert sum("\t" in e.completion for e in examples) > 0  # tabs survive normalisation


def test_mbpp_prompt_is_the_austin_format_spelled_out() -> None:
    rec = mbpp_records("train")[1]  # task 602
    expected = (
        "You are an expert Python programmer, and here is your task: Write a python function to find the first "
        "repeated character in a given string. Your code should pass these tests:\n\n"
        'assert first_repeated_char("abcabc") == "a"\n'
        'assert first_repeated_char("abc") == "None"\n'
        'assert first_repeated_char("123123") == "1"\n'
        "[BEGIN]\n"
    )
    assert prompts.mbpp_prompt(rec) == expected
    assert prompts.mbpp_completion(rec) == (
        "def first_repeated_char(str1):\n  for index,c in enumerate(str1):\n"
        '    if str1[:index+1].count(c) > 1:\n      return c \n  return "None"\n[DONE]'
    )


def test_mbpp_jsonl_copy_loads_identically(tmp_path: Path) -> None:
    records = mbpp_records("train")
    copy = tmp_path / "train.jsonl"
    copy.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    (tmp_path / "prompt.json").write_text((MBPP / "prompt.json").read_text())
    from_json = load_examples(DataSection(source="mbpp", path=str(MBPP / "train.json")))
    from_jsonl = load_examples(DataSection(source="mbpp", path=str(copy)))
    assert from_jsonl == from_json


def test_mbpp_record_missing_a_field_names_the_record(tmp_path: Path) -> None:
    path = tmp_path / "mbpp.json"
    shots = mbpp_records("prompt")
    bad = [
        {"task_id": 601, "text": "t", "code": "c", "test_list": []},
        {"task_id": 602, "text": "t", "test_list": []},
    ]
    path.write_text(json.dumps(shots + bad))
    with pytest.raises(StudioError, match=r"record 11: missing field\(s\) code"):
        load_examples(DataSection(source="mbpp", path=str(path)))


def test_mbpp_fewshot_prompt_puts_the_three_shots_in_order_then_the_target() -> None:
    by_id = {r["task_id"]: r for r in mbpp_records("prompt")}
    assert prompts.MBPP_FEWSHOT_IDS == (2, 3, 4)
    shots = [by_id[i] for i in prompts.MBPP_FEWSHOT_IDS]
    target = mbpp_records("train")[0]
    text = prompts.mbpp_prompt(target, shots)
    blocks = text.split("[DONE]\n")
    assert len(blocks) == 4
    for shot, block in zip(shots, blocks[:3], strict=True):
        assert block.startswith(
            f"You are an expert Python programmer, and here is your task: {shot['text']} "
        )
        tests_then_code = (
            "\n".join(shot["test_list"]) + "\n[BEGIN]\n" + shot["code"].replace("\r\n", "\n").rstrip()
        )
        assert block.endswith(tests_then_code + "\n")
    assert blocks[3] == prompts.mbpp_prompt(target)
    assert blocks[3].endswith("[BEGIN]\n")
    starts = [text.index(s["text"]) for s in [*shots, target]]
    assert starts == sorted(starts)


@pytest.mark.parametrize("task_id", [367, 927, 601, 602])
def test_mbpp_program_is_completion_then_setup_then_asserts_and_passes(task_id: int) -> None:
    rec = mbpp_task(task_id)
    code = prompts.mbpp_code(rec)
    program = prompts.mbpp_program(rec, code)
    assert program.startswith(code.rstrip() + "\n")
    setup = rec["test_setup_code"].replace("\r\n", "\n")
    if setup:
        assert program.index(code.rstrip()) < program.index(setup) < program.index(rec["test_list"][0])
    assert [program.index(t) for t in rec["test_list"]] == sorted(program.index(t) for t in rec["test_list"])
    done = run_python(program)
    assert done.returncode == 0, done.stderr


def test_mbpp_setup_before_solution_would_fail_so_the_order_matters() -> None:
    rec = mbpp_task(367)  # its setup code builds trees of the Node class that the solution defines
    setup = rec["test_setup_code"].replace("\r\n", "\n")
    wrong_order = setup + "\n" + prompts.mbpp_code(rec) + "\n".join(rec["test_list"]) + "\n"
    done = run_python(wrong_order)
    assert done.returncode != 0 and "NameError" in done.stderr


def test_mbpp_program_fails_for_a_wrong_completion() -> None:
    rec = mbpp_task(367)
    wrong = prompts.mbpp_code(rec).replace("return False", "return True")  # the unbalanced tree now passes
    done = run_python(prompts.mbpp_program(rec, wrong))
    assert done.returncode != 0 and "AssertionError" in done.stderr
    done = run_python(prompts.mbpp_program(mbpp_task(602), "def first_repeated_char(s):\n    return s[0]\n"))
    assert done.returncode != 0 and "AssertionError" in done.stderr


# --- generic JSONL ----------------------------------------------------------------------------------------------


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_jsonl_reads_prompt_completion_is_correct_and_tests(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            json.dumps(
                {
                    "prompt": "def f(x):\n",
                    "completion": "    return x\n",
                    "is_correct": 0,
                    "tests": ["assert f(1) == 1"],
                    "id": "a",
                }
            ),
            json.dumps({"prompt": "p2", "completion": "c2"}),
        ],
    )
    assert load_examples(DataSection(source="jsonl", path=str(path))) == [
        Example("def f(x):\n", "    return x\n", 0, ("assert f(1) == 1",), "a"),
        Example("p2", "c2", 1, (), "1"),
    ]


def test_jsonl_line_missing_completion_names_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [
            json.dumps({"prompt": "a", "completion": "b"}),
            json.dumps({"prompt": "c", "completion": "d"}),
            json.dumps({"prompt": "e"}),
        ],
    )
    with pytest.raises(StudioError) as info:
        load_examples(DataSection(source="jsonl", path=str(path)))
    message = str(info.value)
    assert str(path) in message and re.search(r"\bline 3\b", message) and "completion" in message


def test_jsonl_error_line_number_counts_blank_lines(tmp_path: Path) -> None:
    path = write_jsonl(
        tmp_path / "d.jsonl",
        [json.dumps({"prompt": "a", "completion": "b"}), "", json.dumps({"prompt": "e"})],
    )
    with pytest.raises(StudioError, match=r"\bline 3\b"):
        load_examples(DataSection(source="jsonl", path=str(path)))


def test_jsonl_missing_file_and_bad_json_raise_studio_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(StudioError, match=re.escape(str(missing))):
        load_examples(DataSection(source="jsonl", path=str(missing)))
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"prompt": "a", "completion": "b"}', "{not json"])
    with pytest.raises(StudioError, match=re.escape(str(bad))):
        load_examples(DataSection(source="jsonl", path=str(bad)))


# --- code directory ---------------------------------------------------------------------------------------------


def test_code_dir_reads_only_the_extensions_sorted_with_relative_ids(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b.py").write_text("print('b')\n")
    (tmp_path / "a" / "z.py").write_text("def z():\n\treturn 'ü'\n")
    (tmp_path / "c.txt").write_text("notes\n")
    (tmp_path / "d.pyc").write_bytes(b"\x00\x01")
    examples = load_examples(DataSection(source="code_dir", path=str(tmp_path)))
    assert examples == [
        Example("", "def z():\n\treturn 'ü'\n", 1, (), "a/z.py"),
        Example("", "print('b')\n", 1, (), "b.py"),
    ]
    both = load_examples(DataSection(source="code_dir", path=str(tmp_path), extensions=[".py", ".txt"]))
    assert [e.id for e in both] == ["a/z.py", "b.py", "c.txt"]
    assert all(e.prompt == "" for e in both)


def test_code_dir_without_matching_files_raises(tmp_path: Path) -> None:
    with pytest.raises(StudioError, match=r"no \.py files"):
        load_examples(DataSection(source="code_dir", path=str(tmp_path)))
    (tmp_path / "readme.md").write_text("# hi\n")
    with pytest.raises(StudioError):
        load_examples(DataSection(source="code_dir", path=str(tmp_path)))
    with pytest.raises(StudioError):
        load_examples(DataSection(source="code_dir", path=str(tmp_path / "readme.md")))


# --- generated --------------------------------------------------------------------------------------------------


def test_generated_source_returns_gentask_problems_with_incorrect_variants() -> None:
    section = DataSection(
        source="generated", generated=GeneratedData(num_train=40, incorrect_fraction=0.25, seed=3)
    )
    examples = load_examples(section)
    # 40 correct problems + round(40 * 0.25) = 10 incorrect variants.
    assert len(examples) == 50
    assert sum(e.is_correct == 0 for e in examples) == 10
    problems = generate("train", 40, family="basic", seed=3, incorrect_fraction=0.25)
    assert [(e.prompt, e.completion, e.is_correct, e.tests, e.id) for e in examples] == [
        (p.prompt, p.completion, p.is_correct, p.tests, p.task_id) for p in problems
    ]
    correct = {e.prompt: e.completion for e in examples if e.is_correct}
    for bad in (e for e in examples if not e.is_correct):
        assert bad.prompt in correct and bad.completion != correct[bad.prompt]
    plain = load_examples(DataSection(source="generated", generated=GeneratedData(num_train=40, seed=3)))
    assert len(plain) == 40 and all(e.is_correct == 1 for e in plain)


# --- encode -----------------------------------------------------------------------------------------------------


def test_encode_trains_completion_and_eos_not_prompt(tok: Any) -> None:
    good = Example("def add(a, b):\n", "    return a + b\n", is_correct=1)
    bad = Example("def add(a, b):\n", "    return a - b\n", is_correct=0)
    p = tok.encode(good.prompt, add_special_tokens=False)
    c = tok.encode(good.completion, add_special_tokens=False)
    assert p and c
    enc_good, enc_bad = encode([good, bad], tok, None)
    assert enc_good.ids == p + c + [tok.eos_token_id]
    assert enc_good.completion == [F] * len(p) + [T] * (len(c) + 1)
    assert (enc_good.reward, enc_bad.reward) == (1.0, 0.0)
    [raw] = encode([Example("", "x = 1\n")], tok, None)  # code_dir examples: every token is completion
    assert raw.ids[-1] == tok.eos_token_id and all(raw.completion)


def test_encode_truncates_to_max_len(tok: Any) -> None:
    ex = Example("def add(a, b):\n", "    return a + b\n")
    [full] = encode([ex], tok, None)
    n_prompt = full.completion.index(True)
    [cut] = encode([ex], tok, n_prompt + 2)
    assert cut.ids == full.ids[: n_prompt + 2] and cut.completion == [F] * n_prompt + [T, T]
    assert tok.eos_token_id not in cut.ids
    [prompt_only] = encode([ex], tok, n_prompt - 1)
    assert len(prompt_only.ids) == n_prompt - 1 and not any(prompt_only.completion)


# --- collate and the head mask ----------------------------------------------------------------------------------

PAD = 1
ENC = [Encoded([5, 6, 7, 8, 9], [F, F, T, T, T], 1.0), Encoded([10, 11, 12], [F, T, T], 0.0)]


def test_collate_without_packing_right_pads() -> None:
    ref = [[0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 2.0, 3.0]]
    b = collate([0, 1], ENC, TrainSection(steps=1), PAD, ref)
    assert b.input_ids.tolist() == [[5, 6, 7, 8, 9], [10, 11, 12, PAD, PAD]]
    assert b.segment_ids.tolist() == [[0, 0, 0, 0, 0], [0, 0, 0, -1, -1]]
    assert b.completion_mask.tolist() == [[F, F, T, T, T], [F, T, T, F, F]]
    assert b.token_mask.tolist() == b.completion_mask.tolist()  # loss_on: completion
    assert b.rewards.tolist() == [[1.0] * 5, [0.0] * 5]
    assert b.ref_ce is not None
    torch.testing.assert_close(b.ref_ce, torch.tensor([[0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 2.0, 3.0, 0.0, 0.0]]))
    assert b.tokens == 8
    everything = collate([0, 1], ENC, TrainSection(steps=1, loss_on="all"), PAD, None)
    assert everything.token_mask.tolist() == [[T] * 5, [T, T, T, F, F]]
    assert everything.ref_ce is None
    # m_{t,0} = x_{t+1} trained: row 0 targets 6..9 -> F,T,T,T,(beyond)F; row 1 targets 11,12,pad,pad,(beyond).
    assert head_mask(b.token_mask, b.segment_ids, 0).tolist() == [[F, T, T, T, F], [T, T, F, F, F]]
    assert head_mask(everything.token_mask, everything.segment_ids, 1).tolist() == [
        [T, T, T, F, F],
        [T, F, F, F, F],
    ]


def test_head_mask_segments_stop_the_shift_from_crossing_a_packed_boundary() -> None:
    a = Encoded([1, 2, 3], [F, T, T], 1.0)
    b = Encoded([4, 5, 6, 7], [F, T, T, T], 1.0)
    batch = collate([[(0, 0, 3), (1, 0, 4)]], [a, b], TrainSection(steps=1), PAD, None)
    assert batch.segment_ids.tolist() == [[0, 0, 0, 1, 1, 1, 1]]
    assert batch.token_mask.tolist() == [[F, T, T, F, T, T, T]]
    # k=1 at t=2 (a's last token) targets x_4 = b's first completion token: trained, but another example.
    naive = head_mask(batch.token_mask, None, 1)
    assert naive.tolist() == [[T, F, T, T, T, F, F]]
    assert head_mask(batch.token_mask, batch.segment_ids, 1).tolist() == [[T, F, F, T, T, F, F]]
    # loss_on: all makes even head 0 cross at t=2 without segments.
    everything = collate([[(0, 0, 3), (1, 0, 4)]], [a, b], TrainSection(steps=1, loss_on="all"), PAD, None)
    assert head_mask(everything.token_mask, None, 0)[0, 2]
    assert not head_mask(everything.token_mask, everything.segment_ids, 0)[0, 2]


def test_collate_packed_row_takes_the_slices_it_names() -> None:
    # (example 1, tokens 2..4) then (example 0, tokens 0..3): a split example continuing at the start of a row.
    a = Encoded([1, 2, 3], [F, T, T], 1.0)
    b = Encoded([4, 5, 6, 7], [F, T, T, T], 0.0)
    batch = collate([[(1, 2, 4), (0, 0, 3)], [(1, 0, 2)]], [a, b], TrainSection(steps=1), PAD, None)
    assert batch.input_ids.tolist() == [[6, 7, 1, 2, 3], [4, 5, PAD, PAD, PAD]]
    assert batch.completion_mask.tolist() == [[T, T, F, T, T], [F, T, F, F, F]]
    assert batch.segment_ids.tolist() == [[0, 0, 1, 1, 1], [0, 0, -1, -1, -1]]
    assert batch.rewards.tolist() == [[0.0, 0.0, 1.0, 1.0, 1.0], [0.0] * 5]


def packed_rows(plan: list[list[Any]]) -> list[list[tuple[int, int, int]]]:
    return [row for batch in plan for row in batch]


LENGTHS = [random.Random(7).randint(1, 40) for _ in range(30)] + [
    100
]  # example 30 spans several 32-token rows


def test_packing_places_every_token_once_in_fixed_chunks_and_fills_rows() -> None:
    plan = epoch_plan(LENGTHS, batch=1, seed=0, epoch=0, packing=True, seq_len=32)
    rows = packed_rows(plan)
    fill = [sum(e - s for _, s, e in row) for row in rows]
    assert all(0 < f <= 32 for f in fill)
    assert sum(fill) == sum(LENGTHS)
    chunks = [c for row in rows for c in row]
    # first fit: many short examples (20..200 tokens, seq_len 256) fill rows to over 90 %
    lengths = [random.Random(3).randint(20, 200) for _ in range(2000)]
    dense = packed_rows(epoch_plan(lengths, batch=1, seed=0, epoch=0, packing=True, seq_len=256))
    assert sum(lengths) / (256 * len(dense)) > 0.9
    where: dict[int, list[tuple[int, int]]] = {i: [] for i in range(len(LENGTHS))}
    for i, s, e in chunks:
        where[i].append((s, e))
    for i, pieces in where.items():
        # cut at multiples of seq_len, whatever the row: (0, 32), (32, 64), (64, 96), (96, 100) for example 30
        assert sorted(pieces) == [(s, min(s + 32, LENGTHS[i])) for s in range(0, LENGTHS[i], 32)]
    assert len(where[30]) == math.ceil(100 / 32)


def test_packing_with_larger_batches_uses_each_token_at_most_once() -> None:
    plan = epoch_plan(LENGTHS, batch=3, seed=1, epoch=2, packing=True, seq_len=32)
    assert all(len(batch) == 3 for batch in plan)
    seen: set[tuple[int, int]] = set()
    for row in packed_rows(plan):
        for i, s, e in row:
            tokens = {(i, p) for p in range(s, e)}
            assert not tokens & seen
            seen |= tokens
    assert sum(LENGTHS) - len(seen) < 3 * 32  # at most the last incomplete batch of rows is left out


def packed_batches(tok: Any, loss_on: str) -> Iterator[Batch]:
    sft = [
        Example("# add\n", "def add(a, b):\n    return a + b\n"),
        Example("x", "y = 1\n"),
        Example("", "print('héllo')\n"),
        Example("def f(x):\n", "\treturn x * 2\n" * 6),
    ]
    encoded = encode(sft * 5, tok, None)
    cfg = TrainSection(steps=1, packing=True, seq_len=24, batch_size=2, loss_on=loss_on)
    for batch in epoch_plan([len(e.ids) for e in encoded], 2, 0, 0, packing=True, seq_len=24):
        yield collate(batch, encoded, cfg, tok.pad_token_id, None)


@pytest.mark.parametrize("loss_on", ["completion", "all"])
def test_packed_head_masks_never_leak_across_examples(tok: Any, loss_on: str) -> None:
    crossings = 0
    for batch in packed_batches(tok, loss_on):
        seg = batch.segment_ids
        s = seg.shape[1]
        assert (batch.token_mask <= (seg >= 0)).all()
        for k in range(4):
            m = head_mask(batch.token_mask, seg, k)
            assert not m[:, s - k - 1 :].any()
            b, t = m.nonzero(as_tuple=True)
            assert torch.equal(seg[b, t], seg[b, t + k + 1])
            nb, nt = head_mask(batch.token_mask, None, k).nonzero(as_tuple=True)
            crossings += int((seg[nb, nt] != seg[nb, nt + k + 1]).sum())
    assert crossings > 0  # without segment ids the shifted mask would train across example boundaries


# --- determinism and bucketing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("packing", [False, True])
def test_epoch_plan_is_a_function_of_seed_and_epoch(packing: bool) -> None:
    lengths = [random.Random(3).randint(1, 60) for _ in range(400)]

    def plan(seed: int, epoch: int) -> list[list[Any]]:
        return epoch_plan(lengths, 4, seed, epoch, packing=packing, seq_len=64)

    assert plan(0, 0) == plan(0, 0)
    assert plan(0, 1) != plan(0, 0)
    assert plan(1, 0) != plan(0, 0)


@pytest.mark.parametrize("n", [1000, 1003, 7])
def test_unpacked_epoch_covers_each_example_at_most_once(n: int) -> None:
    lengths = [random.Random(n).randint(1, 60) for _ in range(n)]
    batch = 4
    plan = epoch_plan(lengths, batch, seed=5, epoch=1, packing=False, seq_len=64)
    flat = [i for b in plan for i in b]
    assert all(len(b) == batch for b in plan)
    assert len(flat) == len(set(flat)) and set(flat) <= set(range(n))
    groups = math.ceil(n / (batch * 50))
    assert len(flat) >= n - (batch - 1) * groups


def test_batches_are_length_bucketed_but_not_in_length_order() -> None:
    rng = random.Random(11)
    lengths = [
        int(rng.lognormvariate(3.0, 1.0)) + 1 for _ in range(800)
    ]  # skewed: many short, a few very long
    batch = 8
    plan = epoch_plan(lengths, batch, seed=0, epoch=0, packing=False, seq_len=512)

    def mean_spread(batches: list[list[int]]) -> float:
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    order = list(range(len(lengths)))
    rng.shuffle(order)
    shuffled = [order[j : j + batch] for j in range(0, len(order), batch)]
    assert mean_spread(plan) < 0.25 * mean_spread(shuffled)
    means = [sum(lengths[i] for i in b) / batch for b in plan]
    assert means != sorted(means)  # the batch order is shuffled, not short-to-long


# --- held-out split ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "fraction", "held"), [(100, 0.1, 10), (7, 0.5, 4), (10, 0.25, 3), (3, 0.9, 2), (1, 0.5, 0)]
)
def test_split_heldout_sizes_and_disjointness(n: int, fraction: float, held: int) -> None:
    train, heldout = split_heldout(n, fraction, seed=0)
    # held = min(n - 1, ceil(n * fraction)): 10; ceil(3.5) = 4; ceil(2.5) = 3; min(2, ceil(2.7)) = 2; min(0, 1) = 0
    assert len(heldout) == held and len(train) == n - held >= 1
    assert not set(train) & set(heldout) and sorted(train + heldout) == list(range(n))
    assert train == sorted(train) and heldout == sorted(heldout)
    assert split_heldout(n, fraction, seed=0) == (train, heldout)


def test_split_heldout_depends_on_seed_and_zero_fraction_holds_nothing_out() -> None:
    assert split_heldout(100, 0.1, seed=0)[1] != split_heldout(100, 0.1, seed=1)[1]
    assert split_heldout(50, 0.0, seed=0) == (list(range(50)), [])


# --- MBPP splits by task id ----------------------------------------------------------------------------------------


@pytest.fixture
def mbpp_full(tmp_path: Path) -> Path:
    """Every task of the MBPP copy in one JSONL (prompt 1-10, test 11-510, train 601-974), shots inside it."""
    records = [r for split in ("prompt", "test", "train") for r in mbpp_records(split)]
    path = tmp_path / "mbpp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def test_a_full_mbpp_file_trains_on_the_train_tasks_and_evaluates_the_500_test_tasks(mbpp_full: Path) -> None:
    from wmtp_studio.evaluate.tasks import load_benchmark

    # Before: training read all 884 tasks of this file (500 of them test tasks), evaluation 881 (all but 2, 3, 4).
    train = load_examples(DataSection(source="mbpp", path=str(mbpp_full), split="train"))
    assert [e.id for e in train] == [f"mbpp/{i}" for i in range(601, 975)]
    bench = load_benchmark(f"mbpp:{mbpp_full}")
    assert [t.task_id for t in bench.tasks] == [f"mbpp/{i}" for i in range(11, 511)]
    assert not {e.id for e in train} & {t.task_id for t in bench.tasks}
    prompt_split = load_examples(DataSection(source="mbpp", path=str(mbpp_full), split="prompt"))
    assert [e.id for e in prompt_split] == [f"mbpp/{i}" for i in range(1, 11)]


def test_mbpp_training_prompt_is_the_evaluation_prompt(mbpp_full: Path) -> None:
    from wmtp_studio.evaluate.tasks import load_benchmark

    test = load_examples(DataSection(source="mbpp", path=str(mbpp_full), split="test"))
    bench = load_benchmark(f"mbpp:{mbpp_full}")
    assert [e.prompt for e in test] == [t.prompt for t in bench.tasks]
    assert all(e.prompt.count("[DONE]") == 3 for e in test)  # the 3 shots, then the task
    assert all(e.completion.endswith("[DONE]") and bench.tasks[0].stop == ("[DONE]",) for e in test)


def test_mbpp_split_errors_name_the_problem(tmp_path: Path, mbpp_full: Path) -> None:
    with pytest.raises(
        StudioError, match=r"unknown MBPP split 'dev': expected one of prompt, test, validation"
    ):
        load_examples(DataSection(source="mbpp", path=str(mbpp_full), split="dev"))
    with pytest.raises(StudioError, match=r"no MBPP validation task \(task ids 511-600\).*ids 1-974"):
        load_examples(DataSection(source="mbpp", path=str(mbpp_full), split="validation"))
    rows = [*mbpp_records("prompt"), {k: v for k, v in mbpp_task(601).items() if k != "task_id"}]
    (tmp_path / "no_id.json").write_text(json.dumps(rows))
    with pytest.raises(StudioError, match=r"no_id\.json record 10: missing field\(s\) task_id"):
        load_examples(DataSection(source="mbpp", path=str(tmp_path / "no_id.json")))
    rows[-1] = {**mbpp_task(601), "task_id": "601"}
    (tmp_path / "str_id.json").write_text(json.dumps(rows))
    with pytest.raises(StudioError, match=r"record 10: task_id must be MBPP's integer task id"):
        load_examples(DataSection(source="mbpp", path=str(tmp_path / "str_id.json")))


def test_mbpp_records_may_carry_is_correct_labels(tmp_path: Path) -> None:
    good = mbpp_task(601)
    wrong = {**good, "code": good["code"].replace("return", "return None #"), "is_correct": 0}
    path = tmp_path / "labelled.json"
    path.write_text(json.dumps([*mbpp_records("prompt"), {**good, "is_correct": 1}, wrong, mbpp_task(11)]))
    examples = load_examples(DataSection(source="mbpp", path=str(path)))
    assert [(e.id, e.is_correct) for e in examples] == [("mbpp/601", 1), ("mbpp/601", 0)]
    assert examples[0].prompt == examples[1].prompt and examples[0].completion != examples[1].completion
    path.write_text(json.dumps([*mbpp_records("prompt"), {**good, "is_correct": 0.5}]))
    with pytest.raises(StudioError, match=r"record 10: is_correct must be 0 or 1, got 0\.5"):
        load_examples(DataSection(source="mbpp", path=str(path)))
