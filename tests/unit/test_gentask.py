"""The generated task: deterministic, disjoint splits, and programs that really pass (or really fail)."""

import json
import os
import re
import subprocess
import sys
from dataclasses import astuple
from typing import Literal

import pytest

from wmtp_studio.gentask import GenProblem, generate, program_text, space_size

Family = Literal["basic", "compose"]
FAMILIES: tuple[Family, ...] = ("basic", "compose")

# Runs each program in its own namespace in one fresh interpreter; prints one JSON verdict per program.
RUNNER = """
import json, sys
verdicts = []
for text in json.load(sys.stdin):
    try:
        exec(text, {"__name__": "__main__"})
        verdicts.append("ok")
    except BaseException as error:
        verdicts.append(type(error).__name__)
print(json.dumps(verdicts))
"""

# Inputs of every kind the functions take; two functions equal on all of them count as the same task.
PROBES: list[object] = [
    *range(21),
    "",
    "a",
    "ab",
    "bad",
    "cab",
    "face",
    "head",
    "bead",
    "egg",
    "gah",
    "hedge",
    "decade",
    "abcdefgh",
    "hhh",
    [],
    [0],
    [4, 2],
    [0, 5, 9],
    [3, 3, 1],
    [6, 1, 8, 2],
    [7, 0, 7, 4, 9],
    [2, 9, 5, 1, 6, 3],
    [1, 2, 3, 4, 5, 6, 7, 8, 9],
]


def run_programs(texts: list[str]) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-I", "-c", RUNNER],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    verdicts: list[str] = json.loads(result.stdout)
    assert len(verdicts) == len(texts)
    return verdicts


def canonical_body(problem: GenProblem) -> str:
    """The completion with the argument renamed, so that only the names of a problem are set aside."""
    match = re.match(r"def (\w+)\((\w+)\):\n", problem.prompt)
    assert match is not None and match.group(1) == problem.entry_point
    return re.sub(rf"\b{match.group(2)}\b", "ARG", problem.completion)


def shape(body: str) -> frozenset[str]:
    """The body's lines with constants blanked: the operations it uses."""
    return frozenset(re.sub(r"\d+|'[a-z]'", "C", line) for line in body.splitlines())


def behaviour(body: str) -> tuple[str, ...]:
    """repr of the output (or "!" for an exception) on every probe: the task's semantics, names aside."""
    scope: dict[str, object] = {}
    exec("def f(ARG):\n" + body, scope)
    fn = scope["f"]
    assert callable(fn)
    out = []
    for value in PROBES:
        try:
            out.append(repr(fn(value)))
        except Exception:
            out.append("!")
    return tuple(out)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_arguments_give_the_same_list(family: Family) -> None:
    first = generate("train", 300, family=family, seed=3, incorrect_fraction=0.3)
    again = generate("train", 300, family=family, seed=3, incorrect_fraction=0.3)
    other = generate("train", 300, family=family, seed=4, incorrect_fraction=0.3)
    assert first == again
    assert first != other


def test_another_process_with_another_hash_seed_gets_the_same_list() -> None:
    """Training and evaluation run in different processes; str hashing must not leak into the data."""
    call = "generate('train', 200, family='compose', seed=3, incorrect_fraction=0.5)"
    code = (
        "import json, dataclasses\nfrom wmtp_studio.gentask import generate\n"
        f"print(json.dumps([dataclasses.astuple(p) for p in {call}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    here = generate("train", 200, family="compose", seed=3, incorrect_fraction=0.5)
    assert json.loads(result.stdout) == json.loads(json.dumps([astuple(p) for p in here]))


@pytest.mark.parametrize(("n", "fraction"), [(0, 0.5), (1, 0.0), (7, 0.5), (101, 0.25), (200, 1.0)])
def test_sizes_count_one_incorrect_variant_per_chosen_problem(n: int, fraction: float) -> None:
    problems = generate("train", n, seed=1, incorrect_fraction=fraction)
    bad = [p for p in problems if p.is_correct == 0]
    # 7 * 0.5 = 3.5 rounds to 4; 101 * 0.25 = 25.25 rounds to 25.
    assert len(problems) == n + round(n * fraction)
    assert len(bad) == round(n * fraction)
    by_id = {p.task_id: p for p in problems if p.is_correct == 1}
    assert len(by_id) == n
    for variant in bad:
        original = by_id[variant.task_id.removesuffix("/bad")]
        assert variant.task_id == original.task_id + "/bad"
        assert (variant.prompt, variant.tests, variant.entry_point) == (
            original.prompt,
            original.tests,
            original.entry_point,
        )
        assert variant.completion != original.completion


@pytest.mark.parametrize("family", FAMILIES)
def test_problems_have_the_documented_shape(family: Family) -> None:
    problems = generate("train", 500, family=family, incorrect_fraction=0.2)
    assert len({p.task_id for p in problems}) == len(problems)
    assert len({p.prompt for p in problems if p.is_correct}) == 500
    for p in problems:
        assert p.family == family
        assert re.fullmatch(rf"gen/{family}/train/\d+(/bad)?", p.task_id)
        assert p.prompt.startswith(f"def {p.entry_point}(") and p.prompt.endswith('"""\n')
        lines = p.completion.splitlines()
        assert p.completion.endswith("\n") and all(line.startswith("    ") for line in lines)
        assert lines[-1].startswith("    return ")
        assert len(lines) == (1 if family == "basic" else 2)
        assert len(p.tests) == 3 and all(t.startswith(f"assert {p.entry_point}(") for t in p.tests)


def test_program_text_joins_prompt_completion_and_asserts() -> None:
    p = generate("test", 1)[0]
    asserts = "\n".join(p.tests) + "\n"
    assert program_text(p) == p.prompt + p.completion + "\n" + asserts
    assert program_text(p, "    return None\n") == p.prompt + "    return None\n" + "\n" + asserts


@pytest.mark.parametrize("family", FAMILIES)
def test_train_and_test_share_no_prompt_and_no_behaviour(family: Family) -> None:
    train = generate("train", 3000, family=family, seed=0)
    test = generate("test", 1000, family=family, seed=7)
    assert not {p.prompt for p in train} & {p.prompt for p in test}
    train_bodies = {canonical_body(p) for p in train}
    test_bodies = {canonical_body(p) for p in test}
    assert not train_bodies & test_bodies
    # Different text could still be the same function ("y = x + 1; return y + 2" is "x + 3").
    assert not {behaviour(b) for b in train_bodies} & {behaviour(b) for b in test_bodies}
    # Held out are new constants, or new pairs, of operations that training has seen.
    assert set().union(*map(shape, test_bodies)) <= set().union(*map(shape, train_bodies))


@pytest.mark.parametrize("family", FAMILIES)
def test_test_split_is_all_correct_and_refuses_incorrect_variants(family: Family) -> None:
    assert all(p.is_correct == 1 for p in generate("test", 500, family=family))
    with pytest.raises(ValueError, match="correct problems only"):
        generate("test", 10, family=family, incorrect_fraction=0.1)


def test_correct_programs_pass_and_incorrect_ones_fail_in_a_real_interpreter() -> None:
    problems = [
        *generate("train", 600, family="basic", seed=2, incorrect_fraction=0.5),
        *generate("train", 600, family="compose", seed=2, incorrect_fraction=0.5),
        *generate("test", 300, family="basic", seed=2),
        *generate("test", 300, family="compose", seed=2),
    ]
    verdicts = run_programs([program_text(p) for p in problems])
    judged = list(zip(problems, verdicts, strict=True))
    assert [(p.task_id, v) for p, v in judged if (v == "ok") != bool(p.is_correct)] == []
    # Incorrect variants fail on a wrong answer (a mutant like `5 % x` may divide by zero), not on a crash.
    assert {v for p, v in judged if not p.is_correct} <= {"AssertionError", "ZeroDivisionError"}


def test_a_model_completion_is_judged_by_the_same_asserts() -> None:
    p = generate("test", 1, family="compose", seed=5)[0]
    assert run_programs([program_text(p, "    return None\n"), program_text(p)]) == ["AssertionError", "ok"]


@pytest.mark.parametrize("family", FAMILIES)
def test_the_whole_space_can_be_drawn_and_one_more_is_refused(family: Family) -> None:
    limit = space_size("test", family)
    if family == "basic":
        assert len({p.prompt for p in generate("test", limit)}) == limit
    with pytest.raises(ValueError, match=f"outside 0..{limit}"):
        generate("test", limit + 1, family=family)


def test_the_spaces_are_large_enough_to_train_on() -> None:
    assert space_size("train", "basic") >= 20_000
    assert space_size("train", "compose") >= 1_000_000
    assert space_size("test", "basic") >= 1_000


# A shared probe set per argument type, larger than the generator's own: two programs that agree on every probe of
# their argument type compute the same function as far as any assert can tell.
TYPED_PROBES: dict[str, list[object]] = {
    "int": list(range(41)),
    "str": [*(p for p in PROBES if isinstance(p, str)), "gfedcba", "aaaa", "bcd", "xyz", "abcabc", "dd"],
    "list": [
        *(p for p in PROBES if isinstance(p, list)),
        [9, 9],
        [10, 0, 11],
        [5],
        [8, 7, 6, 5, 4, 3, 2, 1, 0],
    ],
}
ARG_TYPE = {"x": "int", "n": "int", "k": "int", "s": "str", "text": "str", "word": "str", "xs": "list"}


def typed_behaviour(body: str, arg: str) -> tuple[str, tuple[object, ...]]:
    """(argument type, outputs on its probes) of a published body; bools as the ints an assert equates them to."""
    scope: dict[str, object] = {}
    exec(f"def f({arg}):\n{body}", scope)
    fn = scope["f"]
    assert callable(fn)
    kind = ARG_TYPE.get(arg, "list")
    out: list[object] = []
    for value in TYPED_PROBES[kind]:
        try:
            got = fn(value)
            out.append(int(got) if isinstance(got, bool) else repr(got))
        except Exception:
            out.append("!")
    return kind, tuple(out)


def test_no_program_of_either_test_split_computes_a_function_of_either_train_split() -> None:
    """Brute force over every spec of both families, run as the bodies the problems publish."""
    from wmtp_studio.gentask import _body
    from wmtp_studio.gentask_specs import partition

    sides: dict[str, dict[tuple[str, tuple[object, ...]], str]] = {"train": {}, "test": {}}
    for family in FAMILIES:
        for side, specs in zip(("train", "test"), partition(family), strict=True):
            for spec in specs:
                arg = {"int": "x", "str": "s", "list": "xs"}[spec[0].op.in_type]
                sides[side][typed_behaviour(_body(spec, arg), arg)] = f"{family}: {_body(spec, arg).strip()}"
    shared = sides["train"].keys() & sides["test"].keys()
    examples = [(sides["train"][b], sides["test"][b]) for b in list(shared)[:3]]
    assert not shared, f"{len(shared)} behaviours on both sides, e.g. {examples}"
    assert len(sides["test"]) > 1000  # thousands of held-out behaviours were compared


def test_the_issue_example_lands_on_one_side() -> None:
    from wmtp_studio.gentask import _body
    from wmtp_studio.gentask_specs import partition

    # `t = 'd' + text; len(t) + 6` and `y = len(text) + 9; y - 2` both return len(text) + 7.
    bodies = ("    t = 'd' + text\n    return len(t) + 6\n", "    y = len(text) + 9\n    return y - 2\n")
    assert typed_behaviour(bodies[0], "text") == typed_behaviour(bodies[1], "text")
    train, test = partition("compose")
    sides = {
        side
        for side, specs in (("train", train), ("test", test))
        for sp in specs
        if _body(sp, "text") in bodies
    }
    assert len(sides) == 1
