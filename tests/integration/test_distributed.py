"""Two gloo processes under `accelerate launch` train exactly like one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import lines, make_run, train_losses
from wmtp_studio.train.loop import train


def test_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    common = ("train.steps=8", "train.grad_accum=2", "train.num_threads=1")
    single = make_run(tmp_path / "single", "tiny-baseline-mtp.yaml", *common, "train.batch_size=8")
    assert train(single) == 0
    ddp = make_run(tmp_path / "ddp", "tiny-baseline-mtp.yaml", *common, "train.batch_size=4")
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "-m",
        "wmtp_studio.train",
        "--run-dir",
        str(ddp),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "MASTER_PORT": "29533"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    start = next(m for m in lines(ddp) if m["event"] == "start")
    assert start["data"]["processes"] == 2  # really two connected ranks, not two copies
    a, b = train_losses(single), train_losses(ddp)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert abs(a[step] - b[step]) <= 1e-4 * abs(a[step]), (step, a[step], b[step])
    assert (ddp / "model" / "model.safetensors").is_file()
