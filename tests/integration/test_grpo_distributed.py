"""grpo-wmtp under two gloo processes: rank 0 samples and judges a refresh, every rank trains on its groups; before
the refresh the run trains like one process with the same global batch. (After it, the samples may differ from one
process's: the two runs' weights agree only to float precision, which can flip a sampled token.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.integration.conftest import lines, train_losses
from tests.integration.test_grpo_refresh import comment_task, grpo_run
from wmtp_studio.train.loop import train


def test_two_gloo_processes_refresh_and_train_like_one(tmp_path: Path) -> None:
    data = comment_task(tmp_path / "task.jsonl")
    single = grpo_run(tmp_path / "single", data)
    (single / "recipe.json").write_text(
        (single / "recipe.json").read_text().replace('"steps":8', '"steps":5')
    )
    assert train(single) == 0
    ddp = grpo_run(tmp_path / "ddp", data)
    recipe = (single / "recipe.json").read_text().replace('"batch_size":4', '"batch_size":2')
    (ddp / "recipe.json").write_text(recipe)  # 2 processes x 2 rows: the same global batch of 4
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", "wmtp_studio.train", "--run-dir", str(ddp),
    ]  # fmt: skip
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "HF_HUB_OFFLINE": "1", "MASTER_PORT": "29541"}
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    assert next(m for m in lines(ddp) if m["event"] == "start")["data"]["processes"] == 2
    (refresh,) = [m for m in lines(ddp) if m.get("event") == "grpo_refresh"]
    assert refresh["step"] == 3 and refresh["data"]["samples"] == 32 and not refresh["data"]["kept_previous"]
    assert len((ddp / "grpo" / "step_3.jsonl").read_text().splitlines()) == 32
    a, b = train_losses(single), train_losses(ddp)
    assert sorted(a) == sorted(b) == list(range(1, 6))
    for step in (1, 2, 3):  # the data's own groups, the same batches
        assert abs(a[step] - b[step]) <= 1e-4 * abs(a[step]), (step, a[step], b[step])
