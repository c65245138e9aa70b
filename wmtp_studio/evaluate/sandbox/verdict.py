"""The trusted half of the sandbox's verdict, part 1: strip the expected values out of a program before it runs.

Before a program runs, :func:`make_plan` rewrites each test assert of the benchmark's own test code (module level,
or in its top-level ``check``/``test*`` functions) into a report: ``assert candidate(3) == 9, msg`` becomes
``__wmtp_probe(K, lambda: (candidate(3)))``. Only the parts the parent cannot compute itself (the *probes*: calls
into the program, its variables) stay in the program; the comparison and the expected value ``9`` stay here. The
child reports each probe's value as plain data (``child.encode``), and ``judge`` rebuilds it with
fresh built-in types and evaluates the original assert expression with the real built-ins. An object
with a forged ``__eq__``, patched built-ins or a tampered report cannot make ``9`` appear: the candidate's process
never holds it. Asserts whose expected side is itself computed by the child (``assert f(x) == y``) are still judged
here but could be lied about; :attr:`Plan.verified` says whether every assert was of the unforgeable kind.

Only the test code is instrumented: given where it starts (``tests_from``), the completion's own asserts and test
functions are left as they are, to run or not as the completion decides (as the official harnesses do). The test
code must parse as it does on its own, so a completion cannot swallow it (an unclosed string) or change its shape.
"""

from __future__ import annotations

import ast
import io
import itertools
import warnings
from collections.abc import Collection
from dataclasses import dataclass

from wmtp_studio.evaluate.sandbox.judge import SAFE_MATH, SAFE_NAMES

PROBE = "__wmtp_probe"
_NO_REWRITE = (ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)


@dataclass(frozen=True)
class Site:
    """One rewritten assert: what the parent evaluates, and which sub-expressions the child reports."""

    line: int
    test: ast.expr
    probes: tuple[ast.expr, ...]
    required: bool  # reached whenever its scope runs (not under if/try/match): must be reported at least once
    verified: bool  # the expected value is a literal the child never sees (e.g. `f(x) == 3`, `abs(f(x) - .5) < 1e-6`)


@dataclass(frozen=True)
class Plan:
    """The program as the child runs it, and the asserts the parent judges."""

    source: str
    sites: tuple[Site, ...]
    unjudged: int = 0  # test asserts left to run in the child (forms we do not rewrite)

    @property
    def verified(self) -> bool:
        """True when every test assert that depends on the program is an unforgeable, always-reached one."""
        checked = [s for s in self.sites if s.probes]
        return bool(checked) and not self.unjudged and all(s.verified and s.required for s in checked)


def make_plan(program: str, entry_points: Collection[str] = (), tests_from: int = 0) -> Plan:
    """Rewrite the program's test asserts into reports; raises SyntaxError for a program that does not parse.

    `tests_from`: the offset (at a line start) where the benchmark's test code begins; everything before it is the
    candidate's and is not instrumented. 0: the whole program is test code. Raises ValueError when the test code
    does not parse in the program as it does alone (the completion swallowed or reshaped it).

    `entry_points` are the names the tests are about (HumanEval's entry point, the function an MBPP test calls):
    the program may legitimately define them even when they are built-in names (MBPP task 126 defines `sum`), so
    they are always evaluated in the child. Any other module-level rebinding of a built-in is ignored.
    """
    with warnings.catch_warnings():  # e.g. "invalid escape sequence" in a program's regexes: not our concern
        warnings.simplefilter("ignore")
        tree = ast.parse(program)
    lines = io.StringIO(program, newline="").readlines()  # split where the tokenizer does: \n, \r\n, \r
    starts = list(itertools.accumulate((len(line) for line in lines), initial=0))

    def offset(lineno: int | None, col: int | None) -> int:  # ast positions: 1-based line, UTF-8 byte column
        line = lines[(lineno or 1) - 1] if lines else ""
        return starts[(lineno or 1) - 1] + len(line.encode()[: col or 0].decode())

    if tests_from < 0 or (tests_from and tests_from >= len(program)):
        raise ValueError(f"tests_from {tests_from} is outside the program ({len(program)} characters)")
    first = len(io.StringIO(program[:tests_from], newline="").readlines()) + 1 if tests_from > 0 else 1
    if tests_from > 0:
        _check_test_code(tree, program[tests_from:], first)
    sites: list[Site] = []
    edits: list[tuple[int, int, str]] = []
    unjudged = 0
    for node, required, shadowed in _test_asserts(tree, first):
        probes: list[ast.expr] = []
        _split(node.test, probes, shadowed | frozenset(entry_points))
        if any(isinstance(n, _NO_REWRITE) for p in probes for n in ast.walk(p)):
            unjudged += 1  # a lambda cannot hold it: it stays a plain assert
            continue
        texts = [
            _thunk(program[offset(p.lineno, p.col_offset) : offset(p.end_lineno, p.end_col_offset)], p)
            for p in probes
        ]
        call = f"{PROBE}({', '.join([str(len(sites)), *texts])}"
        pad = "\n" * ((node.end_lineno or node.lineno) - node.lineno - call.count("\n"))  # keep line numbers
        start, end = offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset)
        edits.append((start, end, call + pad + ")"))
        verified = _verified(node.test, {id(p) for p in probes})
        sites.append(Site(node.lineno, node.test, tuple(probes), required, verified))
    source = program
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ast.parse(source)
    except SyntaxError:  # a rewrite we did not foresee: run the program as written, judged by its exit alone
        return Plan(program, (), len(sites) + unjudged)
    return Plan(source, tuple(sites), unjudged)


def _thunk(segment: str, probe: ast.expr) -> str:
    """The child-side code of one probe; a generator expression is reported as the list it yields."""
    if isinstance(probe, ast.GeneratorExp):
        return f"lambda: [*({segment})]"
    return f"lambda: ({segment})"


def _check_test_code(tree: ast.Module, tests: str, first: int) -> None:
    """Raise ValueError unless the statements from line `first` on are exactly the test code parsed alone."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            alone = ast.parse(tests)
    except (
        SyntaxError
    ):  # the whole program parses but its tests alone do not: the completion reached into them
        raise ValueError(
            "the completion changes how the test code parses (e.g. an unclosed string)"
        ) from None
    ours = [s for s in tree.body if s.lineno >= first]
    if [ast.dump(s) for s in ours] != [ast.dump(s) for s in alone.body]:
        raise ValueError("the completion changes how the test code parses (e.g. an unclosed string)")


def _test_asserts(tree: ast.Module, first: int = 1) -> list[tuple[ast.Assert, bool, frozenset[str]]]:
    """Asserts at module level and in top-level `check`/`test*` functions (and functions nested in them), from
    line `first` on (the test code).

    With each: whether it is required, and the names its scope rebinds. A test function's own variables (HumanEval
    calls one `str`) hide the built-ins; module-level rebindings do not, as the program's author may have made them
    to fool the tests (`abs = lambda x: 0`): the tests are written against the real built-ins.
    """
    found: list[tuple[ast.Assert, bool, frozenset[str]]] = []
    shadowed: frozenset[str] = frozenset()

    def visit(body: list[ast.stmt], required: bool, nested: bool = False) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Assert):
                found.append((stmt, required, shadowed))
            elif nested and isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(stmt.body, False, nested)  # a helper of the test: it may or may not be called
            elif isinstance(stmt, ast.With | ast.AsyncWith | ast.For | ast.AsyncFor | ast.While):
                visit(stmt.body, required, nested)
                visit(getattr(stmt, "orelse", []), False, nested)
            elif isinstance(stmt, ast.If):
                visit(stmt.body, False, nested)
                visit(stmt.orelse, False, nested)
            elif isinstance(stmt, ast.Try | ast.TryStar):
                for part in (stmt.body, stmt.orelse, stmt.finalbody, *(h.body for h in stmt.handlers)):
                    visit(part, False, nested)
            elif isinstance(stmt, ast.Match):
                for case in stmt.cases:
                    visit(case.body, False, nested)

    visit([s for s in tree.body if s.lineno >= first], True)
    tests = {
        s.name: s
        for s in tree.body
        if isinstance(s, ast.FunctionDef)
        and s.lineno >= first
        and (s.name == "check" or s.name.startswith("test"))
    }
    for function in tests.values():
        shadowed = _bound_names(function)
        visit(function.body, True, nested=True)
    return found


def _bound_names(function: ast.FunctionDef) -> frozenset[str]:
    """Every name the function (or anything nested in it) binds, except `math` bound by `import math`."""
    names: set[str] = set()
    for node in ast.walk(function):
        match node:
            case (
                ast.Name(ctx=ast.Store() | ast.Del(), id=name)
                | ast.arg(arg=name)
                | ast.ExceptHandler(name=str(name))
            ):
                names.add(name)
            case ast.FunctionDef(name=name) | ast.AsyncFunctionDef(name=name) | ast.ClassDef(name=name):
                names.add(name)
            case ast.Global(names=bound) | ast.Nonlocal(names=bound):
                names.update(bound)
            case (
                ast.MatchAs(name=str(name)) | ast.MatchStar(name=str(name)) | ast.MatchMapping(rest=str(name))
            ):
                names.add(name)
            case ast.Import(names=aliases) | ast.ImportFrom(names=aliases):
                for alias in aliases:
                    bound_as = alias.asname or alias.name.split(".")[0]
                    if not (bound_as == "math" and alias.name == "math" and isinstance(node, ast.Import)):
                        names.add(bound_as)
    names.discard(function.name)
    return frozenset(names)


def _parent_node(node: ast.AST, shadowed: frozenset[str]) -> bool:
    """Whether the parent can compute this node from its children (otherwise the child reports its value)."""
    match node:
        case ast.Constant() | ast.UnaryOp() | ast.BoolOp() | ast.Compare() | ast.IfExp() | ast.Slice():
            return True
        case ast.Name(id=name):
            return name in SAFE_NAMES and name not in shadowed
        case ast.Attribute(value=ast.Name(id="math"), attr=attr):
            return attr in SAFE_MATH and "math" not in shadowed
        case ast.Tuple(elts=elts) | ast.List(elts=elts) | ast.Set(elts=elts):
            return not any(isinstance(e, ast.Starred) for e in elts)
        case ast.Dict(keys=keys):
            return None not in keys
        case ast.BinOp(op=ast.Mod(), left=ast.Constant(value=str() | bytes())):
            return False  # string formatting runs in the child: a reported width could ask for gigabytes here
        case ast.BinOp(op=op):
            return not isinstance(op, ast.Pow | ast.LShift | ast.MatMult)
        case ast.Subscript(ctx=ast.Load()):
            return True
        case ast.Call(func=func, args=args, keywords=keywords):
            return (
                _parent_node(func, shadowed)
                and not isinstance(func, ast.Constant)
                and not any(isinstance(a, ast.Starred) for a in args)
                and all(k.arg is not None for k in keywords)
                and not (isinstance(func, ast.Name) and func.id == "type" and len(args) != 1)
            )
    return False


def _split(node: ast.expr, probes: list[ast.expr], shadowed: frozenset[str]) -> None:
    """Collect, in evaluation order, the largest sub-expressions the parent cannot compute."""
    if not _parent_node(node, shadowed):
        probes.append(node)
        return
    if isinstance(node, ast.Call):  # the callee is a safe name or math.attr: only its arguments hold probes
        children: list[ast.AST] = [*node.args, *(k.value for k in node.keywords)]
    elif isinstance(node, ast.Attribute):
        children = []
    else:
        children = list(ast.iter_child_nodes(node))
    for child in children:
        if isinstance(child, ast.expr):
            _split(child, probes, shadowed)


def _verified(test: ast.expr, probe_ids: set[int]) -> bool:
    """True for the assert forms whose expected value the candidate would have to guess."""

    def probed(n: ast.AST) -> bool:
        return any(id(x) in probe_ids for x in ast.walk(n))

    def one_sided(a: ast.AST, b: ast.AST) -> bool:
        return probed(a) != probed(b)

    match test:
        case ast.BoolOp(op=ast.And(), values=values):
            return any(_verified(v, probe_ids) for v in values)
        case ast.Compare(left=left, ops=[ast.Lt() | ast.LtE()], comparators=[bound]) if not probed(bound):
            # the tolerance idiom `abs(f(x) - expected) < eps`
            match left:
                case ast.Call(func=ast.Name(id="abs"), args=[ast.BinOp(op=ast.Sub(), left=a, right=b)]):
                    return one_sided(a, b)
            return False
        case ast.Compare(left=left, ops=ops, comparators=comparators):
            operands = [left, *comparators]
            return all(
                (isinstance(op, ast.Eq | ast.Is) and one_sided(a, b))
                or (isinstance(op, ast.In) and probed(a) and not probed(b))  # `[everything] in` would pass
                for op, a, b in zip(ops, operands, operands[1:], strict=False)
            )
        case ast.Call(func=ast.Attribute(value=ast.Name(id="math"), attr="isclose"), args=[a, b]):
            return one_sided(a, b)
    return False
