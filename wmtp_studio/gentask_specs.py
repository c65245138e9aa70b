"""The generated task's operations, how a spec (one operation, or two chained) runs, and the train/test split.

A spec's side is decided by a hash of its behaviour, its outputs on the probe inputs below (gentask.py says why).
Standard library only: this module is imported by torch-free code.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from typing import NamedTuple


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

PROBES: dict[str, list[object]] = {
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
_ALL_PROBES: list[object] = [value for values in PROBES.values() for value in values]
MAX_REPR = 40  # longer expected values make unreadable asserts (e.g. a string repeated twice over)


class Step(NamedTuple):
    op: _Op
    expr: str  # op.expr, or one of op.wrong in a mutant
    consts: tuple[int | str, ...]


Spec = tuple[Step, ...]  # one step for "basic", two for "compose"


def render(fmt: str, arg: str, consts: tuple[int | str, ...]) -> str:
    return fmt.format(a=arg, **{key: repr(value) for key, value in zip("cd", consts, strict=False)})


@cache
def _step_fn(expr: str, consts: tuple[int | str, ...]) -> Callable[[object], object]:
    """The step as a compiled lambda, shared by every spec and mutant that uses it."""
    fn: Callable[[object], object] = eval("lambda a: " + render(expr, "a", consts))
    return fn


class _Raised:
    """Stands for "this call raised": equal only to itself, so an assert against a value fails as it would."""

    def __repr__(self) -> str:
        return "!"


RAISED = _Raised()


def apply(fn: Callable[[object], object], values: list[object]) -> list[object]:
    """fn on each value; an exception, or an input already RAISED, gives RAISED. This is the hot loop."""
    if RAISED not in values:
        with contextlib.suppress(Exception):  # usually nothing raises; otherwise go one value at a time
            return [fn(value) for value in values]
    out: list[object] = []
    for value in values:
        if value is RAISED:
            out.append(value)
            continue
        try:
            out.append(fn(value))
        except Exception:  # our own generated code; raising on an input is an outcome to record, not an error
            out.append(RAISED)
    return out


def spec_outputs(spec: Spec, inputs: list[object]) -> list[object]:
    for step in spec:
        inputs = apply(_step_fn(step.expr, step.consts), inputs)
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
        Step(op, op.expr, consts)
        for op in _OPS
        for consts in itertools.product(*op.domains)
        if len(set(consts)) == len(consts)
    ]
    firsts = {step: apply(_step_fn(step.expr, step.consts), _ALL_PROBES) for step in steps}
    candidates: Iterator[tuple[Spec, list[object]]]
    if family == "basic":
        candidates = (((step,), firsts[step]) for step in steps)
    else:
        candidates = (
            ((a, b), apply(_step_fn(b.expr, b.consts), firsts[a]))
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
        assertable = [out for out in own if out != "!" and len(out) <= MAX_REPR]
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
def partition(family: str) -> tuple[tuple[Spec, ...], tuple[Spec, ...]]:
    """(train, test): every usable spec of a family, in a fixed order."""
    held_out = _held_out_behaviours()
    train: list[Spec] = []
    test: list[Spec] = []
    for spec, behaviour, _ in _usable(family):
        (test if behaviour in held_out else train).append(spec)
    return tuple(train), tuple(test)
