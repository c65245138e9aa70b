"""Model FLOPs utilisation of the training step: a ~1B Llama with 4 transformer heads in bf16, beside NTP (issue 15,
item 4: goal >= 35 % MFU on one GPU).

The step is the trainer's: `model.trunk` + the per-head `forward_backward` (uniform weights, every token
trained) + AdamW, under bf16 autocast with fp32 master weights, as `train.mixed_precision: bf16` runs it.
Random token ids, so no data or tokenizer is needed; the default shape is hidden 2048, 16 decoder layers (15 of
trunk, the last is head 0), 16 attention heads, MLP 5632, vocab 32000, 3 extra transformer heads, batch 4 x 2048
tokens: 1.04B parameters with 4 heads, 0.89B with one (the unembedding is tied to the embedding).

Two FLOP counts per step, both printed:
- model FLOPs, the MFU numerator (PaLM's definition, Chowdhery et al. 2022, appendix B): 6 x tokens x the
  parameters each token runs through (trunk, every head and one unembedding per head; the embedding lookup is
  free) plus the causal attention's 6 x layers x seq x hidden per token (QK^T and AV, forward and backward, half
  the square);
- counted FLOPs: what the step really executed, from torch's FlopCounterMode (matmuls and attention kernels), as a
  cross-check of the formula.
MFU = model FLOPs / step time / the card's dense bf16 peak (a table of known cards by `torch.cuda.get_device_name`,
or `--peak-tflops`). On a CPU the script runs for a smoke test only (`--peak-tflops` then required).

    python benchmarks/bench_mfu.py                          # GPU, the ~1B shape, ntp and mtp4
    python benchmarks/bench_mfu.py --hidden 128 --layers 4 --heads 4 --mlp 256 --vocab 1024 --seq 128 \\
        --batch 2 --steps 2 --warmup 1 --peak-tflops 1 --device cpu         # CPU smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from wmtp_studio.train.loss import forward_backward, head_mask
from wmtp_studio.train.model import MTPModel, build_tiny_hf, decoder_parts

# Dense bf16 tensor-core peaks in TFLOP/s (vendor datasheets, without sparsity), matched in this order.
PEAKS = [
    ("H200", 989.4),
    ("H100 PCIe", 756.0),
    ("H100", 989.4),
    ("A100", 312.0),
    ("L40S", 362.1),
    ("A10G", 70.0),
]


@dataclass
class Result:
    config: str
    n_heads: int
    params: int
    tokens: int  # per step
    step_s: float  # median
    model_flops: float  # per step, the formula
    counted_flops: float  # per step, FlopCounterMode
    peak_gib: float  # CUDA max_memory_allocated (0 on CPU)

    def row(self, peak: float) -> dict[str, Any]:
        return asdict(self) | {
            "tokens_per_s": self.tokens / self.step_s,
            "model_tflops_per_s": self.model_flops / self.step_s / 1e12,
            "mfu": self.model_flops / self.step_s / peak,
            "counted_over_model": self.counted_flops / self.model_flops,
        }


def card_peak(device: torch.device, given: float | None) -> tuple[str, float]:
    """(card name, dense bf16 peak in FLOP/s)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    if given:
        return name, given * 1e12
    for key, tflops in PEAKS:
        if key in name:
            return name, tflops * 1e12
    raise SystemExit(f"unknown peak for {name!r}: pass --peak-tflops (dense bf16)")


def build(args: argparse.Namespace, n_heads: int, device: torch.device) -> MTPModel:
    torch.manual_seed(0)
    hf = build_tiny_hf("llama", args.vocab, args.hidden, args.layers, args.heads, args.mlp, args.seq, {})
    return MTPModel(hf, n_heads, "transformer", base_id="bench-mfu").to(device)


def model_flops(model: MTPModel, tokens: int, seq: int) -> float:
    """6 x tokens x (parameters run per token) + causal attention (module docstring)."""
    layers, norm = decoder_parts(model.hf)
    blocks = [*layers, norm, model.extra_heads]
    per_token = sum(p.numel() for block in blocks for p in block.parameters())
    unembed = model.hf.get_output_embeddings().weight.numel()
    per_token += model.n_heads * unembed
    attention_layers = len(layers) + len(model.extra_heads)  # every head is a decoder layer too
    attention = (
        6 * attention_layers * seq * model.hidden_size
    )  # per token: 12 L S D halved by the causal mask
    return float(tokens * (6 * per_token + attention))


def measure(args: argparse.Namespace, config: str, device: torch.device) -> Result:
    n = 1 if config == "ntp" else 4
    model = build(args, n, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    x = torch.randint(args.vocab, (args.batch, args.seq), generator=torch.Generator().manual_seed(1)).to(
        device
    )
    mask = torch.ones_like(x, dtype=torch.bool)
    dens = [float(head_mask(mask, None, k).sum()) for k in range(n)]
    bf16 = device.type == "cuda" or args.bf16_cpu

    def step() -> None:
        ctx = torch.autocast(device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            forward_backward(
                model, model.trunk(x), x, mask, None, lambda _k, _c, m: m.float(), [1.0] * n, dens
            )
        opt.step()
        opt.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    with FlopCounterMode(display=False) as counter:  # one more step, counted (not timed)
        step()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    tokens = args.batch * args.seq
    params = sum(p.numel() for p in model.parameters())
    result = Result(
        config,
        n,
        params,
        tokens,
        statistics.median(times),
        model_flops(model, tokens, args.seq),
        float(counter.get_total_flops()),
        peak,
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hidden", type=int, default=2048)
    p.add_argument("--layers", type=int, default=16, help="decoder layers of the HF model (trunk + head 0)")
    p.add_argument("--heads", type=int, default=16, help="attention heads")
    p.add_argument("--mlp", type=int, default=5632, help="MLP width")
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--configs", nargs="+", choices=("ntp", "mtp4"), default=["ntp", "mtp4"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--peak-tflops", type=float, help="the card's dense bf16 peak (default: from its name)")
    p.add_argument(
        "--bf16-cpu", action="store_true", help="bf16 autocast on the CPU too (default: fp32 there)"
    )
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    args = p.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    card, peak = card_peak(device, args.peak_tflops)
    rows = []
    for config in args.configs:  # one model at a time on the card
        rows.append(measure(args, config, device).row(peak))
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print(f"card: {card}, peak {peak / 1e12:.1f} TFLOP/s dense bf16, torch {torch.__version__}")
    print(
        f"shape: hidden {args.hidden}, layers {args.layers}, vocab {args.vocab}, batch {args.batch} x {args.seq}"
    )
    print(f"{'config':8s} {'params':>8s} {'step s':>8s} {'tok/s':>9s} {'TFLOP/s':>8s} {'MFU':>6s} "
          f"{'counted/model':>13s} {'peak GiB':>8s}")  # fmt: skip
    for r in rows:
        print(
            f"{r['config']:8s} {r['params'] / 1e9:7.2f}B {r['step_s']:8.3f} {r['tokens_per_s']:9.0f} "
            f"{r['model_tflops_per_s']:8.1f} {r['mfu']:6.1%} {r['counted_over_model']:13.3f} {r['peak_gib']:8.1f}"
        )
    if len(rows) == 2:
        a, b = rows
        print(f"mtp4 / ntp: step time {b['step_s'] / a['step_s']:.2f}x, MFU {b['mfu'] / a['mfu']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"card": card, "peak_flops": peak, "args": vars(args), "results": rows}, f, indent=1)


if __name__ == "__main__":
    main()
