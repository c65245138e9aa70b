"""The sandbox on benign programs: verdicts, limits, tiers, parallel runs; and the verdict plan on its own."""

from __future__ import annotations

import ast
import os
import secrets

import pytest

from wmtp_studio.errors import StudioError
from wmtp_studio.evaluate.sandbox import Limits, Result, Sandbox, Tier, detect_tier
from wmtp_studio.evaluate.sandbox.judge import Opaque, decode_report, judge
from wmtp_studio.evaluate.sandbox.verdict import make_plan

DOUBLE = "def double(x):\n    return 2 * x\n"


@pytest.fixture(scope="module")
def sandbox() -> Sandbox:
    with Sandbox(limits=Limits(timeout_s=5.0, max_output_bytes=2_000)) as box:
        yield box


def test_correct_program_passes(sandbox: Sandbox) -> None:
    r = sandbox.run(DOUBLE + "assert double(2) == 4\nassert double(-1) == -2\nprint('ok')\n")
    assert (r.passed, r.status, r.exit_code, r.stdout, r.detail) == (True, "passed", 0, "ok\n", "")
    assert r.verified


def test_failing_assert_fails_and_names_its_line(sandbox: Sandbox) -> None:
    r = sandbox.run(DOUBLE + "assert double(2) == 4\nassert double(3) == 7\n")
    assert (r.passed, r.status, r.detail) == (False, "failed", "assert at line 4 failed")


def test_syntax_error_is_error(sandbox: Sandbox) -> None:
    r = sandbox.run("def f(:\n    pass\n")
    assert (r.passed, r.status, r.exit_code) == (False, "error", None)
    assert "SyntaxError" in r.stderr


def test_exception_and_exit_status_fail(sandbox: Sandbox) -> None:
    r = sandbox.run("raise ValueError('boom')\n")
    assert (r.status, r.exit_code) == ("failed", 1)
    assert "ValueError: boom" in r.stderr
    assert sandbox.run("import sys\nsys.exit(3)\n").exit_code == 3


def test_timeout_stops_the_program(sandbox: Sandbox) -> None:
    box = Sandbox(tier=sandbox.tier, slots=1, limits=Limits(timeout_s=1.0))
    with box:
        r = box.run("while True:\n    pass\n")
    assert (r.passed, r.status, r.detail) == (False, "timeout", "program ran past 1.0 s")
    assert 1.0 <= r.duration_s < 3.0


def test_per_test_timeout(sandbox: Sandbox) -> None:
    program = "import time\ndef slow():\n    time.sleep(3)\n    return 1\nassert 1 == 1\nassert slow() == 1\n"
    r = sandbox.run(program, test_timeout_s=0.5)
    assert (r.status, r.detail) == ("timeout", "test ran past 0.5 s")


def test_output_past_the_cap_is_dropped_not_failed(sandbox: Sandbox) -> None:
    # 1000 x 100 bytes = 100,000 bytes on each stream, cap 2,000: stdout keeps its head, stderr its tail.
    program = "import sys\nfor i in range(1000):\n    sys.stdout.write('y' * 100)\n    sys.stderr.write(str(i % 10) * 100)\n"
    r = sandbox.run(program + "assert 1 == 1\n")
    assert (r.status, r.detail, r.output_truncated) == ("passed", "", True)
    assert r.stdout == "y" * 2000 and r.stderr == "".join(str(i % 10) * 100 for i in range(980, 1000))
    assert not sandbox.run("print('short')\n").output_truncated


def test_stdin_is_closed_and_environment_scrubbed(sandbox: Sandbox) -> None:
    program = (
        "import os\n"
        "def env():\n    return sorted(os.environ)\n"
        "def home_is_cwd():\n    return os.environ['HOME'] == os.getcwd() and os.listdir('.') == []\n"
        "assert env() == ['HOME', 'LANG', 'PATH']\n"
        "assert home_is_cwd() == True\n"
        "input()\n"
    )
    r = sandbox.run(program)
    assert (r.status, r.detail) == ("failed", "exit status 1")
    assert "EOFError" in r.stderr


def test_forged_equality_is_not_trusted(sandbox: Sandbox) -> None:
    program = "class Yes:\n    def __eq__(self, other):\n        return True\ndef f():\n    return Yes()\nassert f() == 3\n"
    r = sandbox.run(program)
    assert (r.status, r.detail) == ("failed", "assert at line 6 failed")


def test_tier_detection_and_require_tier() -> None:
    host = detect_tier()
    assert isinstance(host, Tier)
    with Sandbox(require_tier=host, slots=1) as box:
        assert box.tier == host
    if host < Tier.NAMESPACE:
        with pytest.raises(StudioError, match=f"refusing to run below tier {Tier(host + 1).name}"):
            Sandbox(require_tier=Tier(host + 1))
        with pytest.raises(StudioError, match="not available"):
            Sandbox(tier=Tier.NAMESPACE)
    else:  # the tier in force is the one asked for, even when the host could do more
        with pytest.raises(
            StudioError, match="refusing to run below tier NAMESPACE; this host provides NAMESPACE"
        ):
            Sandbox(tier=Tier.PROCESS, require_tier=Tier.NAMESPACE)


@pytest.mark.parametrize("tier", list(Tier))
def test_every_result_records_its_tier(tier: Tier) -> None:
    if tier > detect_tier():
        pytest.skip(f"this host provides {detect_tier().name}")
    with Sandbox(tier=tier, slots=1) as box:
        results = [
            box.run(DOUBLE + "assert double(1) == 2\n"),
            box.run("x = (\n"),
            box.run("assert 1 == 2\n"),
        ]
    assert [r.tier for r in results] == [tier] * 3
    assert [r.status for r in results] == ["passed", "error", "failed"]


def test_run_many_keeps_order_and_runs_in_parallel() -> None:
    # Two programs that meet through an abstract unix socket: each passes only if the other runs at the same time.
    name = f"wmtp-test-{secrets.token_hex(6)}"
    meet = (
        "import socket, time\n"
        "def meet(role):\n"
        "    s = socket.socket(socket.AF_UNIX)\n"
        f"    address = '\\0{name}'\n"
        "    if role == 'listen':\n"
        "        s.bind(address)\n"
        "        s.listen()\n"
        "        s.settimeout(8)\n"
        "        return s.accept()[0].recv(5)\n"
        "    for _ in range(800):\n"
        "        try:\n"
        "            s.connect(address)\n"
        "            s.sendall(b'hello')\n"
        "            return b'hello'\n"
        "        except OSError:\n"
        "            time.sleep(0.01)\n"
    )
    programs = [meet + "assert meet('listen') == b'hello'\n", meet + "assert meet('connect') == b'hello'\n"]
    programs += [f"print({i})\nassert {i} == {i}\n" for i in range(6)]
    with Sandbox(slots=2, limits=Limits(timeout_s=10.0)) as box:
        results = box.run_many(programs)
    assert [r.status for r in results] == ["passed"] * 8
    assert [r.stdout for r in results[2:]] == [f"{i}\n" for i in range(6)]


def test_run_many_of_nothing(sandbox: Sandbox) -> None:
    assert sandbox.run_many([]) == []


def test_workdir_is_fresh_and_removed(sandbox: Sandbox) -> None:
    program = (
        "import os\nopen('mine.txt', 'w').write('x')\nprint(os.getcwd())\nassert len(os.listdir('.')) == 1\n"
    )
    first, second = sandbox.run(program), sandbox.run(program)
    assert first.passed and second.passed
    if sandbox.tier < Tier.NAMESPACE:  # tier 3's workdir lives in the run's own tmpfs
        assert not os.path.exists(first.stdout.strip())


# ---------------------------------------------------------------- the verdict plan, without processes


def test_plan_keeps_expected_values_out_of_the_program() -> None:
    program = (
        DOUBLE + "def check(candidate):\n    assert candidate(6170) == 12340, 'message 999'\ncheck(double)\n"
    )
    plan = make_plan(program)
    assert "12340" not in plan.source and "999" not in plan.source and "6170" in plan.source
    assert plan.source.count("\n") == program.count("\n")  # tracebacks keep their line numbers
    assert [(s.line, s.required, s.verified) for s in plan.sites] == [(4, True, True)]
    assert plan.verified


@pytest.mark.parametrize(
    ("test", "verified"),
    [
        ("f(1) == 2", True),
        ("[1] == f(1)", True),
        ("f(1) is None", True),
        ("f(1) in (1, 2)", True),
        ("abs(f(1) - 0.5) < 1e-6", True),
        ("math.isclose(f(1), 0.5)", True),
        ("len(f(1)) == 2 and f(1)[0] == 1", True),
        ("f(1)", False),  # the child could report any truthy value
        ("not f(1)", False),
        ("f(1) != 2", False),
        ("f(1) == y", False),  # `y` is computed by the program
        ("f(1) > 0", False),
        ("1 in f(1)", False),  # a list of every value would pass
    ],
)
def test_verified_forms(test: str, verified: bool) -> None:
    (site,) = make_plan(f"import math\ny = 2\nassert {test}\n").sites
    assert site.verified is verified


def test_asserts_under_if_and_try_are_not_required() -> None:
    program = (
        "def check(c):\n    if c:\n        assert c(1) == 1\n    for i in [1]:\n        assert c(i) == 1\n"
    )
    assert [s.required for s in make_plan(program).sites] == [False, True]


def test_helpers_inside_the_test_are_judged_too_and_unrewritable_asserts_count() -> None:
    program = (
        "def check(c):\n    def helper(x):\n        assert c(x) == 2\n    helper(1)\n    assert c(1) == 2\n"
    )
    plan = make_plan(program)
    assert [(s.line, s.required) for s in plan.sites] == [(3, False), (5, True)] and not plan.verified
    walrus = make_plan("def f(x):\n    return x\nassert (y := f(2)) == 2\nassert f(1) == 1\n")
    assert (len(walrus.sites), walrus.unjudged, walrus.verified) == (1, 1, False)
    assert "assert (y := f(2)) == 2" in walrus.source  # left as it was, to run in the child


def test_judge_rebuilds_values_with_builtin_types() -> None:
    (site,) = make_plan("assert f(1) == [1, (2, 3.5), {'a': {4}}]\n").sites
    value = '["l",["i","1"],["t",["i","2"],["f","0x1.c000000000000p+1"]],["d",["s","61"],["S",["i","4"]]]]'
    index, values = decode_report(f'{{"s":0,"v":[{value}]}}'.encode(), (site,))
    assert index == 0 and judge(site, values) is None
    assert judge(site, [Opaque("Yes")]) == "assert at line 1 failed"


@pytest.mark.parametrize(
    "line", [b"{", b'{"s":1,"v":[]}', b'{"s":0,"v":[["q","1"]]}', b'{"s":0,"v":[["S",["l"]]]}', b'{"s":0}']
)
def test_malformed_reports_are_rejected(line: bytes) -> None:
    sites = make_plan("assert f(1) == 1\n").sites
    with pytest.raises(ValueError):
        decode_report(line, sites)


def test_judge_evaluates_with_real_builtins() -> None:
    (site,) = make_plan("assert isinstance(f(1), int) and sorted(f(2)) == [1, 2]\n").sites
    assert [ast.unparse(p) for p in site.probes] == ["f(1)", "f(2)"]
    assert judge(site, [3, [2, 1]]) is None
    assert judge(site, [True, [2, 1]]) is None  # bool is an int, as in Python
    assert judge(site, ["3", [2, 1]]) == "assert at line 1 failed"
    assert judge(site, [3, "21"]) == "assert at line 1 failed"


def test_result_fields() -> None:
    assert [f for f in Result.__dataclass_fields__] == [
        "passed", "status", "exit_code", "duration_s", "stdout", "stderr", "tier", "detail", "verified",
        "line", "expected", "got", "exception", "output_truncated",
    ]  # fmt: skip


def test_values_survive_the_report_round_trip() -> None:
    import collections
    import enum
    import math

    from wmtp_studio.evaluate.sandbox.child import encode
    from wmtp_studio.evaluate.sandbox.judge import Iterated

    class Color(enum.IntEnum):
        RED = 3

    class Four(int):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = int.__hash__

    values = [0, -5, 2**100, 1.5, -0.0, float("inf"), 1 + 2j, "héllo\n\ud800", b"\x00", bytearray(b"a")]
    values += [[1, (2, 3)], {"a": {1, 2}}, frozenset({1}), None, True, False]
    (site,) = make_plan("assert f(1) == 1\n").sites
    for value in values:
        (got,) = decode_report(f'{{"s":0,"v":[{encode(value)}]}}'.encode(), (site,))[1]
        assert got == value and type(got) is type(value) and repr(got) == repr(value)
    plain = [collections.Counter("aab"), Color.RED, Four(0), float("nan"), iter([1, 2]), object()]
    got = [decode_report(f'{{"s":0,"v":[{encode(v)}]}}'.encode(), (site,))[1][0] for v in plain]
    assert got[0] == {"a": 2, "b": 1} and type(got[0]) is dict  # subclasses arrive as their base type
    assert (got[1], type(got[1])) == (3, int) and (got[2], type(got[2])) == (0, int)
    assert math.isnan(got[3])
    assert isinstance(got[4], Iterated) and list(got[4]) == [1, 2] and got[4] != [1, 2]
    assert isinstance(got[5], Opaque) and got[5].type_name == "object" and got[5] != got[5].type_name


def test_stdin_is_delivered_when_given(sandbox: Sandbox) -> None:
    text = "3\n" + "x" * 200_000 + "\n"  # more than a pipe holds
    r = sandbox.run(
        "import sys\nn = int(input())\nrest = sys.stdin.read()\nprint(n * 2, len(rest))\n", stdin=text
    )
    assert (r.status, r.stdout) == ("passed", "6 200001\n")


def test_a_closed_sandbox_refuses_to_run() -> None:
    box = Sandbox(slots=1)
    assert box.run("assert 1 == 1\n").passed
    box.close()
    with pytest.raises(StudioError, match="closed"):
        box.run("assert 1 == 1\n")


def test_entry_point_may_shadow_a_builtin_but_other_rebindings_are_ignored() -> None:
    # MBPP task 126 asks for a function named `sum`: its tests call the program's `sum`, not the built-in.
    program = "def sum(a, b):\n    return 6 if (a, b) == (10, 15) else 0\nassert sum(10, 15) == 6\n"
    with Sandbox(slots=1) as box:
        assert box.run(program, entry_points=("sum",)).passed
        assert not box.run(program).passed  # judged against the built-in sum: TypeError
        # A rebinding that is not the entry point cannot fool a tolerance check written with the real abs.
        cheat = "abs = lambda x: 0\ndef f(x):\n    return 0\nassert abs(f(2) - 4) < 1e-9\n"
        assert not box.run(cheat, entry_points=("f",)).passed


def test_only_the_test_code_is_instrumented() -> None:
    completion = (
        "def add(x, y):\n    assert x >= 0\n    return x + y\n\ndef test_add():\n    assert add(2, 3) == 6\n"
    )
    tests = "def check(candidate):\n    assert candidate(2, 3) == 5\ncheck(add)\n"
    plan = make_plan(completion + "\n" + tests, tests_from=len(completion) + 1)
    assert [(s.line, s.required) for s in plan.sites] == [(9, True)]  # check's assert only (line 9)
    assert "assert x >= 0" in plan.source and "assert add(2, 3) == 6" in plan.source  # left as written
    whole = make_plan(completion + "\n" + tests)  # no boundary: every test function is test code
    assert [s.line for s in whole.sites] == [6, 9]
    with pytest.raises(ValueError, match="test code"):
        make_plan("x = '''\n" + tests + "'''\n", tests_from=8)  # the completion turns the tests into a string
    with pytest.raises(ValueError, match="outside the program"):
        make_plan(tests, tests_from=len(tests))  # no test code at all would leave nothing to judge


def test_function_programs_do_not_run_as_main(sandbox: Sandbox) -> None:
    program = "import sys\nassert __name__ != '__main__'\nif __name__ == '__main__':\n    sys.exit(3)\n"
    assert sandbox.run(program).passed
    stdio = "print(__name__)\n"
    assert sandbox.run(stdio, stdin="").stdout == "__main__\n"
    assert sandbox.run(stdio, as_main=True).stdout == "__main__\n"


def test_fractions_and_decimals_are_rebuilt_by_value() -> None:
    from decimal import Decimal
    from fractions import Fraction

    from wmtp_studio.evaluate.sandbox.child import encode

    class Half(Fraction):
        def __eq__(self, other: object) -> bool:
            return True

    (site,) = make_plan("assert f(1) == 1\n").sites
    values = [Fraction(1, 3), Half(1, 2), Decimal("-1.250"), Decimal("NaN"), Decimal("-Infinity")]
    got = [decode_report(f'{{"s":0,"v":[{encode(v)}]}}'.encode(), (site,))[1][0] for v in values]
    assert got[0] == Fraction(1, 3) and type(got[0]) is Fraction
    assert got[1] == 0.5 and type(got[1]) is Fraction and got[1] != 1  # the subclass's __eq__ is gone
    assert str(got[2]) == "-1.250" and type(got[2]) is Decimal
    assert got[3].is_nan() and got[4] == Decimal("-Infinity")
    assert encode(Fraction(1, 3)) == '["Q","1","3"]'  # numerator and denominator in hex


def test_a_program_that_prints_megabytes_still_passes(sandbox: Sandbox) -> None:
    # 5,000 lines of 1,000 bytes: past the 2,000-byte cap the rest is drained to /dev/null, not judged.
    r = sandbox.run("for i in range(5000):\n    print(str(i % 10) * 999)\nassert 1 == 1\n")
    assert (r.status, r.output_truncated) == ("passed", True)
    assert r.stdout == ("0" * 999 + "\n" + "1" * 999 + "\n")[:2000]


def test_the_cpu_time_of_a_killed_run_is_accounted() -> None:
    import resource

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    before = children_cpu()
    with Sandbox(slots=1, limits=Limits(timeout_s=1.0)) as box:  # closing waits for the zygote and its runs
        assert box.run("while True:\n    pass\n").status == "timeout"
    # A 1 s spin uses up to 1 CPU-s (less on a busy machine); at tier NAMESPACE it used to vanish (~0.02 s).
    assert children_cpu() - before > 0.1
