"""grpo-wmtp's on-policy refresh over 1 process and over 2 (DDP and FSDP): generation and judging seconds per sample.

Each configuration is a real trainer run of the tiny grpo recipe (launched as `python -m wmtp_studio.train`, the
2-process ones through `accelerate launch` on gloo/CPU, or NCCL with one GPU per process): one step on the data's
groups, then a refresh of `--prompts` prompts x G samples, then one step on its groups. The script reads each
run's `grpo_refresh` event (the refresh's wall time: the slowest process's) and prints generation and judging
seconds per sample side by side, their ratio to one process, and how many of the refresh's samples
(`grpo/step_1.jsonl`) differ from one process's (the runs' weights agree to float rounding at the refresh, which
can flip a sampled token; `mean_one` is off, as its per-process rescale would make them differ more).

    python benchmarks/bench_grpo_refresh.py [--prompts 64] [--max-new-tokens 64] [--threads 1] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from wmtp_studio.recipe import load_recipe

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny-grpo-wmtp.yaml"
CONFIGS = {"1 process": (1, "ddp"), "2 ddp": (2, "ddp"), "2 fsdp": (2, "fsdp")}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run(run_dir: Path, procs: int, parallel: str, args: argparse.Namespace) -> dict[str, float]:
    recipe = load_recipe(
        RECIPE,
        [
            "data.generated.num_train=400",
            "train.steps=2",
            f"train.batch_size={8 // procs}",  # the same global batch of 8
            f"train.parallel={parallel}",
            f"train.num_threads={args.threads}",
            "eval.val_every=1000",
            "algorithm.mean_one=false",  # on, it rescales per process: the models would differ at the refresh
            "algorithm.refresh_steps=1",
            f"algorithm.refresh_prompts={args.prompts}",
            f"algorithm.max_new_tokens={args.max_new_tokens}",
        ],
    )
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.json").write_text(recipe.canonical_json())
    train = ["-m", "wmtp_studio.train", "--run-dir", str(run_dir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MASTER_PORT": str(_free_port())}
    if procs == 1:
        cmd = [sys.executable, *train]
    else:
        cmd = [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--multi_gpu",
            "--num_processes",
            str(procs),
        ]
        cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *train]
        env |= {"ACCELERATE_USE_CPU": "true"} if args.device == "cpu" else {}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.exit(f"{run_dir.name} failed:\n{done.stderr[-3000:]}")
    events = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    (refresh,) = [m["data"] for m in events if m.get("event") == "grpo_refresh"]
    return dict(refresh)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        got = {
            name: _run(root / name.replace(" ", "-"), procs, parallel, args)
            for name, (procs, parallel) in CONFIGS.items()
        }
        samples = {
            name: (root / name.replace(" ", "-") / "grpo" / "step_1.jsonl").read_text().splitlines()
            for name in CONFIGS
        }
    base, one = got["1 process"], samples["1 process"]
    print(f"refresh of {args.prompts} prompts x G, {int(base['samples'])} samples ({args.device})")
    print(
        f"{'':10} {'gen ms/sample':>14} {'ratio':>6} {'judge ms/sample':>16} {'ratio':>6}  samples unlike 1 process's"
    )
    for name, d in got.items():
        gen, judge = d["gen_s_per_sample"], d["judge_s_per_sample"]
        print(
            f"{name:10} {gen * 1e3:14.2f} {gen / base['gen_s_per_sample']:6.2f} {judge * 1e3:16.2f} "
            f"{judge / base['judge_s_per_sample']:6.2f}  {sum(a != b for a, b in zip(samples[name], one, strict=True))}"
        )


if __name__ == "__main__":
    main()
