"""The trusted half of the sandbox's verdict, part 2: rebuild reported values, evaluate asserts on them.

A report line ``{"s": K, "v": [...]}`` (written by ``child``) carries one tagged-JSON value per probe of
site K: ``null``/``true``/``false``, or ``[tag, ...]`` with tags i (int, hex), f (float, ``float.hex``), c
(complex), s (str, UTF-8 hex), b/B (bytes/bytearray, hex), l/t/S/F/d (list, tuple, set, frozenset, dict as
k1, v1, ...), I (what an iterator yielded), Q (a Fraction: numerator, denominator), D (a Decimal: sign, digits,
exponent), o (any other object: only its type name), x (the probe raised: the exception's name and message). :func:`decode_report` rebuilds values with fresh built-in types, so no method of the program's
objects ever runs here; :func:`judge` evaluates the assert's own expression on them with the real built-ins, and
guards the few operations whose cost a reported value could blow up.
"""

from __future__ import annotations

import ast
import json
import math
import reprlib
from decimal import Decimal
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from wmtp_studio.evaluate.sandbox.verdict import Site

_MAX_DEPTH = 100
_MAX_REPEAT = 10_000_000  # largest sequence `seq * n` the parent will build
_MAX_BITS = 1 << 17  # largest Fraction term (bits) or Decimal (digits) rebuilt: normalising costs a gcd
_SHOW = reprlib.Repr()
_SHOW.maxstring = _SHOW.maxother = 160
_SHOW.maxlist = _SHOW.maxtuple = _SHOW.maxset = _SHOW.maxdict = _SHOW.maxfrozenset = 12
_BUILTINS = (abs, all, any, bool, complex, dict, float, frozenset, int, isinstance, len, list, max, min, repr)
SAFE_NAMES: dict[str, Any] = {f.__name__: f for f in (*_BUILTINS, round, set, sorted, str, sum, tuple, type)}
SAFE_MATH = {"isclose", "fabs", "isnan", "isinf", "isfinite", "floor", "ceil"}


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


def explain(site: Site, values: list[Any]) -> tuple[str, str]:
    """(expected, got) of a failed assert, short, for people: for `probe OP expected` the two sides' values,
    otherwise each probe's value (`f(2) -> 5`). Computed here from the rebuilt plain data, like the verdict."""
    env = {id(p): v for p, v in zip(site.probes, values, strict=True)}
    probed = {id(p) for p in site.probes}
    test = site.test
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        got, expected = test.left, test.comparators[0]
        if any(id(n) in probed for n in ast.walk(expected)) and not any(
            id(n) in probed for n in ast.walk(got)
        ):
            got, expected = expected, got
        if not any(id(n) in probed for n in ast.walk(expected)):
            return show(_value(expected, env)), show(_value(got, env))
    return "", "; ".join(f"{ast.unparse(p)} -> {show(_value(p, env))}" for p in site.probes)


def raised(values: list[Any]) -> str:
    """`Type: message` of the first reported probe that raised, or ""."""
    return next((str(v) for v in values if isinstance(v, _Raised)), "")


def _value(node: ast.AST, env: dict[int, Any]) -> Any:
    try:
        return _eval(node, env)
    except _Raised as exc:
        return _Shown(f"raised {exc}")
    except Exception as exc:
        return _Shown(f"raised {type(exc).__name__}")


class _Shown(str):
    def __repr__(self) -> str:
        return str(self)


def show(value: Any) -> str:
    """A short repr of a rebuilt value (its size bounded: huge containers and integers are elided)."""
    try:
        return _SHOW.repr(value)
    except ValueError:  # an int too long to print in decimal
        return f"<int of {value.bit_length()} bits>" if isinstance(value, int) else "<unprintable>"


def decode_report(line: bytes, sites: tuple[Site, ...]) -> tuple[int, list[Any]]:
    """Parse one probe record `{"s": K, "v": [...]}`; raises ValueError for anything malformed."""
    try:
        record = json.loads(line)
        index, raw = record["s"], record["v"]
        if type(index) is not int or not 0 <= index < len(sites) or type(raw) is not list:
            raise ValueError("malformed report")
        if len(raw) != len(sites[index].probes):
            raise ValueError("malformed report")
        return index, [_decode_probe(x) for x in raw]
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RecursionError, MemoryError) as exc:
        raise ValueError("malformed report") from exc


def _decode_probe(raw: Any) -> Any:
    if (
        type(raw) is list
        and raw
        and raw[0] == "x"
        and len(raw) in (2, 3)
        and all(type(x) is str for x in raw)
    ):
        name, message = (bytes.fromhex(x).decode("utf-8", "replace") for x in (*raw[1:], "")[:2])
        return _Raised(f"{name}: {message}" if message else name)
    return _decode(raw, 0)


def _decode(raw: Any, depth: int) -> Any:
    """Rebuild a value from its tagged-JSON form with fresh built-in types; raises ValueError when malformed."""
    if raw is None or raw is True or raw is False:
        return raw
    if depth > _MAX_DEPTH or type(raw) is not list or not raw or type(raw[0]) is not str:
        raise ValueError("malformed value")
    tag, rest = raw[0], raw[1:]
    if tag in ("Q", "D"):
        return _number(tag, rest)
    if tag in ("i", "f", "c", "s", "b", "B", "o"):
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


def _number(tag: str, rest: list[Any]) -> Any:
    """A Fraction (numerator, denominator in hex) or a Decimal (sign, digits, exponent) built here from plain data."""
    if not all(type(x) is str for x in rest) or len(rest) != (2 if tag == "Q" else 3):
        raise ValueError("malformed value")
    if tag == "Q":
        n, d = int(rest[0], 16), int(rest[1], 16)
        if d == 0:
            raise ValueError("malformed value")
        return Fraction(n, d) if max(n.bit_length(), d.bit_length()) <= _MAX_BITS else Opaque("Fraction")
    sign, digits, exponent = rest
    if (
        sign not in ("0", "1")
        or not ((digits.isascii() and digits.isdigit()) or not digits)
        or len(digits) > _MAX_BITS
    ):
        raise ValueError("malformed value")
    exp: Any = exponent if exponent in ("n", "N", "F") else int(exponent)  # NaN, sNaN, Infinity, or a power
    return Decimal((int(sign), tuple(map(int, digits)), exp))


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
            return SAFE_NAMES[name]
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
            for cmp, c in zip(ops, comparators, strict=True):
                b = _eval(c, env)
                if not _compare(cmp, a, b):
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
            if isinstance(
                a, str | bytes | bytearray
            ):  # a reported format string could ask for a gigabyte of padding
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
