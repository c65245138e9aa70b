"""Peak memory and step time: NTP (n=1) vs MTP n=4 naive, per-head, and per-head with chunked CE (METHOD.md,
"Loss": memory; recipe `train.ce_chunk`), three ways: weights known before the CE and weights read from each
entry's own gradient score (one pass per chunk), and weights read from the CE (the backward recomputes each
chunk's logits).

A tiny Llama (hidden 256, 6 layers, vocab 8192 by default: a ~5M-parameter trunk below the head-0 layer),
transformer heads, random token ids, every token trained. One step = `model.trunk` + `forward_backward` + AdamW.
Several vocabularies (`--vocab 32768 131072`) are measured in one run and printed side by side.

CPU: each configuration runs in its own subprocess, so `ru_maxrss` (peak RSS) belongs to that configuration
alone; we report the absolute peak and the increase over the RSS right after building model and optimiser.
CUDA: one process, `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, same two numbers.

    python benchmarks/bench_memory.py [--steps 5] [--rounds 1] [--device cpu|cuda] [--json OUT]
    python benchmarks/bench_memory.py --vocab 32768 131072 --configs ntp mtp4-per-head mtp4-chunked
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from wmtp_studio.train.loss import EntryWeights, UpFrontWeights, WeightFn, forward_backward, head_mask
from wmtp_studio.train.model import MTPModel, build_tiny_hf, decoder_parts

# name: (heads, naive, chunked CE, weights): "upfront" known before the CE (ntp's, baseline-mtp's), "score" each
# entry's from its own gradient score (grad-wmtp's), "ce" read from the CE (rho1 weighted's)
CONFIGS = {
    "ntp": (1, False, False, "upfront"),
    "mtp4-naive": (4, True, False, "upfront"),
    "mtp4-per-head": (4, False, False, "upfront"),
    "mtp4-chunked": (4, False, True, "upfront"),
    "mtp4-chunk-scored": (4, False, True, "score"),
    "mtp4-chunk-recomp": (4, False, True, "ce"),
}
CHUNKED = ("mtp4-chunked", "mtp4-chunk-scored", "mtp4-chunk-recomp")


def reads_ce(_k: int, ce: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """w = 1 on valid entries, computed from the CE as rho1-wmtp's weights are (so chunked CE must recompute)."""
    return m.float() * (ce >= 0)


def weights(kind: str) -> WeightFn:
    """w = 1 on valid entries, made the way `kind` says (see CONFIGS)."""
    if kind == "upfront":
        return UpFrontWeights(lambda _k, m: m.float())
    if kind == "score":  # from each entry's ||softmax - onehot||, as grad-wmtp's `score: logit`; no rescale
        return EntryWeights(
            "logit", reads_ce, lambda _k, s, m: m.float() * (s >= 0), lambda _k, _s, _m, u: u.new_ones(())
        )
    return reads_ce


HIDDEN, LAYERS, ATTN_HEADS = 256, 6, 4
MIB = 2**20


@dataclass
class Result:
    config: str
    vocab: int
    n_heads: int
    naive: bool
    peak_mib: float  # CPU: peak RSS of the process; CUDA: max_memory_allocated
    base_mib: float  # right after building model + optimiser, before any step (CPU: current RSS)
    step_s: float  # median step time after warm-up
    tokens_per_s: float

    @property
    def increase_mib(self) -> float:
        return self.peak_mib - self.base_mib


def build(n_heads: int, vocab: int, seq: int, device: torch.device) -> MTPModel:
    torch.manual_seed(0)  # every configuration starts from the same trunk
    hf = build_tiny_hf("llama", vocab, HIDDEN, LAYERS, ATTN_HEADS, None, seq, {})
    return MTPModel(hf, n_heads, "transformer", base_id="bench").to(device)


def param_counts(model: MTPModel) -> dict[str, int]:
    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    layers, norm = decoder_parts(model.hf)
    return {
        "embedding (tied unembedding)": count(model.hf.get_input_embeddings()),
        "trunk layers 0..L-2 (no embedding)": sum(count(layer) for layer in layers[:-1]),
        "head-0 layer + final norm": count(layers[-1]) + count(norm),
        "extra heads": count(model.extra_heads),
        "total": count(model),
    }


def rss_mib() -> float:
    """Peak RSS of this process so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MIB if sys.platform == "darwin" else peak / 1024


def current_rss_mib() -> float:
    """Resident set size now (Linux /proc); elsewhere the peak so far."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except OSError:
        return rss_mib()
    return pages * os.sysconf("SC_PAGE_SIZE") / MIB


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()  # kernels are asynchronous: time what ran, not what was queued


def inputs(vocab: int, args: argparse.Namespace, device: torch.device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randint(vocab, (args.batch, args.seq), generator=gen).to(device)  # (B, S)


def step_fn(
    name: str, model: MTPModel, opt: torch.optim.Optimizer, x: torch.Tensor, args: argparse.Namespace
) -> Callable[[], float]:
    """One timed training step of configuration `name` on `model` (trunk, `forward_backward`, AdamW): seconds."""
    n, naive, chunked, kind = CONFIGS[name]
    weights_for = weights(kind)
    device = x.device
    mask = torch.ones_like(x, dtype=torch.bool)  # (B, S): every token trained
    denominators = [float(head_mask(mask, None, k).sum()) for k in range(n)]
    bf16 = args.precision == "bf16" or (args.precision == "auto" and device.type == "cuda")

    def step() -> float:
        sync(device)
        start = time.perf_counter()
        ctx = torch.autocast(device.type, torch.bfloat16) if bf16 else contextlib.nullcontext()
        with ctx:
            forward_backward(
                model,
                model.trunk(x),
                x,
                mask,
                None,
                weights_for,
                [1.0] * n,
                denominators,
                naive=naive,
                ce_chunk=args.ce_chunk if chunked else None,
            )
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        return time.perf_counter() - start

    return step


def measure(name: str, vocab: int, args: argparse.Namespace) -> Result:
    """Build one configuration, warm up, time `args.steps` steps and read its peak memory."""
    n, naive = CONFIGS[name][:2]
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    model = build(n, vocab, args.seq, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = inputs(vocab, args, device)
    step = step_fn(name, model, opt, x, args)
    sync(device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() / MIB if cuda else current_rss_mib()
    for _ in range(args.warmup):
        step()
    times = [step() for _ in range(args.steps)]
    peak = torch.cuda.max_memory_allocated() / MIB if cuda else rss_mib()
    med = statistics.median(times)
    return Result(name, vocab, n, naive, peak, base, med, args.batch * args.seq / med)


def paired(vocab: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Step time of the chunked configurations against the unchunked per-head one, in one process on one model,
    step by step in rotating order: per configuration its median step time and the median over steps of (its step
    i / per-head's step i), so that load on a shared machine hits every configuration alike."""
    names = ["mtp4-per-head", *CHUNKED]
    device = torch.device(args.device)
    model = build(4, vocab, args.seq, device)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = inputs(vocab, args, device)
    steps = {name: step_fn(name, model, opt, x, args) for name in names}
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(args.paired_steps):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            times[name].append(steps[name]())
    base = times["mtp4-per-head"]
    return {
        name: {
            "step_s": statistics.median(t),
            "paired_ratio": statistics.median(a / b for a, b in zip(t, base, strict=True)),
        }
        for name, t in times.items()
    }


def run_child(name: str, vocab: int, args: argparse.Namespace) -> Result:
    """Measure one configuration in a fresh interpreter so that its peak RSS is its own."""
    cmd = [sys.executable, __file__, "--child", name, "--vocab", str(vocab)]
    for opt in ("steps", "warmup", "batch", "seq", "ce_chunk", "device", "precision", "threads"):
        cmd += [f"--{opt.replace('_', '-')}", str(getattr(args, opt))]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out.stderr}")
    data = json.loads(out.stdout.strip().splitlines()[-1])
    return Result(**data)


def combine(rs: list[Result]) -> Result:
    """One configuration over rounds: the median of each number."""
    fields = ("peak_mib", "base_mib", "step_s", "tokens_per_s")
    medians = {f: statistics.median(getattr(r, f) for r in rs) for f in fields}
    return Result(rs[0].config, rs[0].vocab, rs[0].n_heads, rs[0].naive, **medians)


def ratio_table(results: list[Result]) -> dict[str, dict[str, float]]:
    """Per configuration, its peak, increase and step time over NTP's (same vocabulary); with both per-head
    configurations, also chunked over unchunked step time."""
    by = {r.config: r for r in results}
    ntp = by.get("ntp")
    out: dict[str, dict[str, float]] = {}
    for r in results:
        if ntp is not None and r is not ntp:
            out[r.config] = {
                "peak": r.peak_mib / ntp.peak_mib,
                "increase": r.increase_mib / max(ntp.increase_mib, 1e-9),
                "step_time": r.step_s / ntp.step_s,
            }
    for name in CHUNKED:
        if name in by and "mtp4-per-head" in by:
            out.setdefault(name, {})["step_time_vs_unchunked"] = by[name].step_s / by["mtp4-per-head"].step_s
    return out


def report(
    results: list[Result],
    args: argparse.Namespace,
    params: dict[int, dict[str, int]],
    pairs: dict[int, dict[str, dict[str, float]]],
) -> dict[str, Any]:
    cuda = args.device.startswith("cuda")
    measure_name = "CUDA max_memory_allocated" if cuda else "peak RSS (ru_maxrss, one process per config)"
    print(
        f"\ntorch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}, "
        f"precision {args.precision}, batch {args.batch} x seq {args.seq}, ce_chunk {args.ce_chunk} (chunked configs), "
        f"{args.steps} timed steps after {args.warmup} warm-up, median of {args.rounds} round(s); "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    for vocab, counts in params.items():
        print(f"parameters, vocab {vocab}: " + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in counts.items()))
    base = "allocated" if cuda else "current RSS"
    print(f"memory: {measure_name}; base = {base} after building model + optimiser; increase = peak - base\n")
    print(
        f"{'vocab':>7} {'config':<18}{'peak MiB':>10}{'base MiB':>10}{'increase':>10}{'step s':>9}{'tok/s':>9}"
    )
    for r in results:
        print(
            f"{r.vocab:>7} {r.config:<18}{r.peak_mib:>10.0f}{r.base_mib:>10.0f}{r.increase_mib:>10.0f}"
            f"{r.step_s:>9.3f}{r.tokens_per_s:>9.0f}"
        )
    ratios = {v: ratio_table([r for r in results if r.vocab == v]) for v in params}
    print(
        f"\n{'vocab':>7} {'ratio to ntp':<18}{'peak':>10}{'increase':>10}{'step time':>11}{'vs unchunked':>14}"
    )
    for vocab, table in ratios.items():
        for name, q in table.items():
            if "peak" not in q:
                continue
            rest = f"{q['step_time_vs_unchunked']:>13.2f}x" if "step_time_vs_unchunked" in q else ""
            print(
                f"{vocab:>7} {name:<18}{q['peak']:>9.2f}x{q['increase']:>9.2f}x{q['step_time']:>10.2f}x{rest}"
            )
    if pairs:
        print(
            f"\nstep time in one process, configurations in rotating order, {args.paired_steps} steps each after"
            f" {args.warmup} warm-up\n{'vocab':>7} {'config':<18}{'step s':>9}{'paired vs per-head':>20}"
        )
        for vocab, table in pairs.items():
            for name, q in table.items():
                print(f"{vocab:>7} {name:<18}{q['step_s']:>9.3f}{q['paired_ratio']:>19.3f}x")
    print()
    for vocab, table in ratios.items():
        goals = [("mtp4-per-head", "peak", 1.10)]
        goals += [(name, key, 1.05) for name in CHUNKED for key in ("peak", "step_time_vs_unchunked")]
        for name, key, limit in goals:
            value = table.get(name, {}).get(key)
            what = "peak vs NTP" if key == "peak" else "step time vs unchunked per-head"
            if key != "peak" and name in pairs.get(vocab, {}):  # the paired ratio is the less noisy one
                value, what = pairs[vocab][name]["paired_ratio"], what + " (paired)"
            if value is not None:
                print(
                    f"vocab {vocab}: goal {name} {what} <= {limit:.2f}x: "
                    f"{'met' if value <= limit else 'NOT met'} ({value:.3f}x)"
                )
    settings = {k: v for k, v in vars(args).items() if k not in ("child", "json")}
    return settings | {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "loadavg": os.getloadavg(),
        "memory_measure": measure_name,
        "params": {str(v): c for v, c in params.items()},
        "results": [asdict(r) | {"increase_mib": r.increase_mib} for r in results],
        "ratios_to_ntp": {str(v): t for v, t in ratios.items()},
        "paired_step_time": {str(v): t for v, t in pairs.items()},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (allocates optimiser state)")
    p.add_argument("--rounds", type=int, default=1, help="round-robin repeats of the configs (medians)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--vocab", type=int, nargs="+", default=[8192], help="one or more vocabulary sizes")
    p.add_argument("--ce-chunk", type=int, default=64, help="train.ce_chunk of the chunked configurations")
    p.add_argument(
        "--paired-steps",
        type=int,
        default=3,
        help="timed steps per configuration of the one-process chunked vs unchunked comparison (0: skip it)",
    )
    p.add_argument("--configs", nargs="+", choices=tuple(CONFIGS), default=list(CONFIGS), metavar="CONFIG")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto", help="auto: bf16 on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.add_argument("--child", choices=tuple(CONFIGS), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(asdict(measure(args.child, args.vocab[0], args))))
        return
    params = {v: param_counts(build(4, v, args.seq, torch.device("cpu"))) for v in args.vocab}
    names = [n for n in CONFIGS if n in args.configs]  # NTP first: the ratios' denominator
    runs: dict[tuple[int, str], list[Result]] = {(v, n): [] for v in args.vocab for n in names}
    for r in range(args.rounds):  # round-robin, so that slow spells of a shared machine hit every config
        for vocab, name in runs:
            if args.device.startswith("cuda"):
                runs[vocab, name].append(measure(name, vocab, args))
                gc.collect()
                torch.cuda.empty_cache()
            else:
                runs[vocab, name].append(run_child(name, vocab, args))
            print(f"round {r + 1}: vocab {vocab} {name} done", file=sys.stderr)
    pairs = {}
    if args.paired_steps > 0 and "mtp4-per-head" in names and any(n in names for n in CHUNKED):
        for vocab in args.vocab:
            pairs[vocab] = paired(vocab, args)
            print(f"paired step times: vocab {vocab} done", file=sys.stderr)
    out = report([combine(rs) for rs in runs.values()], args, params, pairs)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
