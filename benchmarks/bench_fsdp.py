"""Step time and per-process model state: `train.parallel: fsdp` vs `ddp` over the same processes.

Each process builds the same Llama with 4 transformer heads (by default hidden 256, 6 layers, vocab 8192, as
bench_memory.py; `--hidden --layers --attn-heads --mlp --vocab` set another shape), takes its own batch of random
token ids and runs the trainer's step: `model.trunk`, the per-head `forward_backward`, the gradient sum over
processes (DDP: step.py's bucketed all-reduce; FSDP: its reduce-scatter), global-norm clipping and AdamW. DDP and FSDP alternate round by round in fresh process groups; the script prints
the median step time of each, their ratio, and the parameters and AdamW state each process holds.

    python benchmarks/bench_fsdp.py [--procs 2] [--steps 5] [--rounds 2] [--device cpu|cuda] [--json OUT]

On CPU the processes talk over gloo; on CUDA (one GPU per process) over NCCL, in bf16 as the trainer runs there.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.tensor import DTensor

from wmtp_studio.train import fsdp
from wmtp_studio.train.loss import forward_backward, head_mask
from wmtp_studio.train.model import MTPModel, build_tiny_hf
from wmtp_studio.train.step import sum_grads

HEADS = 4
MIB = 2**20


def _local_bytes(t: torch.Tensor) -> int:
    local = t.to_local() if isinstance(t, DTensor) else t
    return local.numel() * local.element_size()


def _rank(rank: int, args: argparse.Namespace, parallel: str, port: int, out: str) -> None:
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=args.procs)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    torch.manual_seed(0)  # the same model on every process
    hf = build_tiny_hf("llama", args.vocab, args.hidden, args.layers, args.attn_heads, args.mlp, args.seq, {})
    model = MTPModel(hf, HEADS, "transformer", base_id="bench").to(device)
    if parallel == "fsdp":
        fsdp.shard(model, bf16=cuda)
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator().manual_seed(1 + rank)  # each process its own batch
    x = torch.randint(0, args.vocab, (args.batch, args.seq), generator=gen).to(device)
    mask = torch.ones_like(x, dtype=torch.bool)
    den = [float(head_mask(mask, None, k).sum()) * args.procs for k in range(HEADS)]
    times = []
    for i in range(args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        with torch.autocast(device.type, torch.bfloat16, enabled=cuda and parallel == "ddp"):
            forward_backward(
                model, model.trunk(x), x, mask, None, lambda k, ce, m: m.float(), [1.0] * HEADS, den
            )
        if parallel == "fsdp":
            fsdp.clip_grad_norm(params, 1.0)
        else:
            sum_grads(params, args.procs)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    state = sum(_local_bytes(p) for p in params) + sum(
        _local_bytes(v) for s in opt.state.values() for v in s.values() if isinstance(v, torch.Tensor)
    )
    if rank == 0:
        Path(out).write_text(json.dumps({"step_s": statistics.median(times), "state_mib": state / MIB}))
    dist.destroy_process_group()


def measure(args: argparse.Namespace, parallel: str, port: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "result.json")
        mp.spawn(_rank, args=(args, parallel, port, out), nprocs=args.procs, join=True)
        result: dict[str, float] = json.loads(Path(out).read_text())
        return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--vocab", type=int, default=8192)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=6, help="decoder layers (trunk + head 0)")
    p.add_argument("--attn-heads", type=int, default=4)
    p.add_argument("--mlp", type=int, help="MLP width (default 4 x hidden)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--port", type=int, default=29591)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() < args.procs:
        print(f"--device cuda needs {args.procs} GPUs, found {torch.cuda.device_count()}", file=sys.stderr)
        return 2
    runs: dict[str, list[dict[str, float]]] = {"ddp": [], "fsdp": []}
    for r in range(args.rounds):  # alternate, so that a change in the machine's load hits both alike
        for i, parallel in enumerate(runs):
            runs[parallel].append(measure(args, parallel, args.port + 2 * r + i))
    summary: dict[str, Any] = {
        name: {
            "step_s": statistics.median(x["step_s"] for x in rs),
            "state_mib_per_process": rs[0]["state_mib"],
        }
        for name, rs in runs.items()
    }
    summary["fsdp_over_ddp_step_time"] = summary["fsdp"]["step_s"] / summary["ddp"]["step_s"]
    summary["setting"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    print(
        f"{args.procs} processes on {args.device}, batch {args.batch} x {args.seq} each, {args.rounds} rounds"
    )
    print(f"{'parallel':<8} {'step (s)':>9} {'params + AdamW state per process (MiB)':>40}")
    for name in runs:
        print(f"{name:<8} {summary[name]['step_s']:>9.3f} {summary[name]['state_mib_per_process']:>40.1f}")
    print(f"FSDP / DDP step time: {summary['fsdp_over_ddp_step_time']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
