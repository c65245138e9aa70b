"""FSDP2 on CUDA (skipped without): bf16 parameters with fp32 gradient reduction, and two GPUs training like DDP.

The CPU tests (tests/integration/test_fsdp.py) run the trainer with FSDP in fp32 over gloo and check the units'
gradients with bf16 parameters there; CUDA's bf16 kernels, NCCL and a bf16 FSDP training run are checked here.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from tests.integration.conftest import make_run, train_losses
from tests.integration.test_fsdp import launch
from wmtp_studio.train import fsdp
from wmtp_studio.train.loss import forward_backward, head_mask
from wmtp_studio.train.model import MTPModel, build_tiny_hf

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _step(model: MTPModel, x: torch.Tensor, bf16_autocast: bool) -> float:
    mask = torch.ones_like(x, dtype=torch.bool)
    den = [float(head_mask(mask, None, k).sum()) for k in range(model.n_heads)]
    with torch.autocast("cuda", torch.bfloat16, enabled=bf16_autocast):
        stats = forward_backward(
            model, model.trunk(x), x, mask, None, lambda k, ce, m: m.float(), [1.0] * 4, den
        )
    return float(stats.loss)


def test_bf16_sharded_step_matches_the_autocast_step() -> None:
    """One process group of one GPU: the sharded bf16 step's loss and gradients are the autocast step's."""
    os.environ |= {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29581"}
    dist.init_process_group("nccl", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = MTPModel(build_tiny_hf("llama", 512, 64, 3, 4, None, 128, {}), 4, "transformer").cuda()
        sharded = copy.deepcopy(plain)
        fsdp.shard(sharded, bf16=True)
        x = torch.randint(0, 512, (4, 64), device="cuda")
        a, b = _step(plain, x, bf16_autocast=True), _step(sharded, x, bf16_autocast=False)
        assert b == pytest.approx(a, rel=2e-2)
        for (name, p), q in zip(plain.named_parameters(), sharded.parameters(), strict=True):
            assert q.grad is not None and q.grad.dtype == torch.float32, name  # reduced in fp32
            g = q.grad.full_tensor() if isinstance(q.grad, DTensor) else q.grad
            assert p.grad is not None
            cos = torch.nn.functional.cosine_similarity(g.flatten(), p.grad.flatten(), dim=0)
            assert float(cos) > 0.99, (name, float(cos))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_two_gpus_fsdp_bf16_trains_like_ddp(tmp_path: Path) -> None:
    args = ("train.steps=6", "train.mixed_precision=bf16", "train.checkpoint_every=3", "train.batch_size=8")
    runs = {}
    for parallel in ("ddp", "fsdp"):
        runs[parallel] = make_run(
            tmp_path / parallel, "tiny-baseline-mtp.yaml", *args, f"train.parallel={parallel}"
        )
        launch(runs[parallel], cpu=False)
    a, b = train_losses(runs["ddp"]), train_losses(runs["fsdp"])
    assert sorted(a) == sorted(b) == list(range(1, 7))
    for step in a:  # bf16 autocast vs bf16 parameters: the same step to bf16's precision
        assert b[step] == pytest.approx(a[step], rel=2e-2), step
    assert (runs["fsdp"] / "checkpoints" / "step_6" / "dcp" / ".metadata").is_file()
