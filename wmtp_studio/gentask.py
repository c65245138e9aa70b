"""Procedurally generated code tasks with tests, small enough for a tiny CPU model to learn.

Each problem is a one-argument function: a signature plus an English docstring (the prompt), the body a
model should emit (the completion) and three asserts. Family "basic" applies one operation; "compose" chains
two through a named intermediate ("Let y be x plus 3. Return y times 2."). Incorrect variants (a constant off
by one, a wrong operator, swapped operands) feed algorithms that need labelled wrong answers.

The train/test split is decided by a hash of what the function *does* (its outputs on fixed probe inputs of
its own argument type; one behaviour in five is held out), so a held-out problem is never a renamed train
problem, and equivalent programs ("x plus 1, plus 2" and "x plus 3"; `t = 'd' + text; len(t) + 6` and
`y = len(text) + 9; y - 2`) fall on the same side, within a family and across the two; so do look-alikes
across types, whose bodies read the same (`s[:3]` and `xs[:3]`). Problems differ from one another by spec (operations and constants), function name and argument
name. Standard library only: this module is imported by torch-free code.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache, lru_cache
from typing import Literal, NamedTuple


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


@dataclass(frozen=True)
class _Op:
    """An operation template; `{a}` is the argument, `{c}`/`{d}` the constants, rendered with repr()."""

    in_type: str  # "int", "str" or "list"
    out_type: str  # the same, or "bool"
    doc: str
    expr: str
    domains: tuple[tuple[int | str, ...], ...]
    wrong: tuple[str, ...]  # plausible mistakes; off-by-one constants are added for every int constant


def _ints(lo: int, hi: int) -> tuple[int, ...]:
    return tuple(range(lo, hi + 1))


_CHARS: tuple[str, ...] = tuple("abcdefgh")  # replace uses five of them: 56 pairs would crowd out the rest

_OPS: tuple[_Op, ...] = (
    _Op("int", "int", "{a} plus {c}", "{a} + {c}", (_ints(1, 9),), ("{a} - {c}", "{a} * {c}")),
    _Op("int", "int", "{a} minus {c}", "{a} - {c}", (_ints(1, 9),), ("{a} + {c}", "{c} - {a}")),
    _Op("int", "int", "{a} times {c}", "{a} * {c}", (_ints(2, 9),), ("{a} + {c}", "{a} ** {c}")),
    _Op("int", "int", "{a} divided by {c}, rounded down", "{a} // {c}", (_ints(2, 9),), ("{a} % {c}",)),
    _Op("int", "int", "the remainder of {a} divided by {c}", "{a} % {c}", (_ints(2, 9),), ("{a} // {c}",)),
    _Op("int", "int", "{c} minus {a}", "{c} - {a}", (_ints(1, 9),), ("{a} - {c}", "{c} + {a}")),
    _Op("int", "int", "the larger of {a} and {c}", "max({a}, {c})", (_ints(0, 9),), ("min({a}, {c})",)),
    _Op("int", "int", "the smaller of {a} and {c}", "min({a}, {c})", (_ints(0, 9),), ("max({a}, {c})",)),
    _Op(
        "int",
        "bool",
        "True if {a} is greater than {c}, else False",
        "{a} > {c}",
        (_ints(0, 9),),
        ("{a} >= {c}", "{a} < {c}"),
    ),
    _Op(
        "int",
        "bool",
        "True if {a} is less than {c}, else False",
        "{a} < {c}",
        (_ints(1, 9),),
        ("{a} <= {c}", "{a} > {c}"),
    ),
    _Op("str", "str", "{a} repeated {c} times", "{a} * {c}", (_ints(2, 4),), ()),
    _Op(
        "str",
        "str",
        "the first {c} characters of {a}",
        "{a}[:{c}]",
        (_ints(1, 5),),
        ("{a}[-{c}:]", "{a}[{c}:]"),
    ),
    _Op(
        "str",
        "str",
        "the last {c} characters of {a}",
        "{a}[-{c}:]",
        (_ints(1, 5),),
        ("{a}[:{c}]", "{a}[{c}:]"),
    ),
    _Op("str", "str", "{a} followed by {c}", "{a} + {c}", (_CHARS,), ("{c} + {a}",)),
    _Op("str", "str", "{c} followed by {a}", "{c} + {a}", (_CHARS,), ("{a} + {c}",)),
    _Op(
        "str",
        "str",
        "{a} with every {c} replaced by {d}",
        "{a}.replace({c}, {d})",
        (_CHARS[:5], _CHARS[:5]),
        ("{a}.replace({d}, {c})",),
    ),
    _Op(
        "str",
        "int",
        "the number of times {c} appears in {a}",
        "{a}.count({c})",
        (_CHARS,),
        ("len({a})", "{a}.count({c}) + 1"),
    ),
    _Op("str", "int", "the length of {a} plus {c}", "len({a}) + {c}", (_ints(1, 9),), ("len({a}) - {c}",)),
    _Op(
        "list",
        "list",
        "the list of elements of {a} that are greater than {c}",
        "[v for v in {a} if v > {c}]",
        (_ints(0, 9),),
        ("[v for v in {a} if v >= {c}]", "[v for v in {a} if v < {c}]"),
    ),
    _Op(
        "list",
        "list",
        "the list of elements of {a} that are less than {c}",
        "[v for v in {a} if v < {c}]",
        (_ints(1, 9),),
        ("[v for v in {a} if v <= {c}]", "[v for v in {a} if v > {c}]"),
    ),
    _Op(
        "list",
        "list",
        "the list of elements of {a}, each plus {c}",
        "[v + {c} for v in {a}]",
        (_ints(1, 9),),
        ("[v - {c} for v in {a}]", "[v * {c} for v in {a}]"),
    ),
    _Op(
        "list",
        "list",
        "the first {c} elements of {a}",
        "{a}[:{c}]",
        (_ints(1, 5),),
        ("{a}[-{c}:]", "{a}[{c}:]"),
    ),
    _Op("list", "list", "{a} with {c} added at the end", "{a} + [{c}]", (_ints(0, 9),), ("[{c}] + {a}",)),
    _Op(
        "list",
        "int",
        "the number of times {c} appears in {a}",
        "{a}.count({c})",
        (_ints(0, 9),),
        ("len({a})", "{a}.count({c}) + 1"),
    ),
    _Op(
        "list",
        "int",
        "the sum of {a} plus {c}",
        "sum({a}) + {c}",
        (_ints(1, 9),),
        ("sum({a}) - {c}", "len({a}) + {c}"),
    ),
)

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
_PROBES: dict[str, list[object]] = {
    "int": list(range(21)),
    "str": ["", "a", "ab", "bad", "cab", "face", "head", "bead", "egg", "gah", "hedge", "decade", "abcdefgh"],
    "list": [
        [],
        [0],
        [4, 2],
        [0, 5, 9],
        [3, 3, 1],
        [6, 1, 8, 2],
        [7, 0, 7, 4, 9],
        [2, 9, 5, 1, 6, 3],
        [1, 2, 3, 4, 5, 6, 7, 8, 9],
    ],
}
_ALL_PROBES: list[object] = [value for values in _PROBES.values() for value in values]
_MAX_REPR = 40  # longer expected values make unreadable asserts (e.g. a string repeated twice over)


class _Step(NamedTuple):
    op: _Op
    expr: str  # op.expr, or one of op.wrong in a mutant
    consts: tuple[int | str, ...]


Spec = tuple[_Step, ...]  # one step for "basic", two for "compose"


def _render(fmt: str, arg: str, consts: tuple[int | str, ...]) -> str:
    return fmt.format(a=arg, **{key: repr(value) for key, value in zip("cd", consts, strict=False)})


@cache
def _step_fn(expr: str, consts: tuple[int | str, ...]) -> Callable[[object], object]:
    """The step as a compiled lambda, shared by every spec and mutant that uses it."""
    fn: Callable[[object], object] = eval("lambda a: " + _render(expr, "a", consts))
    return fn


class _Raised:
    """Stands for "this call raised": equal only to itself, so an assert against a value fails as it would."""

    def __repr__(self) -> str:
        return "!"


_RAISED = _Raised()


def _apply(fn: Callable[[object], object], values: list[object]) -> list[object]:
    """fn on each value; an exception, or an input already _RAISED, gives _RAISED. This is the hot loop."""
    if _RAISED not in values:
        with contextlib.suppress(Exception):  # usually nothing raises; otherwise go one value at a time
            return [fn(value) for value in values]
    out: list[object] = []
    for value in values:
        if value is _RAISED:
            out.append(value)
            continue
        try:
            out.append(fn(value))
        except Exception:  # our own generated code; raising on an input is an outcome to record, not an error
            out.append(_RAISED)
    return out


def _outputs(spec: Spec, inputs: list[object]) -> list[object]:
    for step in spec:
        inputs = _apply(_step_fn(step.expr, step.consts), inputs)
    return inputs


def _behaviour(kind: str, values: list[object]) -> str:
    """What a function does, as an assert sees it: its outputs on the probes of its own argument type (bools
    as the ints they equal: `assert f(0) == 1` passes for True). Inputs of other types are left out: `len(t)`
    raises on an int where `len(str(t))` would not, yet both compute the same function of a string."""
    own = [v for v, probe in zip(values, _ALL_PROBES, strict=True) if type(probe).__name__ == kind]
    return kind + repr([int(v) if isinstance(v, bool) else v for v in own])


def _is_test(behaviour: str) -> bool:
    """Hash of a behaviour, not of the text: equivalent specs share a side, whatever their family."""
    digest = hashlib.sha256(behaviour.encode()).digest()
    # One behaviour in five is held out; one in ten left "basic" with only 14 held-out functions.
    return int.from_bytes(digest[:8], "big") % 5 == 0


def _usable(family: str) -> list[tuple[Spec, str, str]]:
    """Every testable spec of a family, in a fixed order, with its behaviour and its outputs on every probe."""
    steps = [
        _Step(op, op.expr, consts)
        for op in _OPS
        for consts in itertools.product(*op.domains)
        if len(set(consts)) == len(consts)
    ]
    firsts = {step: _apply(_step_fn(step.expr, step.consts), _ALL_PROBES) for step in steps}
    candidates: Iterator[tuple[Spec, list[object]]]
    if family == "basic":
        candidates = (((step,), firsts[step]) for step in steps)
    else:
        candidates = (
            ((a, b), _apply(_step_fn(b.expr, b.consts), firsts[a]))
            for a in steps
            for b in steps
            if b.op.in_type == a.op.out_type
        )
    out = []
    for spec, values in candidates:
        outputs = [repr(value) for value in values]
        own = [
            out
            for value, out in zip(_ALL_PROBES, outputs, strict=True)
            if type(value).__name__ == spec[0].op.in_type
        ]
        assertable = [out for out in own if out != "!" and len(out) <= _MAX_REPR]
        # A constant function (e.g. "the remainder of x divided by 2, greater than 5") cannot be tested.
        if len(set(own)) > 1 and len(assertable) >= 3:
            out.append((spec, _behaviour(spec[0].op.in_type, values), repr(outputs)))
    return out


@cache
def _held_out_behaviours() -> frozenset[str]:
    """The behaviours of the test side, decided over both families at once.

    Behaviours are joined into groups that share a side: equal behaviour (equivalent programs, in either family),
    and equal outputs on every probe of every type (look-alikes across types: `s[:3]` and `xs[:3]` publish the
    same body). One group in five, by the hash of its smallest behaviour, is held out.
    """
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    specs = [item for family in ("basic", "compose") for item in _usable(family)]
    for _, behaviour, everywhere in specs:
        parent[root(behaviour)] = root("every probe:" + everywhere)
    smallest: dict[str, str] = {}
    for _, behaviour, _ in specs:
        r = root(behaviour)
        smallest[r] = min(smallest.get(r, behaviour), behaviour)
    return frozenset(b for _, b, _ in specs if _is_test(smallest[root(b)]))


@cache
def _partition(family: str) -> tuple[tuple[Spec, ...], tuple[Spec, ...]]:
    """(train, test): every usable spec of a family, in a fixed order."""
    held_out = _held_out_behaviours()
    train: list[Spec] = []
    test: list[Spec] = []
    for spec, behaviour, _ in _usable(family):
        (test if behaviour in held_out else train).append(spec)
    return tuple(train), tuple(test)


@lru_cache(maxsize=1 << 15)  # every spec of a split fits
def _mutants(spec: Spec) -> tuple[Spec, ...]:
    """Plausible wrong versions: one step with a wrong operator, or one int constant off by one."""
    out: list[Spec] = []
    for i, step in enumerate(spec):
        variants = [_Step(step.op, expr, step.consts) for expr in step.op.wrong]
        for j, value in enumerate(step.consts):
            lowest = step.op.domains[j][0]
            if isinstance(value, int) and isinstance(lowest, int):
                for shifted in (value - 1, value + 1):
                    if shifted >= lowest - 1:  # x // 1 is a plausible slip; x // 0 is not
                        consts = (*step.consts[:j], shifted, *step.consts[j + 1 :])
                        variants.append(_Step(step.op, step.expr, consts))
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
    unique = {repr(value): value for value in (*_PROBES[kind], *near)}
    return list(unique.values())


@lru_cache(maxsize=1 << 15)
def _table(spec: Spec) -> tuple[tuple[object, int], ...]:
    """(input, bit mask of the mutants whose assert on it fails) for every input the spec handles."""
    inputs = _candidates(spec)
    columns = [_outputs(mutant, inputs) for mutant in _mutants(spec)]
    rows = []
    for k, (value, want) in enumerate(zip(inputs, _outputs(spec, inputs), strict=True)):
        if want is _RAISED or len(repr(want)) > _MAX_REPR:
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
    first = _render(spec[0].op.doc, arg, spec[0].consts)
    if len(spec) == 1:
        return f"Return {first}."
    temp = _TEMPS[spec[0].op.out_type]
    return f"Let {temp} be {first}. Return {_render(spec[1].op.doc, temp, spec[1].consts)}."


def _body(spec: Spec, arg: str) -> str:
    first = _render(spec[0].expr, arg, spec[0].consts)
    if len(spec) == 1:
        return f"    return {first}\n"
    temp = _TEMPS[spec[0].op.out_type]
    return f"    {temp} = {first}\n    return {_render(spec[1].expr, temp, spec[1].consts)}\n"


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
        got = _apply(fn, [value for value, _ in draft.cases])
        if any(out != want for out, (_, want) in zip(got, draft.cases, strict=True)):
            p = draft.problem
            return GenProblem(p.task_id + "/bad", p.prompt, body, p.tests, p.entry_point, p.family, 0)
    return None


def space_size(split: Literal["train", "test"], family: Literal["basic", "compose"] = "basic") -> int:
    """How many distinct problems `generate` can return for this split and family."""
    return len(_partition(family)[split == "test"]) * len(_NAMES) * 3


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
    specs = _partition(family)[split == "test"]
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
