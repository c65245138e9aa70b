"""Step time of critic-wmtp (after Stage 1), rho1-wmtp (cached reference CE) and grad-wmtp (both score kinds)
relative to baseline-mtp.

Uses the real trainer: one run directory per algorithm with a `recipe.json` derived from
`recipes/tiny-baseline-mtp.yaml`, `loop.setup`, then `loop.train_step` (critic runs `loop._run_stage1` first,
as the trainer does). The rho1 reference is a baseline run trained for a few steps and exported. grad-wmtp runs
twice, `score: logit` (grad-wmtp) and `score: hidden` (grad-wmtp-hidden: one more unembedding-sized matmul). Every
algorithm trains on the same batches (critic with `train_on: correct` trains on the correct examples, like
baseline), which the script checks. Steps are timed round-robin: step i of every algorithm runs back to back
(the order rotating every step), so that machine noise hits all of them alike. Goal: <= 1.05x baseline.

    python benchmarks/bench_algorithms.py [--steps 10] [--rounds 5] [--warmup 2] [--json OUT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "tiny-baseline-mtp.yaml"
ALGORITHMS = ("baseline-mtp", "critic-wmtp", "rho1-wmtp", "grad-wmtp", "grad-wmtp-hidden")
GOAL = 1.05


@dataclass
class Timing:
    algorithm: str
    setup_s: float  # loop.setup (rho1: includes computing the cached reference CE)
    stage1_s: float = 0.0  # critic Stage 1 (value pre-training), before the timed steps
    step_s: list[float] = field(default_factory=list)
    batches: list[str] = field(default_factory=list)  # digest of each step's input ids
    tokens: list[int] = field(default_factory=list)  # non-pad tokens of each step
    trained: list[float] = field(default_factory=list)  # head-0 loss entries of each step
    flops: int = 0  # matmul FLOPs of one step after the timed ones (torch's FlopCounterMode): immune to load

    @property
    def median_s(self) -> float:
        return statistics.median(self.step_s)


def write_run(root: Path, name: str, overrides: list[str]) -> Path:
    """A run directory holding the tiny recipe with `overrides`, frozen as canonical JSON."""
    from wmtp_studio.recipe import load_recipe

    recipe = load_recipe(RECIPE, [f"name=bench-{name}", *overrides], env={})
    run = root / name
    run.mkdir(parents=True)
    (run / "recipe.json").write_text(recipe.canonical_json())
    return run


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def reference_model(root: Path, common: list[str], steps: int) -> Path:
    """Train a baseline run for a few steps and export it: the rho1 reference (model + tokenizer)."""
    from wmtp_studio.train import loop

    s = loop.setup(write_run(root, "reference", common), None)
    state = loop.State()
    for _ in range(steps):
        loop.train_step(s, state, detail=False, stop_requested=False)
    loop.export_model(s)
    return s.run_dir / "model"


def timed_step(s: Any, state: Any, t: Timing) -> None:
    from wmtp_studio.train import loop
    from wmtp_studio.train.loss import STAT_FIELDS

    sync()
    start = time.perf_counter()
    r = loop.train_step(s, state, detail=False, stop_requested=False)
    sync()
    t.step_s.append(time.perf_counter() - start)
    t.batches.append(hashlib.sha256(r.batch.input_ids.cpu().numpy().tobytes()).hexdigest()[:12])
    t.tokens.append(r.tokens)
    t.trained.append(float(r.heads.stats[0, STAT_FIELDS.index("count")]))  # one read, after timing


def run(args: argparse.Namespace, root: Path) -> tuple[dict[str, Timing], dict[str, Any]]:
    from wmtp_studio.train import loop
    from wmtp_studio.train.model import quiet_transformers

    quiet_transformers()
    common = [f"train.steps={args.total_steps}", *args.set]
    if args.threads:
        common.append(f"train.num_threads={args.threads}")
    ref = reference_model(root, common, args.ref_steps)
    overrides = {
        "baseline-mtp": [],
        "critic-wmtp": ["algorithm.name=critic-wmtp", f"algorithm.stage1.steps={args.stage1_steps}"],
        "rho1-wmtp": ["algorithm.name=rho1-wmtp", f"algorithm.reference={ref}"],
        "grad-wmtp": ["algorithm.name=grad-wmtp", "algorithm.score=logit"],
        "grad-wmtp-hidden": ["algorithm.name=grad-wmtp", "algorithm.score=hidden"],
    }
    setups, states, timings = {}, {}, {}
    for name in ALGORITHMS:
        start = time.perf_counter()
        s = loop.setup(write_run(root, name, common + overrides[name]), None)
        timings[name] = Timing(name, time.perf_counter() - start)
        setups[name], states[name] = s, loop.State()
        if name == "critic-wmtp":
            start = time.perf_counter()
            loop._run_stage1(s, states[name])  # what the trainer does before Stage 2
            timings[name].stage1_s = time.perf_counter() - start
        for _ in range(args.warmup):
            loop.train_step(s, states[name], detail=False, stop_requested=False)
        print(f"{name}: set up, {args.warmup} warm-up steps done", file=sys.stderr)
    for r in range(args.rounds):
        for j in range(args.steps):  # step i of every algorithm runs back to back, on the same batch
            i = r * args.steps + j
            turn = i % len(ALGORITHMS)
            for name in ALGORITHMS[turn:] + ALGORITHMS[:turn]:
                timed_step(setups[name], states[name], timings[name])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    for name in ALGORITHMS:  # one more step each, counted instead of timed (the same batch for every one)
        with FlopCounterMode(display=False) as counter:
            loop.train_step(setups[name], states[name], detail=False, stop_requested=False)
        timings[name].flops = counter.get_total_flops()
    s0 = setups["baseline-mtp"]
    env = {
        "torch": torch.__version__,
        "device": str(s0.accel.device),
        "threads": torch.get_num_threads(),
        "mixed_precision": str(s0.accel.mixed_precision),
        "n_heads": s0.recipe.n_heads,
        "batch_size": s0.recipe.train.batch_size,
        "seq_len": s0.recipe.train.seq_len,
        "vocab": len(s0.tokenizer),
        "params": sum(p.numel() for p in s0.model.parameters()),
        "train_examples": len(s0.train_data),
        "loadavg": os.getloadavg(),
    }
    return timings, env


def same_data(timings: dict[str, Timing]) -> bool:
    base = timings["baseline-mtp"]
    return all(
        (t.batches, t.tokens, t.trained) == (base.batches, base.tokens, base.trained)
        for t in timings.values()
    )


def report(timings: dict[str, Timing], env: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    base = timings["baseline-mtp"].median_s
    same = same_data(timings)
    print(
        f"\ntorch {env['torch']}, device {env['device']}, threads {env['threads']}, mixed precision "
        f"{env['mixed_precision']}; tiny Llama {env['params'] / 1e6:.2f}M params, {env['n_heads']} heads, "
        f"vocab {env['vocab']}, batch {env['batch_size']} x seq <= {env['seq_len']}"
    )
    print(
        f"{args.rounds} rounds x {args.steps} steps per algorithm (round-robin), "
        f"after {args.warmup} warm-up; "
        f"load average at the end {env['loadavg'][0]:.2f}"
    )
    print(
        f"same batches and trained tokens for every algorithm: {'yes' if same else 'NO'} "
        f"({sum(timings['baseline-mtp'].tokens)} tokens per algorithm timed)\n"
    )
    print(
        f"{'algorithm':<18}{'median s':>10}{'min s':>8}{'max s':>8}{'vs baseline':>13}{'paired':>10}"
        f"{'setup s':>9}{'stage1 s':>10}{'flops':>8}"
    )
    ratios, paired = {}, {}
    for name, t in timings.items():
        ratios[name] = t.median_s / base
        # Same batch, adjacent in time: the median of per-step ratios is the least noisy comparison.
        paired[name] = statistics.median(
            a / b for a, b in zip(t.step_s, timings["baseline-mtp"].step_s, strict=True)
        )
        print(
            f"{name:<18}{t.median_s:>10.4f}{min(t.step_s):>8.4f}{max(t.step_s):>8.4f}{ratios[name]:>12.3f}x"
            f"{paired[name]:>9.3f}x{t.setup_s:>9.1f}{t.stage1_s:>10.1f}"
            f"{t.flops / max(timings['baseline-mtp'].flops, 1):>7.3f}x"
        )
    for name in ALGORITHMS[1:]:
        print(
            f"goal {name} <= {GOAL:.2f}x baseline: {'met' if ratios[name] <= GOAL else 'NOT met'} "
            f"({ratios[name]:.3f}x; paired per-step ratio {paired[name]:.3f}x)"
        )
    return {
        "env": env,
        "overrides": args.set,
        "steps": args.steps,
        "rounds": args.rounds,
        "warmup": args.warmup,
        "same_batches": same,
        "ratios_to_baseline": ratios,
        "paired_ratios_to_baseline": paired,
        "results": {n: asdict(t) | {"median_s": t.median_s} for n, t in timings.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps per algorithm per round")
    p.add_argument("--rounds", type=int, default=5, help="rounds of round-robin steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per algorithm first")
    p.add_argument("--stage1-steps", type=int, default=20, help="critic Stage 1 steps (untimed)")
    p.add_argument("--ref-steps", type=int, default=5, help="training steps of the rho1 reference")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: the recipe's, 2)")
    p.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default="auto",
        help="the trainer uses CUDA when available; cpu hides the GPUs",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="recipe override for every run, e.g. train.batch_size=128 (repeatable)",
    )
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = p.parse_args()
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # before CUDA is initialised: the trainer then picks the CPU
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    # Recipe steps only shape the lr schedule: keep it past the last timed step.
    args.total_steps = args.ref_steps + args.warmup + args.rounds * args.steps + 100
    with tempfile.TemporaryDirectory(prefix="wmtp-bench-") as tmp:
        os.environ["WMTP_HOME"] = str(Path(tmp) / "home")  # tokenizer and reference-CE caches stay in tmp
        timings, env = run(args, Path(tmp))
    out = report(timings, env, args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
