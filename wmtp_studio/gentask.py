"""Procedurally generated code tasks with tests, small enough for a tiny CPU model to learn.

Each problem is a one-argument function: a signature plus an English docstring (the prompt), the body a
model should emit (the completion) and three asserts. Family "basic" applies one operation; "compose" chains
two through a named intermediate ("Let y be x plus 3. Return y times 2."). Incorrect variants (a constant off
by one, a wrong operator, swapped operands) feed algorithms that need labelled wrong answers.

The train/test split (gentask_specs.py) is decided by a hash of what the function *does* (its outputs on fixed
probe inputs of its own argument type; one behaviour in five is held out), so a held-out problem is never a
renamed train problem, and equivalent programs ("x plus 1, plus 2" and "x plus 3";
`t = 'd' + text; len(t) + 6` and `y = len(text) + 9; y - 2`) fall on the same side, within a family and across
the two; so do look-alikes across types, whose bodies read the same (`s[:3]` and `xs[:3]`). Problems differ
from one another by spec (operations and constants), function name and argument name. Standard library only:
this module is imported by torch-free code.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal, NamedTuple

from wmtp_studio.gentask_specs import (
    MAX_REPR,
    PROBES,
    RAISED,
    Spec,
    Step,
    apply,
    partition,
    render,
    spec_outputs,
)


@dataclass(frozen=True)
class GenProblem:
    """One task, or an incorrect variant of one (same prompt and tests, `is_correct=0`)."""

    task_id: str
    prompt: str
    completion: str
    tests: tuple[str, ...]
    entry_point: str
    family: str
    is_correct: int


# Generic names, so that the docstring, not the name, carries the task; they multiply the prompts per spec.
_NAMES: tuple[str, ...] = tuple(
    f"{verb}_{noun}"
    for verb in ("get", "make", "calc", "compute", "find", "build", "apply", "do")
    for noun in ("value", "result", "answer", "output", "item", "thing", "number", "data")
)
_ARGS: dict[str, tuple[str, str, str]] = {  # three per type, so a spec has len(_NAMES) * 3 prompts
    "int": ("x", "n", "k"),
    "str": ("s", "text", "word"),
    "list": ("xs", "nums", "items"),
}
_TEMPS: dict[str, str] = {"int": "y", "str": "t", "list": "ys"}  # the intermediate of a "compose" body


@lru_cache(maxsize=1 << 15)  # every spec of a split fits
def _mutants(spec: Spec) -> tuple[Spec, ...]:
    """Plausible wrong versions: one step with a wrong operator, or one int constant off by one."""
    out: list[Spec] = []
    for i, step in enumerate(spec):
        variants = [Step(step.op, expr, step.consts) for expr in step.op.wrong]
        for j, value in enumerate(step.consts):
            lowest = step.op.domains[j][0]
            if isinstance(value, int) and isinstance(lowest, int):
                for shifted in (value - 1, value + 1):
                    if shifted >= lowest - 1:  # x // 1 is a plausible slip; x // 0 is not
                        consts = (*step.consts[:j], shifted, *step.consts[j + 1 :])
                        variants.append(Step(step.op, step.expr, consts))
        out.extend((*spec[:i], variant, *spec[i + 1 :]) for variant in variants)
    return tuple(out)


def _candidates(spec: Spec) -> list[object]:
    """Test inputs to choose from: the probes plus inputs near the constants, where off-by-ones show."""
    kind = spec[0].op.in_type
    ints = [v for step in spec for v in step.consts if isinstance(v, int)]
    chars = [v for step in spec for v in step.consts if isinstance(v, str)]
    near: list[object]
    if kind == "int":
        near = [v + d for v in ints for d in (-1, 0, 1, 2) if v + d >= 0]
    elif kind == "str":
        near = [s for ch in chars for s in (ch, ch + "ab", "b" + ch + ch)]
    else:
        near = [xs for v in ints for xs in ([v], [1, v, v + 1], [v, 0, v]) if min(xs) >= 0]
    unique = {repr(value): value for value in (*PROBES[kind], *near)}
    return list(unique.values())


@lru_cache(maxsize=1 << 15)
def _table(spec: Spec) -> tuple[tuple[object, int], ...]:
    """(input, bit mask of the mutants whose assert on it fails) for every input the spec handles."""
    inputs = _candidates(spec)
    columns = [spec_outputs(mutant, inputs) for mutant in _mutants(spec)]
    rows = []
    for k, (value, want) in enumerate(zip(inputs, spec_outputs(spec, inputs), strict=True)):
        if want is RAISED or len(repr(want)) > MAX_REPR:
            continue
        # `!=` as the assert's `==` sees it: True == 1, so a mutant returning 1 for True is not caught.
        rows.append((value, sum([1 << i for i, column in enumerate(columns) if column[k] != want])))
    return tuple(rows)


def _pick_inputs(spec: Spec, rng: random.Random) -> tuple[list[object], int]:
    """Three inputs chosen greedily to expose as many mutants as possible, ties broken at random."""
    rows = list(_table(spec))
    chosen: list[object] = []
    killed = 0
    for _ in range(3):
        gains = [(exposes & ~killed).bit_count() for _, exposes in rows]
        best = max(gains)
        value, exposes = rows.pop(rng.choice([i for i, gain in enumerate(gains) if gain == best]))
        chosen.append(value)
        killed |= exposes
    return chosen, killed


@lru_cache(maxsize=4096)
def _compiled(arg: str, body: str) -> Callable[[object], object]:
    """The published body as a function; cached because "basic" bodies repeat under many names."""
    scope: dict[str, Callable[[object], object]] = {}
    exec(f"def f({arg}):\n{body}", scope)
    return scope["f"]


def _doc(spec: Spec, arg: str) -> str:
    """ "Return <first>." or "Let y be <first>. Return <second>.", matching `_body` line for line."""
    first = render(spec[0].op.doc, arg, spec[0].consts)
    if len(spec) == 1:
        return f"Return {first}."
    temp = _TEMPS[spec[0].op.out_type]
    return f"Let {temp} be {first}. Return {render(spec[1].op.doc, temp, spec[1].consts)}."


def _body(spec: Spec, arg: str) -> str:
    first = render(spec[0].expr, arg, spec[0].consts)
    if len(spec) == 1:
        return f"    return {first}\n"
    temp = _TEMPS[spec[0].op.out_type]
    return f"    {temp} = {first}\n    return {render(spec[1].expr, temp, spec[1].consts)}\n"


class _Draft(NamedTuple):
    problem: GenProblem
    spec: Spec
    arg: str
    cases: tuple[tuple[object, object], ...]  # (input, expected) behind each assert
    exposed: list[int]  # indices into _mutants(spec) that the tests catch


def _draft(spec: Spec, name: str, arg: str, task_id: str, family: str, rng: random.Random) -> _Draft:
    inputs, killed = _pick_inputs(spec, rng)
    body = _body(spec, arg)
    fn = _compiled(arg, body)  # expected values come from running the very body we publish
    cases = tuple((value, fn(value)) for value in inputs)
    tests = tuple(f"assert {name}({value!r}) == {want!r}" for value, want in cases)
    prompt = f'def {name}({arg}):\n    """{_doc(spec, arg)}"""\n'
    problem = GenProblem(task_id, prompt, body, tests, name, family, 1)
    return _Draft(problem, spec, arg, cases, [i for i in range(killed.bit_length()) if killed >> i & 1])


def _incorrect(draft: _Draft, rng: random.Random) -> GenProblem | None:
    """A variant whose body, run on the assert inputs, gets at least one wrong (or raises)."""
    mutants = _mutants(draft.spec)
    for i in rng.sample(draft.exposed, len(draft.exposed)):
        body = _body(mutants[i], draft.arg)
        fn = _compiled(draft.arg, body)
        got = apply(fn, [value for value, _ in draft.cases])
        if any(out != want for out, (_, want) in zip(got, draft.cases, strict=True)):
            p = draft.problem
            return GenProblem(p.task_id + "/bad", p.prompt, body, p.tests, p.entry_point, p.family, 0)
    return None


def space_size(split: Literal["train", "test"], family: Literal["basic", "compose"] = "basic") -> int:
    """How many distinct problems `generate` can return for this split and family."""
    return len(partition(family)[split == "test"]) * len(_NAMES) * 3


def generate(
    split: Literal["train", "test"],
    n: int,
    *,
    family: Literal["basic", "compose"] = "basic",
    seed: int = 0,
    incorrect_fraction: float = 0.0,
) -> list[GenProblem]:
    """n distinct correct problems, plus one incorrect variant for round(n * incorrect_fraction) of them.

    Deterministic in its arguments; train and test never share a behaviour, whatever n and seed.
    """
    if split not in ("train", "test") or family not in ("basic", "compose"):
        raise ValueError(f"unknown split {split!r} or family {family!r}")
    if not 0.0 <= incorrect_fraction <= 1.0:
        raise ValueError(f"incorrect_fraction must be in [0, 1], got {incorrect_fraction}")
    if split == "test" and incorrect_fraction > 0:
        raise ValueError("the test split holds correct problems only; use incorrect_fraction=0")
    total = space_size(split, family)
    if not 0 <= n <= total:
        raise ValueError(f"n={n} is outside 0..{total}, the number of distinct {family} {split} problems")
    rng = random.Random(f"gentask/{family}/{split}/{seed}")
    specs = partition(family)[split == "test"]
    per_spec = len(_NAMES) * 3
    drafts = []
    for i, index in enumerate(rng.sample(range(total), n)):
        spec_index, rest = divmod(index, per_spec)
        name_index, arg_index = divmod(rest, 3)
        spec = specs[spec_index]
        arg = _ARGS[spec[0].op.in_type][arg_index]
        drafts.append(_draft(spec, _NAMES[name_index], arg, f"gen/{family}/{split}/{i}", family, rng))
    problems = [draft.problem for draft in drafts]
    wanted = round(n * incorrect_fraction)
    for draft in rng.sample(drafts, n):
        if len(problems) == n + wanted:
            break
        bad = _incorrect(draft, rng)
        if bad is not None:
            problems.append(bad)
    if len(problems) < n + wanted:
        raise ValueError(f"only {len(problems) - n} of {wanted} problems have an incorrect variant")
    rng.shuffle(problems)
    return problems


def program_text(problem: GenProblem, completion: str | None = None) -> str:
    """prompt + completion + a blank line + one assert per line: the program a harness runs."""
    body = problem.completion if completion is None else completion
    return problem.prompt + body + "\n" + "".join(test + "\n" for test in problem.tests)
