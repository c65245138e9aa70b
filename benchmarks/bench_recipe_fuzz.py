"""Recipe fuzz: 10,000 mutated recipes through `load_recipe` and `wmtp validate`, counting what must never happen.

Each case starts from a shipped recipe and applies one to three random mutations: a field set to a hostile value
(`.inf`, `.nan`, `true`, `1e38`, 2**40, a date, a list, a long string), an unknown key (also one named like an
algorithm), a duplicated key or section, nesting 20 to 3,000 levels deep (flow or block style), YAML aliases (an
alias bomb among them), tags (`!!binary`, `!!python/...`, a bad `!!timestamp`), random syntax characters or bytes
(invalid UTF-8 too), truncation, `--set` overrides, and `${VAR}` references to secret-named variables whose
values hold YAML syntax (`: `, `[`, `{`, `#`, quotes, newlines) placed in text fields, numeric fields, keys and
flow collections. Every case is written to a file and loaded with `load_recipe(path, overrides, env)`; one case in
ten also runs `wmtp validate FILE --set ...` in-process through typer's CliRunner.

Counted per case:
- traceback: anything raised other than StudioError (or, for the CLI, an exit that is neither 0 nor 2);
- secret echo: a message (or CLI output) holding any secret value's marker;
- time: wall-clock seconds of the load (max, p50, p99), and the longest message in characters.

`--big-mb N` also times one N MB recipe (the issue measured 50 MB: minutes and GBs before the size cap).

    python benchmarks/bench_recipe_fuzz.py [--cases 10000] [--seed 0] [--big-mb 50]

To measure the code of another commit, export its tree and put it first on the path:
    git archive 37834d7 wmtp_studio | tar -x -C /tmp/old && PYTHONPATH=/tmp/old python benchmarks/bench_recipe_fuzz.py
"""

from __future__ import annotations

import argparse
import collections
import math
import random
import statistics
import tempfile
import time
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from typer.testing import CliRunner

import wmtp_studio
from wmtp_studio.cli import app
from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import Recipe, load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
MARKER = "Zq7SECRET"
SECRET_NAMES = ("FUZZ_TOKEN", "DB_PASSWORD", "API_KEY")
NASTY = [
    ": x",
    "[",
    "]",
    "{a: b}",
    "#",
    "'",
    '"',
    "\n",
    "- x",
    "*a",
    "&x",
    "!!python/object:os.system",
    "%",
    "|",
    ">",
]
VALUES = [
    ".inf",
    "-.inf",
    ".nan",
    "true",
    "false",
    "null",
    "~",
    "1e38",
    "-1",
    "0",
    "2147483648",
    "1099511627776",
    "1" + "0" * 400,
    "2024-13-45",
    "1.5",
    "''",
    "[]",
    "{}",
    "[1, 2]",
    "{a: 1}",
    "x" * 300,
    "!!binary AAAA",
    "!!timestamp 2024-99-99",
    "!!python/name:os.system",
    "!!float abc",
    "!!int x",
    "!!set {a, b}",
    "0x1F",
    "1_000",
    "yes",
    "'3e-4'",
    "-0.0",
    "1e-320",
    "*undefined",
    "[.nan, .nan]",
    "[1.5, 0.9]",
    '"\\ud800"',
]


def leaf_paths() -> list[str]:
    """Dotted paths of every leaf field of the recipe model (algorithm fields of every algorithm)."""
    out: list[str] = []

    def models(annotation: Any) -> list[type[BaseModel]]:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return [annotation]
        return [m for arg in typing.get_args(annotation) for m in models(arg)]

    def walk(cls: type[BaseModel], prefix: str) -> None:
        for name, field in cls.model_fields.items():
            inner = models(field.annotation)
            if not inner:
                out.append(prefix + name)
            for m in inner:
                walk(m, f"{prefix}{name}.")

    walk(Recipe, "")
    return sorted(set(out))


def secret_value(rng: random.Random) -> str:
    return (
        MARKER + f"{rng.randrange(10**6):06d}" + "".join(rng.choice(NASTY) for _ in range(rng.randint(1, 3)))
    )


def mutate(text: str, rng: random.Random, paths: list[str], overrides: list[str]) -> tuple[str | bytes, str]:
    """One mutation of `text` (or bytes for invalid UTF-8); returns it and the mutation's name."""
    lines = text.splitlines()
    kind = rng.choice(
        [
            "value",
            "value",
            "unknown",
            "duplicate",
            "deep",
            "alias",
            "syntax",
            "bytes",
            "truncate",
            "override",
            "secret",
            "secret",
            "secret",
            "tag",
        ]
    )
    keyed = [i for i, line in enumerate(lines) if ":" in line and not line.lstrip().startswith("#")]
    i = rng.choice(keyed) if keyed else 0
    if kind == "value" and keyed:
        key = lines[i].split(":")[0]
        lines[i] = f"{key}: {rng.choice(VALUES)}"
    elif kind == "unknown":
        section = rng.choice(["train", "optim", "model", "eval", "algorithm", "data"])
        name = rng.choice(["ntp", "critic-wmtp", "foo", "rho1-wmtp", "x" * 100])
        overrides.append(f"{section}.{name}={rng.choice(VALUES[:10])}")
    elif kind == "duplicate" and keyed:
        lines.insert(rng.randrange(len(lines) + 1), lines[i] if rng.random() < 0.5 else "train: {steps: 3}")
    elif kind == "deep":
        depth = rng.choice([20, 40, 100, 490, 600, 1000, 3000])
        if rng.random() < 0.5:
            nested = "[" * depth + "1" + "]" * depth
            lines.append(f"{rng.choice(['x', 'train', 'model'])}: {nested}")
        else:
            lines += [" " * d + f"k{d}:" for d in range(depth)] + [" " * depth + "v"]
    elif kind == "alias":
        width = rng.randint(2, 10)
        levels = rng.randint(
            2, max(2, int(6 / math.log10(width)))
        )  # up to ~10**6 values: the old code walks them
        lines.append("bomb0: &a0 [lol, lol]")
        lines += [f"bomb{n}: &a{n} [{', '.join([f'*a{n - 1}'] * width)}]" for n in range(1, levels)]
    elif kind == "syntax":
        chars = [
            ":",
            "-",
            "[",
            "]",
            "{",
            "}",
            '"',
            "'",
            "\t",
            "&",
            "*",
            "!",
            "%",
            "@",
            "`",
            "\x00",
            "\x85",
            "\u2028",
        ]
        for _ in range(rng.randint(1, 5)):
            pos = rng.randrange(len(text) + 1)
            text = text[:pos] + rng.choice(chars) + text[pos:]
        return text, kind
    elif kind == "bytes":
        raw = bytearray(text.encode())
        for _ in range(rng.randint(1, 3)):
            raw.insert(rng.randrange(len(raw) + 1), rng.choice([0xFF, 0xC3, 0x80, 0xFE, 0xE2]))
        return bytes(raw), kind
    elif kind == "truncate":
        return text[: rng.randrange(len(text) + 1)], kind
    elif kind == "override":
        path = rng.choice(paths)
        value = rng.choice([*VALUES, "[" * 600 + "]" * 600])
        overrides.append(f"{path}={value}" if rng.random() < 0.9 else f"{path}.{'a.' * 800}b=1")
    elif kind == "secret":
        name = rng.choice(SECRET_NAMES)
        ref = f"${{{name}}}"
        where = rng.choice(["value", "key", "flow", "quoted", "text", "bare"])
        if where == "value" and keyed:
            lines[i] = f"{lines[i].split(':')[0]}: {ref}"
        elif where == "key":
            lines.append(f"{ref}: 1")
        elif where == "flow":
            lines.append(f"tracking: {{run_name: {ref}, experiment: [{ref}]}}")
        elif where == "quoted":
            lines.append(f"tracking: {{run_name: 'x-{ref}'}}")
        elif where == "text":
            lines.append(f"tracking:\n  run_name: {ref}")
        else:
            lines.insert(rng.randrange(len(lines) + 1), ref)
    elif kind == "tag":
        lines.append(
            f"name: {rng.choice(['!!binary @@@', '!!timestamp 2024-13-45', '!!python/object:os.system {}', '!!omap [a]', '!!set [a]'])}"
        )
    return "\n".join(lines) + "\n", kind


def run_case(
    path: Path, overrides: list[str], env: dict[str, str], secrets: list[str], cli: bool
) -> dict[str, Any]:
    start = time.perf_counter()
    message, outcome = "", "accepted"
    try:
        load_recipe(path, overrides, env=env)
    except StudioError as exc:
        message, outcome = str(exc), "refused"
    except BaseException as exc:  # what the fuzz is looking for: anything that is not a StudioError
        message, outcome = f"{type(exc).__name__}: {exc}", f"traceback:{type(exc).__name__}"
    elapsed = time.perf_counter() - start
    cli_outcome = ""
    if cli:
        args = ["validate", str(path), *[x for o in overrides for x in ("--set", o)]]
        res = CliRunner().invoke(app, args, env=env)
        if res.exit_code not in (0, 2) or not isinstance(res.exception, SystemExit | type(None)):
            cli_outcome = f"traceback:{type(res.exception).__name__}"
        message += "\n" + res.output
    echoed = any(s in message for s in secrets) or MARKER in message
    return {"outcome": outcome, "cli": cli_outcome, "echo": echoed, "s": elapsed, "chars": len(message)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--big-mb", type=float, default=0.0, help="also time one recipe of this many MB")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    bases = [p.read_text() for p in sorted(RECIPES.glob("*.yaml"))]
    paths = leaf_paths()
    counts: collections.Counter[str] = collections.Counter()
    kinds_of_tracebacks: collections.Counter[str] = collections.Counter()
    times: list[float] = []
    slowest, longest = (0.0, ""), 0
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.cases):
            secrets = [secret_value(rng) for _ in SECRET_NAMES]
            env = dict(zip(SECRET_NAMES, secrets, strict=True))
            text: str | bytes = rng.choice(bases)
            overrides: list[str] = []
            kinds = []
            for _ in range(rng.randint(1, 3)):
                if isinstance(text, bytes):
                    break
                text, kind = mutate(text, rng, paths, overrides)
                kinds.append(kind)
            path = Path(tmp) / f"case{n}.yaml"
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
            r = run_case(path, overrides, env, secrets, cli=n % 10 == 0)
            path.unlink()
            counts[r["outcome"].split(":")[0]] += 1
            for t in (r["outcome"], r["cli"]):
                if t.startswith("traceback"):
                    kinds_of_tracebacks[f"{t.split(':')[1]} ({'+'.join(kinds)})"] += 1
            counts["cli_traceback"] += bool(r["cli"])
            counts["secret_echo"] += r["echo"]
            times.append(r["s"])
            slowest = max(slowest, (r["s"], "+".join(kinds)))
            longest = max(longest, r["chars"])
    times.sort()
    print(f"code: {Path(wmtp_studio.__file__).parent}")
    print(
        f"cases {args.cases} (seed {args.seed}): accepted {counts['accepted']}, refused {counts['refused']}"
    )
    print(f"tracebacks: load_recipe {counts['traceback']}, wmtp validate {counts['cli_traceback']}")
    print(f"secret echoes: {counts['secret_echo']}")
    print(
        f"time per case: p50 {statistics.median(times) * 1e3:.1f} ms, p99 {times[int(len(times) * 0.99)] * 1e3:.1f} ms, "
        f"max {slowest[0]:.2f} s ({slowest[1]}); longest message {longest} characters"
    )
    for kind, count in kinds_of_tracebacks.most_common(12):
        print(f"  {count:5d}  {kind}")
    if args.big_mb:
        big = Path(tempfile.mkdtemp()) / "big.yaml"
        base = (RECIPES / "tiny-ntp.yaml").read_text()
        filler = "".join(f"extra_{i}: {i}\n" for i in range(int(args.big_mb * 1e6 / 14)))
        big.write_text(base + filler)
        start = time.perf_counter()
        try:
            load_recipe(big, env={})
            message = "accepted"
        except StudioError as exc:
            message = str(exc)
        print(
            f"{args.big_mb:g} MB recipe: {time.perf_counter() - start:.2f} s, message {len(message)} characters"
        )
        big.unlink()


if __name__ == "__main__":
    main()
