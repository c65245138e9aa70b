"""`train.parallel: fsdp` over two gloo processes trains like DDP and like one process, resumes exactly from its
sharded checkpoint and exports the same `model/` directory.

Per algorithm: one process with batch 8, DDP and FSDP with 2 processes x batch 4 (2 micro-batches per step, so
gradient accumulation and the per-head backward both cross the FSDP units); every step's FSDP loss agrees with
DDP's and with the one process's to 1e-4 relative. baseline-mtp and grad-wmtp (score:
hidden) run with `train.ce_chunk`, whose chunked CE and hidden score read the unembedding's weight inside the
gathered root call. The critic run (value head replicated beside the sharded model, Stage 1, value loss) is also
cut back to its step-2 checkpoint and resumed: its later losses and exported weights are bit for bit those of the
straight run. Then the units themselves: gradients summed (not averaged) over processes, on the naive path too,
with bf16 parameters on the CPU, and through the chunked CE and the hidden score.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.distributed.tensor import DTensor

from tests.integration.conftest import lines, make_run, train_losses
from tests.integration.ranks import run_ranks
from wmtp_studio.train.fsdp import shard
from wmtp_studio.train.loop import train
from wmtp_studio.train.loss import forward_backward
from wmtp_studio.train.model import MTPModel, build_tiny_hf
from wmtp_studio.train.weights import grad_scores

COMMON = (
    "train.steps=4",
    "train.grad_accum=2",
    "train.num_threads=1",
    "train.checkpoint_every=2",
    "model.tiny.hidden_size=64",
    "train.seq_len=64",
    "eval.val_every=2",  # validation (a collective under FSDP) at steps 2 and 4
)
ALGORITHMS = {
    "ntp": ("tiny-ntp.yaml", ()),
    "baseline-mtp": ("tiny-baseline-mtp.yaml", ("train.ce_chunk=8",)),
    "grad-wmtp": ("tiny-grad-wmtp.yaml", ("algorithm.score=hidden", "train.ce_chunk=8")),
    # one micro-batch per process: the mean-one rescale's mean is all-reduced head by head inside the pass
    "grad-wmtp-accum1": ("tiny-grad-wmtp.yaml", ("train.grad_accum=1",)),
    "critic-wmtp": ("tiny-critic-wmtp.yaml", ("algorithm.stage1.steps=3", "algorithm.stage1.eval_every=3")),
    "rho1-wmtp": ("tiny-rho1-wmtp.yaml", ()),  # select, across both processes
}


def free_port() -> int:
    """A port nobody listens on now (a fixed one collides with another suite running on the same machine)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launch(run_dir: Path, *args: str, cpu: bool = True, ok: bool = True) -> str:
    """`accelerate launch` two real ranks running the trainer entry point: gloo on the CPU (NOTES.md), or NCCL on
    two GPUs, rendezvous on a free port. Returns its stderr once it succeeded (`ok`) or failed (the launcher exits
    1 whatever the ranks' codes)."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["-m", "wmtp_studio.train", "--run-dir", str(run_dir), *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MASTER_PORT": str(free_port())} | (
        {"ACCELERATE_USE_CPU": "true"} if cpu else {}
    )
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert (res.returncode == 0) == ok, res.stderr[-3000:]
    if ok:
        assert next(m for m in lines(run_dir) if m["event"] == "start")["data"]["processes"] == 2
    return res.stderr


def weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(model_dir.glob("*.safetensors")) for k, v in load_file(f).items()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rho1's reference: a tiny NTP model trained on the same data (hence the same tokenizer)."""
    run = make_run(tmp_path_factory.mktemp("ref") / "ntp", "tiny-ntp.yaml", *COMMON, "train.steps=2")
    assert train(run) == 0
    return run / "model"


@pytest.mark.slow
@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_fsdp_trains_like_ddp_and_one_process(algorithm: str, reference: Path, tmp_path: Path) -> None:
    recipe, extra = ALGORITHMS[algorithm]
    args = (*COMMON, *extra, f"algorithm.reference={reference}") if "rho1" in recipe else (*COMMON, *extra)
    # one process trains alike under either setting: the ntp one says fsdp
    single = make_run(
        tmp_path / "single", recipe, *args, "train.batch_size=8", f"train.parallel={_one(algorithm)}"
    )
    assert train(single) == 0
    ddp = make_run(tmp_path / "ddp", recipe, *args, "train.batch_size=4")
    launch(ddp)
    fsdp = make_run(tmp_path / "fsdp", recipe, *args, "train.batch_size=4", "train.parallel=fsdp")
    launch(fsdp)
    one, a, b = train_losses(single), train_losses(ddp), train_losses(fsdp)
    assert sorted(one) == sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in one:
        assert abs(b[step] - a[step]) <= 1e-4 * abs(a[step]), (step, a[step], b[step])
        # critic too: its z-score, mean-one rescale and value-loss mean are the whole step's (algorithms.py,
        # critic_step), so 2 processes x 4 rows train as 8 rows (they differed by 2e-4..1.2e-3 when per process)
        # grad-wmtp too: its mean-one rescale divides by the whole step's mean (grad.py, grad_step_scores)
        assert abs(b[step] - one[step]) <= 1e-4 * abs(one[step]), (step, one[step], b[step])
    # Every logged statistic is the whole step's, not rank 0's share: per-head CE, accuracy and weight moments,
    # the value loss and explained variance, rho1's selected fraction, grad-wmtp's running score statistics (only
    # the throughput differs).
    for ref, run in [(single, ddp), (single, fsdp)]:
        want, got = _train_metrics(ref), _train_metrics(run)
        assert sorted(want) == sorted(got) and sorted(want[1]) == sorted(got[1])
        for step, metrics in want.items():
            for name, value in metrics.items():
                if name != "tokens_per_s":
                    assert got[step][name] == pytest.approx(value, rel=1e-4, abs=1e-6), (run.name, step, name)
    shards = fsdp / "checkpoints" / "step_4" / "dcp"  # torch distributed checkpoint: each rank wrote its own
    assert (shards / ".metadata").is_file() and len(list(shards.glob("*.distcp"))) == 2
    # The exported model: the same files and tensors as DDP's (float sums in another order: 1e-4).
    assert sorted(p.name for p in (fsdp / "model").iterdir()) == sorted(
        p.name for p in (ddp / "model").iterdir()
    )
    want, got = weights(ddp / "model"), weights(fsdp / "model")
    assert sorted(want) == sorted(got)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
    if algorithm == "critic-wmtp":
        _resumes_exactly(fsdp, tmp_path / "resumed")
    if algorithm == "ntp":  # its one-process checkpoint holds a whole optimiser, which FSDP cannot take as is
        _cut_back(single, single, step=2)
        err = launch(single, "--resume", ok=False)
        assert (
            "step_2 was written by one process (optimizer.pt, not sharded): resume it on one process" in err
        )


def _train_metrics(run_dir: Path) -> dict[int, dict[str, float]]:
    return {m["step"]: m["metrics"] for m in lines(run_dir) if m["kind"] == "train"}


def _one(algorithm: str) -> str:
    return "fsdp" if algorithm == "ntp" else "ddp"


def _cut_back(run: Path, copy: Path, step: int) -> None:
    """`copy`: `run` as it was when its step-`step` checkpoint was the latest (as an interrupted run leaves it)."""
    if copy != run:
        shutil.copytree(run, copy)
    shutil.rmtree(copy / "model")
    for later in (p for p in (copy / "checkpoints").glob("step_*") if int(p.name[5:]) > step):
        shutil.rmtree(later)
    (copy / "checkpoints" / "latest").write_text(f"step_{step}")
    state = json.loads((copy / "checkpoints" / f"step_{step}" / "trainer_state.json").read_text())
    with open(copy / "metrics.jsonl", "r+b") as fh:
        fh.truncate(state["metrics_offset"])


def _resumes_exactly(straight: Path, resumed: Path) -> None:
    """Cut a copy of the run back to its step-2 checkpoint, resume it with FSDP."""
    _cut_back(straight, resumed, step=2)
    launch(resumed, "--resume")
    a, b = train_losses(straight), train_losses(resumed)
    assert [b[3], b[4]] == [a[3], a[4]]
    want, got = weights(straight / "model"), weights(resumed / "model")
    assert sorted(want) == sorted(got)
    assert all(torch.equal(want[k], got[k]) for k in want)


# (name, naive, bf16 parameters, ce_chunk, grad-wmtp hidden score)
CASES = (
    ("naive-fp32", True, False, None, False),
    ("per-head-bf16", False, True, None, False),
    ("chunked-fp32", False, False, 5, False),
    ("hidden-score-fp32", False, False, None, True),
    ("chunked-hidden-score-fp32", False, False, 5, True),
    ("chunked-hidden-score-bf16", False, True, 5, True),
)


def _tiny() -> MTPModel:
    torch.manual_seed(0)
    return MTPModel(build_tiny_hf("llama", 128, 32, 3, 4, None, 64, {}), 3, "transformer")


def _weights(_k: int, ce: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return m * (1 + ce.sigmoid())  # any w that depends on the CE


def _hidden_score(_k: int, logits: torch.Tensor, targets: torch.Tensor, w_out: torch.Tensor) -> torch.Tensor:
    return grad_scores(
        logits, targets, w_out
    )  # grad-wmtp's score: hidden, which reads the unembedding's weight


def _loss_and_grads(
    model: MTPModel, rows: slice, naive: bool, chunk: int | None = None, scored: bool = False
) -> tuple[float, dict[str, torch.Tensor]]:
    x = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(1))[rows]  # (B, S)
    mask = torch.ones_like(x, dtype=torch.bool)
    den = [
        float(4 * (16 - k - 1)) for k in range(3)
    ]  # head k's valid entries over all 4 rows: 4 x (16 - k - 1)
    score = _hidden_score if scored else None  # the weights then depend on the score instead of the CE
    stats = forward_backward(
        model, model.trunk(x), x, mask, None, _weights, [1, 0.5, 0.25], den,
        score_for=score, naive=naive, ce_chunk=chunk,
    )  # fmt: skip
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    return float(stats.loss), {n: g.full_tensor() if isinstance(g, DTensor) else g for n, g in grads.items()}


def _shard_rank(rank: int, out: str) -> None:
    torch.set_num_threads(1)
    results = {}
    for name, naive, bf16, chunk, scored in CASES:
        model = _tiny()
        shard(model, bf16)
        loss, grads = _loss_and_grads(model, slice(2 * rank, 2 * rank + 2), naive, chunk, scored)
        total = torch.tensor([loss])
        dist.all_reduce(total)
        results[name] = (float(total), grads)
        assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 is the compute copy only
    if rank == 0:
        torch.save(results, out)


def test_fsdp_units_sum_gradients_in_fp32_and_in_bf16(tmp_path: Path) -> None:
    """Two gloo ranks of 2 rows each, sharded, give one process's loss and gradients on the 4 rows: the naive path
    (one backward over all heads) in fp32 to float rounding, the per-head path with bf16 parameters (reduced in
    fp32) to bf16's precision, and in fp32 the two ways of reading the unembedding's weight itself inside the
    gathered root call: the chunked CE (chunks of 5, 5, 5, 1 positions) and grad-wmtp's hidden score, chunked and
    whole. bf16 FSDP on a GPU: tests/gpu/test_fsdp_cuda.py."""
    torch.set_num_threads(1)
    run_ranks(_shard_rank, str(tmp_path / "out.pt"))
    results = torch.load(tmp_path / "out.pt", weights_only=False)
    for name, _naive, bf16, chunk, scored in CASES:
        want_loss, want = _loss_and_grads(_tiny(), slice(0, 4), False, chunk, scored)  # one process
        loss, grads = results[name]
        rel = 3e-2 if bf16 else 1e-5
        assert loss == pytest.approx(want_loss, rel=rel * 0.1), name
        assert sorted(grads) == sorted(want), name
        for k, g in want.items():  # relative to the tensor's largest entry: bf16 keeps 8 bits of mantissa
            assert float((grads[k].float() - g).abs().max()) <= rel * float(g.abs().max()), (name, k)
