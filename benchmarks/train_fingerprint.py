"""Fingerprint what the trainer writes, to prove that a refactor of the trainer changes no number.

Trains every algorithm (ntp, baseline-mtp, critic-wmtp with Stage 1, rho1-wmtp weighted and select, cached and
live reference, one process with 1 or 2 micro-batches per step), with packing off and on, plus one interrupted
and resumed critic run, for a few steps of a tiny model on one thread. Each run's fingerprint is its
metrics.jsonl (every line but its wall-clock `time` and `tokens_per_s`), in order, and the sha256 of every
tensor it leaves: the exported model, the last checkpoint's value head and optimiser state.

    python benchmarks/train_fingerprint.py --out fp.json            # record (e.g. before a refactor)
    python benchmarks/train_fingerprint.py --compare fp.json        # bit for bit against a record
    python benchmarks/train_fingerprint.py --compare fp.json --only ntp,rho1-select

`--compare` prints, per run, `identical` (every byte of every line and tensor) or the first difference, and
exits 1 if any run differs. tests/integration/test_train_fingerprint.py checks the same runs against
tests/data/train_fingerprint.json, recorded before the trainer's set-up was split into stages.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# A few steps of a tiny model; every schedule fires at its own steps (log 2,4,6; hist 3,6; top tokens 4;
# validation 5,6; checkpoints 4,6), and one thread so that reductions run in one order.
COMMON = [
    "eval.benchmarks=[]",
    "data.generated.num_train=240",
    "model.tiny.hidden_size=64",
    "train.batch_size=8",
    "train.seq_len=64",
    "train.steps=6",
    "train.log_every=2",
    "train.hist_every=3",
    "train.top_tokens_every=4",
    "eval.val_every=5",
    "eval.val_fraction=0.1",
    "train.checkpoint_every=4",
    "train.num_threads=1",
    "optim.warmup_steps=2",
]
CRITIC = ["algorithm.stage1.steps=4", "algorithm.stage1.eval_every=2"]
PACKED = ["train.packing=true"]
RHO1 = ["algorithm.reference={ref}"]
# name -> (recipe, overrides); "{ref}" is the ntp run's exported model (the rho1 reference).
RUNS: dict[str, tuple[str, list[str]]] = {
    "ntp": ("tiny-ntp.yaml", []),
    "ntp-packed": ("tiny-ntp.yaml", PACKED),
    "baseline-mtp": ("tiny-baseline-mtp.yaml", []),
    "baseline-mtp-packed": ("tiny-baseline-mtp.yaml", PACKED),
    "critic": ("tiny-critic-wmtp.yaml", CRITIC),
    "critic-packed": ("tiny-critic-wmtp.yaml", [*CRITIC, *PACKED]),
    "critic-all-accum2": ("tiny-critic-wmtp.yaml", [*CRITIC, "algorithm.train_on=all", "train.grad_accum=2"]),
    "rho1-weighted": ("tiny-rho1-wmtp.yaml", [*RHO1, "algorithm.mode=weighted"]),
    "rho1-weighted-packed": ("tiny-rho1-wmtp.yaml", [*RHO1, "algorithm.mode=weighted", *PACKED]),
    "rho1-select": ("tiny-rho1-wmtp.yaml", RHO1),
    "rho1-select-packed": ("tiny-rho1-wmtp.yaml", [*RHO1, *PACKED]),
    "rho1-select-accum2": ("tiny-rho1-wmtp.yaml", [*RHO1, "train.grad_accum=2"]),
    "rho1-select-live": (
        "tiny-rho1-wmtp.yaml",
        [*RHO1, "algorithm.cache=false", "algorithm.keep_head0=false"],
    ),
    "critic-resumed": ("tiny-critic-wmtp.yaml", [*CRITIC, *PACKED]),
}
# Wall-clock readings, and the byte offset of metrics.jsonl, which the digits of those readings move.
VOLATILE = {"time", "tokens_per_s", "gpu_peak_mem_gib", "metrics_offset"}


def _clean(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items() if k not in VOLATILE}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def _tensors_sha(tensors: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].contiguous().cpu()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}:".encode())
        h.update(t.view(-1).view(__import__("torch").uint8).numpy().tobytes())
    return h.hexdigest()


def _optimizer_sha(path: Path) -> str:
    import torch

    state = torch.load(path, weights_only=True)["state"]
    flat = {f"{i}.{k}": v for i, s in state.items() for k, v in s.items() if isinstance(v, torch.Tensor)}
    return _tensors_sha(flat)


def fingerprint(run_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    from wmtp_studio.train import checkpoint as ckpt

    lines = [_clean(json.loads(x)) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    out: dict[str, Any] = {
        "lines": lines,
        "model": _tensors_sha(load_file(str(run_dir / "model" / "model.safetensors"))),
    }
    latest = ckpt.latest_checkpoint(run_dir)
    assert latest is not None
    out["optimizer"] = _optimizer_sha(latest / "optimizer.pt")
    out["trainer_state"] = _clean(json.loads((latest / "trainer_state.json").read_text()))
    if (latest / "value_head.safetensors").is_file():
        out["value_head"] = _tensors_sha(load_file(str(latest / "value_head.safetensors")))
    return out


def _freeze(run_dir: Path, recipe: str, overrides: list[str]) -> Path:
    from wmtp_studio.recipe import load_recipe

    r = load_recipe(ROOT / "recipes" / recipe, [*COMMON, *overrides])
    run_dir.mkdir(parents=True)
    (run_dir / "recipe.json").write_text(r.canonical_json())
    return run_dir


def run_all(root: Path, only: set[str] | None = None) -> dict[str, Any]:
    """Train each run under `root` (WMTP_HOME must point to a scratch directory) and fingerprint it."""
    from wmtp_studio.train.loop import EXIT_INTERRUPTED, train

    ref = root / "ntp" / "model"
    out: dict[str, Any] = {}
    for name, (recipe, overrides) in RUNS.items():
        needed = only is None or name in only or (name == "ntp" and any(n.startswith("rho1") for n in only))
        if not needed:  # (every rho1 run needs the ntp run's model)
            continue
        run = _freeze(root / name, recipe, [o.replace("{ref}", str(ref)) for o in overrides])
        if name == "critic-resumed":  # SIGTERM at step 2's log line: checkpoint after step 3, then resume

            def stop_at_2(step: int, _total: int, _m: dict[str, float]) -> None:
                if step == 2:
                    os.kill(os.getpid(), signal.SIGTERM)

            assert train(run, progress=stop_at_2) == EXIT_INTERRUPTED
            assert train(run, resume=True) == 0
        else:
            assert train(run) == 0, name
        out[name] = fingerprint(run)
    return out


def environment() -> dict[str, str]:
    """What float results depend on besides the code: torch's version and the CPU it ran on."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        names = [x for x in Path("/proc/cpuinfo").read_text().splitlines() if x.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu": cpu}


def dumps(fingerprints: dict[str, Any]) -> str:
    """JSON with one metrics line per text line (a difference shows as one changed line in a diff)."""
    runs = []
    for name, fp in sorted(fingerprints.items()):
        rest = {k: v for k, v in sorted(fp.items()) if k != "lines"}
        lines = ",\n  ".join(json.dumps(x, sort_keys=True) for x in fp["lines"])
        runs.append(
            f'{json.dumps(name)}: {{\n "lines": [\n  {lines}\n ],\n'
            + ",\n".join(f" {json.dumps(k)}: {json.dumps(v, sort_keys=True)}" for k, v in rest.items())
            + "\n}"
        )
    env = f'"_environment": {json.dumps(environment(), sort_keys=True)}'
    return "{\n" + ",\n".join([env, *runs]) + "\n}\n"


def first_difference(a: Any, b: Any, where: str = "") -> str | None:
    """Where two fingerprints first differ (exactly: floats compared bit for bit), None if they are identical."""
    if type(a) is not type(b):
        return f"{where}: {a!r} != {b!r}"
    if isinstance(a, dict):
        for k in sorted(set(a) | set(b)):
            if k not in a or k not in b:
                return f"{where}.{k}: only in one"
            d = first_difference(a[k], b[k], f"{where}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list):
        if len(a) != len(b):
            return f"{where}: length {len(a)} != {len(b)}"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            d = first_difference(x, y, f"{where}[{i}]")
            if d:
                return d
        return None
    if isinstance(a, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if a == b else f"{where}: {a!r} != {b!r}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, help="write the fingerprints here")
    parser.add_argument("--compare", type=Path, help="compare with fingerprints recorded earlier")
    parser.add_argument("--only", help="comma-separated run names (default: all)")
    args = parser.parse_args()
    only = set(args.only.split(",")) if args.only else None
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["WMTP_HOME"] = str(Path(tmp) / "home")
        os.environ["HF_HUB_OFFLINE"] = "1"
        from wmtp_studio.train.model import quiet_transformers

        quiet_transformers()
        got = run_all(Path(tmp) / "runs", only)
    if args.out:
        args.out.write_text(dumps(got))
    if not args.compare:
        return 0
    want = json.loads(args.compare.read_text())
    failed = 0
    if want.get("_environment") != environment():
        print(
            f"recorded on {want.get('_environment')}, running on {environment()}: floats may differ in the last bits"
        )
    for name, fp in got.items():
        if name not in want:
            print(f"{name:22s} not in {args.compare}")
            continue
        d = first_difference(want[name], json.loads(json.dumps(fp)))
        failed += d is not None
        print(f"{name:22s} {'identical' if d is None else 'DIFFERS ' + d}")
    print(f"{len(got) - failed}/{len(got)} runs bit-identical")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
