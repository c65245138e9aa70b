"""The trusted half of the sandbox's verdict: strip expected values out of a program, judge what it reports.

Before a program runs, :func:`make_plan` rewrites each test assert (module level, or in the last top-level
``check``/``test*`` function) into a report: ``assert candidate(3) == 9, msg`` becomes
``__wmtp_probe(K, lambda: (candidate(3)))``. Only the parts the parent cannot compute itself (the *probes*: calls
into the program, its variables) stay in the program; the comparison and the expected value ``9`` stay here. The
child reports each probe's value as plain data (see ``sandbox_launch._enc``), and :func:`judge` rebuilds it from
that text with fresh built-in types and evaluates the original assert expression with the real built-ins. An object
with a forged ``__eq__``, patched built-ins or a tampered report cannot make ``9`` appear: the candidate's process
never holds it. Asserts whose expected side is itself computed by the child (``assert f(x) == y``) are still judged
here but could be lied about; :attr:`Plan.verified` says whether every assert was of the unforgeable kind.
"""

from __future__ import annotations

import ast
import json
import math
from dataclasses import dataclass
from typing import Any

PROBE = "__wmtp_probe"
_MAX_DEPTH = 100
_MAX_REPEAT = 10_000_000  # largest sequence `seq * n` the parent will build
_SAFE_NAMES: dict[str, Any] = {
    f.__name__: f
    for f in (
        abs,
        all,
        any,
        bool,
        bytes,
        complex,
        dict,
        float,
        frozenset,
        int,
        isinstance,
        len,
        list,
        max,
        min,
    )
    + (repr, round, set, sorted, str, sum, tuple, type)
}
_SAFE_MATH = {"isclose", "fabs", "isnan", "isinf", "isfinite", "floor", "ceil"}
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

    @property
    def verified(self) -> bool:
        """True when every assert that depends on the program is an unforgeable, always-reached one."""
        checked = [s for s in self.sites if s.probes]
        return bool(checked) and all(s.verified and s.required for s in checked)


class Opaque:
    """A reported value that is not plain data (a custom object, a generator); equal only to itself."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def __repr__(self) -> str:
        return f"<{self.type_name} object>"


class Iterated:
    """A reported iterator (generator, map, zip): iterable once more in the parent, equal only to itself."""

    def __init__(self, items: list[Any]) -> None:
        self.items = items

    def __iter__(self) -> Any:
        return iter(self.items)

    def __repr__(self) -> str:
        return f"<iterator over {len(self.items)} items>"


class _Raised(Exception):
    """A probe raised in the child; evaluating an assert that needs it fails like the assert would have."""


def make_plan(program: str) -> Plan:
    """Rewrite the program's test asserts into reports; raises SyntaxError for a program that does not parse."""
    tree = ast.parse(program)
    lines = program.splitlines(keepends=True)
    sites: list[Site] = []
    edits: list[tuple[int, int, str]] = []
    for node, required, shadowed in _test_asserts(tree):
        probes: list[ast.expr] = []
        _split(node.test, probes, shadowed)
        if any(isinstance(n, _NO_REWRITE) for p in probes for n in ast.walk(p)):
            continue
        ids = {id(p) for p in probes}
        texts = [_thunk(ast.get_source_segment(program, p) or "None", p) for p in probes]
        call = f"{PROBE}({', '.join([str(len(sites)), *texts])}"
        pad = "\n" * ((node.end_lineno or node.lineno) - node.lineno - call.count("\n"))
        start = _offset(lines, node.lineno, node.col_offset)
        end = _offset(lines, node.end_lineno or node.lineno, node.end_col_offset or 0)
        edits.append((start, end, call + pad + ")"))
        sites.append(Site(node.lineno, node.test, tuple(probes), required, _verified(node.test, ids)))
    source = program
    for start, end, text in sorted(edits, reverse=True):
        source = source[:start] + text + source[end:]
    try:
        ast.parse(source)
    except SyntaxError:  # a rewrite we did not foresee: run the program as written, judged by its exit alone
        return Plan(program, ())
    return Plan(source, tuple(sites))


def judge(site: Site, values: list[Any]) -> str | None:
    """Evaluate the site's assert on the reported probe values; None when it holds, else why it does not."""
    env = {id(p): v for p, v in zip(site.probes, values, strict=True)}
    try:
        held = bool(_eval(site.test, env))
    except _Raised as exc:
        return f"assert at line {site.line} raised {exc}"
    except Exception as exc:  # the assert expression itself raised on plain data (TypeError, ...)
        return f"assert at line {site.line} raised {type(exc).__name__}"
    return None if held else f"assert at line {site.line} failed"


def decode_report(line: bytes, sites: tuple[Site, ...]) -> tuple[int, list[Any]]:
    """Parse one probe record `{"s": K, "v": [...]}`; raises ValueError for anything malformed."""
    try:
        record = json.loads(line)
        index, raw = record["s"], record["v"]
    except (ValueError, TypeError, KeyError, RecursionError) as exc:
        raise ValueError("malformed report") from exc
    if type(index) is not int or not 0 <= index < len(sites) or type(raw) is not list:
        raise ValueError("malformed report")
    if len(raw) != len(sites[index].probes):
        raise ValueError("malformed report")
    return index, [_decode_probe(x) for x in raw]


def _thunk(segment: str, probe: ast.expr) -> str:
    """The child-side code of one probe; a generator expression is reported as the list it yields."""
    if isinstance(probe, ast.GeneratorExp):
        return f"lambda: [*({segment})]"
    return f"lambda: ({segment})"


def _test_asserts(tree: ast.Module) -> list[tuple[ast.Assert, bool, frozenset[str]]]:
    """Asserts at module level and in the last top-level `check`/`test*` function.

    With each: whether it is required, and the names its scope rebinds. A test function's own variables (HumanEval
    calls one `str`) hide the built-ins; module-level rebindings do not, as the program's author may have made them
    to fool the tests (`abs = lambda x: 0`): the tests are written against the real built-ins.
    """
    found: list[tuple[ast.Assert, bool, frozenset[str]]] = []
    shadowed: frozenset[str] = frozenset()

    def visit(body: list[ast.stmt], required: bool) -> None:
        for stmt in body:
            if isinstance(stmt, ast.Assert):
                found.append((stmt, required, shadowed))
            elif isinstance(stmt, ast.With | ast.AsyncWith | ast.For | ast.AsyncFor | ast.While):
                visit(stmt.body, required)
                visit(getattr(stmt, "orelse", []), False)
            elif isinstance(stmt, ast.If):
                visit(stmt.body, False)
                visit(stmt.orelse, False)
            elif isinstance(stmt, ast.Try | ast.TryStar):
                for part in (stmt.body, stmt.orelse, stmt.finalbody, *(h.body for h in stmt.handlers)):
                    visit(part, False)
            elif isinstance(stmt, ast.Match):
                for case in stmt.cases:
                    visit(case.body, False)

    visit(tree.body, True)
    tests = {
        s.name: s
        for s in tree.body
        if isinstance(s, ast.FunctionDef) and (s.name == "check" or s.name.startswith("test"))
    }
    for function in tests.values():
        shadowed = _bound_names(function)
        visit(function.body, True)
    return found


def _bound_names(function: ast.FunctionDef) -> frozenset[str]:
    """Every name the function (or anything nested in it) binds, except `math` bound by `import math`."""
    names: set[str] = set()
    for node in ast.walk(function):
        match node:
            case ast.Name(ctx=ast.Store() | ast.Del(), id=name) | ast.arg(arg=name) | ast.ExceptHandler(name=str(name)):
                names.add(name)
            case ast.FunctionDef(name=name) | ast.AsyncFunctionDef(name=name) | ast.ClassDef(name=name):
                names.add(name)
            case ast.Global(names=bound) | ast.Nonlocal(names=bound):
                names.update(bound)
            case ast.MatchAs(name=str(name)) | ast.MatchStar(name=str(name)) | ast.MatchMapping(rest=str(name)):
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
            return name in _SAFE_NAMES and name not in shadowed
        case ast.Attribute(value=ast.Name(id="math"), attr=attr):
            return attr in _SAFE_MATH and "math" not in shadowed
        case ast.Tuple(elts=elts) | ast.List(elts=elts) | ast.Set(elts=elts):
            return not any(isinstance(e, ast.Starred) for e in elts)
        case ast.Dict(keys=keys):
            return None not in keys
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
    if isinstance(
        node, ast.Call
    ):  # the callee is a safe name or math.attr: only its arguments can hold probes
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
                isinstance(op, ast.Eq | ast.Is | ast.In) and one_sided(a, b)
                for op, a, b in zip(ops, operands, operands[1:], strict=False)
            )
        case ast.Call(func=ast.Attribute(value=ast.Name(id="math"), attr="isclose"), args=[a, b]):
            return one_sided(a, b)
    return False


def _offset(lines: list[str], lineno: int, col_bytes: int) -> int:
    """Character offset into the program of (1-based line, UTF-8 byte column), as ast reports positions."""
    before = sum(len(line) for line in lines[: lineno - 1])
    return before + len(lines[lineno - 1].encode()[:col_bytes].decode())


def _decode_probe(raw: Any) -> Any:
    if type(raw) is list and raw and raw[0] == "x" and len(raw) == 2 and type(raw[1]) is str:
        return _Raised(bytes.fromhex(raw[1]).decode("utf-8", "replace"))
    return _decode(raw, 0)


def _decode(raw: Any, depth: int) -> Any:
    """Rebuild a value from its tagged-JSON form with fresh built-in types; raises ValueError when malformed."""
    if raw is None or raw is True or raw is False:
        return raw
    if depth > _MAX_DEPTH or type(raw) is not list or not raw or type(raw[0]) is not str:
        raise ValueError("malformed value")
    tag, rest = raw[0], raw[1:]
    if tag in "ifcsbBo":
        if not rest or not all(type(x) is str for x in rest):
            raise ValueError("malformed value")
        match tag:
            case "i":
                return int(rest[0], 16)
            case "f":
                return float.fromhex(rest[0])
            case "c":
                return complex(float.fromhex(rest[0]), float.fromhex(rest[1]))
            case "s":
                return bytes.fromhex(rest[0]).decode("utf-8", "surrogatepass")
            case "b":
                return bytes.fromhex(rest[0])
            case "B":
                return bytearray.fromhex(rest[0])
            case _:
                return Opaque(bytes.fromhex(rest[0]).decode("utf-8", "replace"))
    items = [_decode(x, depth + 1) for x in rest]
    try:
        match tag:
            case "l":
                return items
            case "I":
                return Iterated(items)
            case "t":
                return tuple(items)
            case "S":
                return set(items)
            case "F":
                return frozenset(items)
            case "d" if len(items) % 2 == 0:
                return dict(zip(items[0::2], items[1::2], strict=True))
    except TypeError as exc:  # unhashable member
        raise ValueError("malformed value") from exc
    raise ValueError("malformed value")


def _eval(node: ast.AST, env: dict[int, Any]) -> Any:
    """Evaluate a parent node with real built-ins on plain data; probes come from `env`."""
    if id(node) in env:
        value = env[id(node)]
        if isinstance(value, _Raised):
            raise value
        return value
    match node:
        case ast.Constant(value=value):
            return value
        case ast.Name(id=name):
            return _SAFE_NAMES[name]
        case ast.Attribute(attr=attr):
            return getattr(math, attr)
        case ast.Tuple(elts=elts):
            return tuple(_eval(e, env) for e in elts)
        case ast.List(elts=elts):
            return [_eval(e, env) for e in elts]
        case ast.Set(elts=elts):
            return {_eval(e, env) for e in elts}
        case ast.Dict(keys=keys, values=values):
            return {_eval(k, env): _eval(v, env) for k, v in zip(keys, values, strict=True) if k is not None}
        case ast.UnaryOp(op=op, operand=operand):
            return _unary(op, _eval(operand, env))
        case ast.BinOp(op=op, left=left, right=right):
            return _binary(op, _eval(left, env), _eval(right, env))
        case ast.BoolOp(op=op, values=values):
            result: Any = None
            for v in values:
                result = _eval(v, env)
                if bool(result) != isinstance(op, ast.And):
                    return result
            return result
        case ast.Compare(left=left, ops=ops, comparators=comparators):
            a = _eval(left, env)
            for op, c in zip(ops, comparators, strict=True):
                b = _eval(c, env)
                if not _compare(op, a, b):
                    return False
                a = b
            return True
        case ast.IfExp(test=test, body=body, orelse=orelse):
            return _eval(body, env) if _eval(test, env) else _eval(orelse, env)
        case ast.Subscript(value=value, slice=index):
            return _eval(value, env)[_eval(index, env)]
        case ast.Slice(lower=lower, upper=upper, step=step):
            return slice(*(None if p is None else _eval(p, env) for p in (lower, upper, step)))
        case ast.Call(func=func, args=args, keywords=keywords):
            kwargs = {k.arg: _eval(k.value, env) for k in keywords if k.arg is not None}
            return _eval(func, env)(*(_eval(a, env) for a in args), **kwargs)
    raise TypeError(f"cannot evaluate {type(node).__name__}")


def _unary(op: ast.unaryop, a: Any) -> Any:
    match op:
        case ast.Not():
            return not a
        case ast.USub():
            return -a
        case ast.UAdd():
            return +a
    return ~a


def _binary(op: ast.operator, a: Any, b: Any) -> Any:
    sequences = (str, bytes, bytearray, list, tuple)
    match op:
        case ast.Add():
            return a + b
        case ast.Sub():
            return a - b
        case ast.Mult():
            for seq, n in ((a, b), (b, a)):
                if isinstance(seq, sequences) and isinstance(n, int) and len(seq) * n > _MAX_REPEAT:
                    raise MemoryError("repetition too large to judge")
            return a * b
        case ast.Div():
            return a / b
        case ast.FloorDiv():
            return a // b
        case ast.Mod():
            if isinstance(a, str | bytes):  # a reported format string could ask for a gigabyte of padding
                raise TypeError("string formatting is not judged in the parent")
            return a % b
        case ast.RShift():
            return a >> b
        case ast.BitOr():
            return a | b
        case ast.BitXor():
            return a ^ b
        case ast.BitAnd():
            return a & b
    raise TypeError(f"operator {type(op).__name__} is not judged in the parent")


def _compare(op: ast.cmpop, a: Any, b: Any) -> bool:
    match op:
        case ast.Eq():
            return bool(a == b)
        case ast.NotEq():
            return bool(a != b)
        case ast.Lt():
            return bool(a < b)
        case ast.LtE():
            return bool(a <= b)
        case ast.Gt():
            return bool(a > b)
        case ast.GtE():
            return bool(a >= b)
        case ast.Is():
            return a is b
        case ast.IsNot():
            return a is not b
        case ast.In():
            return a in b
    return a not in b
