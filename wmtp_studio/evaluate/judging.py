"""Judging completions in the sandbox: the sandbox `wmtp eval` and `wmtp label` use (`make_sandbox`), the
Result of each completion (`judge_all`; stdio tasks case by case) and its samples.jsonl record (`verdict`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.sandbox import Limits, Result, Sandbox, Tier
from wmtp_studio.evaluate.tasks import Task, stdio_passed
from wmtp_studio.rundir.results import SampleVerdict

STDERR_TAIL = 2000  # characters of a sample's stderr kept in samples.jsonl


def verdict(
    task_id: str, index: int, completion: str, r: Result, finish: str = "", tokens: int = 0
) -> SampleVerdict:
    """The samples.jsonl record of one judged sample."""
    return SampleVerdict(
        task_id=task_id,
        index=index,
        completion=completion,
        passed=r.passed,
        status=r.status,
        tier=r.tier.name.lower(),
        finish_reason=finish,
        n_tokens=tokens,
        detail=r.detail,
        line=r.line,
        expected=r.expected,
        got=r.got,
        exception=r.exception,
        stderr=r.stderr[-STDERR_TAIL:] if not r.passed else "",
        output_truncated=r.output_truncated,
        duration_s=round(r.duration_s, 4),
    )


def judge_all(
    sandbox: Sandbox,
    tasks: dict[str, Task],
    completions: Sequence[tuple[str, int, str]],
    progress: Callable[[int], None] | None = None,
) -> list[Result]:
    """The sandbox's Result for each (task_id, index, completion), in order; program by program in its slots."""
    if any(tasks[t].kind == "stdio" for t, _, _ in completions):
        return _judge_stdio(sandbox, tasks, completions, progress)
    found = [(tasks[task_id], completion) for task_id, _, completion in completions]
    return sandbox.run_many(
        [task.program(c) for task, c in found],
        entry_points=[(task.entry_point,) if task.entry_point else () for task, _ in found],
        tests_from=[task.tests_from(c) for task, c in found],
        on_result=(lambda _i, _r: progress(1)) if progress else None,
    )


def _judge_stdio(
    sandbox: Sandbox,
    tasks: dict[str, Task],
    completions: Sequence[tuple[str, int, str]],
    progress: Callable[[int], None] | None,
) -> list[Result]:
    """stdin/stdout tasks: each test case is a run; the trusted parent compares stdout with the expected output."""
    out = []
    for task_id, _, completion in completions:
        cases = tasks[task_id].stdio_cases
        for n, (stdin, expected) in enumerate(cases, start=1):
            r = sandbox.run(tasks[task_id].program(completion), stdin=stdin)
            complete = not r.output_truncated  # a cut stdout cannot be compared
            ok = (
                r.status in ("passed", "failed")
                and r.exit_code == 0
                and complete
                and stdio_passed(r.stdout, expected)
            )
            if not ok and r.exit_code == 0:
                why = "wrong answer" if complete else "stdout past the output cap, cannot be compared"
                r = replace(r, status="wrong_answer", detail=f"case {n} of {len(cases)}: {why}",
                            expected=expected[:200], got=r.stdout[:200])  # fmt: skip
            elif not ok:
                r = replace(r, detail=f"case {n} of {len(cases)}: {r.detail}")
            r = replace(r, passed=ok, status="passed" if ok else r.status)
            if not ok:
                break
        out.append(r)
        if progress:
            progress(1)
    return out


def make_sandbox(
    require_tier: str | None, slots: int | None, timeout_s: float | None = None, memory_mb: int | None = None
) -> Sandbox:
    """A sandbox with the given limits (defaults: `Limits()`)."""
    tier = Tier[require_tier.upper()] if require_tier else None
    if timeout_s is not None and not timeout_s > 0:
        raise StudioError(f"--timeout must be a positive number of seconds, got {timeout_s}")
    if memory_mb is not None and memory_mb < 64:
        raise StudioError(
            f"--memory must be at least 64 MiB (an interpreter needs that much), got {memory_mb}"
        )
    base = Limits()
    limits = Limits(timeout_s=timeout_s or base.timeout_s, memory_mb=memory_mb or base.memory_mb)
    return Sandbox(require_tier=tier, slots=slots, limits=limits)


def limits_of(sandbox: Sandbox) -> dict[str, Any]:
    """The limits a result was judged under, for its protocol."""
    lim = sandbox.limits
    return {"timeout_s": lim.timeout_s, "memory_mb": lim.memory_mb, "max_output_bytes": lim.max_output_bytes}
