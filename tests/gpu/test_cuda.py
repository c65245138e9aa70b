"""GPU checks (skipped without CUDA): per-head == naive on the device, bf16 training and exact resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.integration.conftest import make_run, train_losses
from wmtp_studio.train.loop import train
from wmtp_studio.train.loss import forward_backward, head_mask
from wmtp_studio.train.model import MTPModel, build_tiny_hf

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_per_head_equals_naive_on_cuda() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    model = MTPModel(build_tiny_hf("llama", 512, 64, 3, 4, None, 128, {}), 4, "transformer").cuda()
    x = torch.randint(0, 512, (4, 64), device="cuda")
    tm = torch.ones_like(x, dtype=torch.bool)
    den = [float(head_mask(tm, None, k).sum()) for k in range(4)]

    def run(naive: bool) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad()
        st = forward_backward(
            model,
            model.trunk(x),
            x,
            tm,
            None,
            lambda k, ce, m: m * (1 + ce.sigmoid()),
            [1, 0.5, 0.25, 0.125],
            den,
            naive=naive,
        )
        return float(st.loss), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    la, ga = run(False)
    lb, gb = run(True)
    assert la == pytest.approx(lb, rel=1e-5)
    for a, b in zip(ga, gb, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_training_on_gpu_falls_and_resumes_exactly(tmp_path: Path) -> None:
    args = ("train.steps=30", "train.mixed_precision=bf16", "train.checkpoint_every=15")
    straight = make_run(tmp_path / "a", "tiny-baseline-mtp.yaml", *args)
    assert train(straight) == 0
    losses = train_losses(straight)
    assert losses[30] < losses[1] - 1.0
    resumed = make_run(tmp_path / "b", "tiny-baseline-mtp.yaml", *args, "train.steps=30")
    # Train to 15 by interrupting through the checkpoint cadence: copy the straight run's step-15 checkpoint.
    import shutil

    shutil.copytree(straight / "checkpoints" / "step_15", resumed / "checkpoints" / "step_15")
    (resumed / "checkpoints" / "latest").write_text("step_15")
    offset = __import__("json").loads((resumed / "checkpoints/step_15/trainer_state.json").read_text())
    with open(straight / "metrics.jsonl", "rb") as fh:
        (resumed / "metrics.jsonl").write_bytes(fh.read()[: offset["metrics_offset"]])
    assert train(resumed, resume=True) == 0
    b = train_losses(resumed)
    for step in range(16, 31):
        assert b[step] == pytest.approx(losses[step], rel=1e-3), step
