"""grpo-wmtp's on-policy refresh shared by two gloo processes, under DDP and under FSDP: each samples and judges
its slices of the prompts, both gather every sample; the refresh writes the same grpo/step_N.jsonl as one process
and the losses, before and after it, are one process's. Then the FSDP lockstep itself: unequal shares, a refresh
before any training step, samples equal to the unsharded model's."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.integration.conftest import lines, train_losses
from tests.integration.ranks import run_ranks
from tests.integration.test_fsdp import _cut_back, launch
from tests.integration.test_grpo_refresh import comment_task, grpo_run
from wmtp_studio import gentask
from wmtp_studio.evaluate.generate import SamplingConfig, generate
from wmtp_studio.train.fsdp import shard
from wmtp_studio.train.grpo_refresh import lockstep
from wmtp_studio.train.loop import train
from wmtp_studio.train.loss import forward_backward
from wmtp_studio.train.model import MTPModel, build_tiny_hf
from wmtp_studio.train.tokenizer import train_bpe


@pytest.mark.slow
def test_two_processes_refresh_like_one_under_ddp_and_fsdp(tmp_path: Path) -> None:
    data = comment_task(tmp_path / "task.jsonl")
    # refresh after step 3 (refresh_steps 3), then 2 steps on its groups; mean_one (the default) rescales over
    # the whole step (grpo_step), so 2 x 2 rows weigh as 4 rows (1.0e-3 apart at step 4 when it was per process)
    steps = ("train.steps=5",)
    single = grpo_run(tmp_path / "single", data, *steps)
    assert train(single) == 0
    runs = {"single": single}
    for parallel in ("ddp", "fsdp"):  # 2 processes x 2 rows: the same global batch of 4
        runs[parallel] = grpo_run(
            tmp_path / parallel,
            data,
            *steps,
            "train.batch_size=2",
            f"train.parallel={parallel}",
            "train.checkpoint_every=2",
            "train.keep_checkpoints=3",  # steps 2, 4 and 5
        )
        launch(runs[parallel])
    samples = (single / "grpo" / "step_3.jsonl").read_text()
    assert len(samples.splitlines()) == 32  # 8 prompts x 4, in 8 slices of one prompt: 4 per process
    for parallel in ("ddp", "fsdp"):
        (refresh,) = [m for m in lines(runs[parallel]) if m.get("event") == "grpo_refresh"]
        assert refresh["step"] == 3 and refresh["data"]["processes"] == 2
        assert refresh["data"]["samples"] == 32 and not refresh["data"]["kept_previous"]
        # the same prompts, completions and verdicts, in the same order (only rank 0 wrote it)
        assert (runs[parallel] / "grpo" / "step_3.jsonl").read_text() == samples, parallel
    one = train_losses(single)
    assert sorted(one) == [1, 2, 3, 4, 5]
    for parallel in ("ddp", "fsdp"):
        got = train_losses(runs[parallel])
        assert sorted(got) == sorted(one)
        for step in one:  # steps 4 and 5 train on the refreshed groups
            assert abs(got[step] - one[step]) <= 1e-4 * abs(one[step]), (parallel, step, one[step], got[step])

    # cut back to the step-2 checkpoint (sharded) and resumed: the same refresh and the same losses, bit for bit
    resumed = tmp_path / "resumed"
    _cut_back(runs["fsdp"], resumed, step=2)
    shutil.rmtree(resumed / "grpo")
    launch(resumed, "--resume")
    assert (resumed / "grpo" / "step_3.jsonl").read_text() == samples
    a, b = train_losses(runs["fsdp"]), train_losses(resumed)
    assert [b[3], b[4], b[5]] == [a[3], a[4], a[5]]


PROMPTS = [p.prompt for p in gentask.generate("train", 3)]
SAMPLING = SamplingConfig(n=3, temperature=1.0, top_p=0.95, max_new_tokens=24, seed=5, stop=("e",))


def _tiny(tok: Any) -> MTPModel:
    torch.manual_seed(0)
    special = {"eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id}
    return MTPModel(build_tiny_hf("llama", len(tok), 32, 3, 4, None, 128, special), 2, "transformer")


def _step_loss(model: MTPModel) -> float:
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))  # (B, S)
    mask = torch.ones_like(x, dtype=torch.bool)
    den = [2.0 * (16 - k - 1) for k in range(2)]  # head k's valid entries: 2 rows x (16 - k - 1)
    stats = forward_backward(
        model, model.trunk(x), x, mask, None, lambda _k, _ce, m: m.float(), [1, 0.5], den
    )
    return float(stats.loss)


def _lockstep_rank(rank: int, tok: Any, out: str) -> None:
    torch.set_num_threads(1)
    model = _tiny(tok)
    shard(model, bf16=False)
    mine = [0, 2] if rank == 0 else [1]  # unequal shares: rank 1 idles while rank 0 samples its second
    with lockstep(model, torch.device("cpu")):  # before any training forward (a refresh at step 0)
        got = [generate(model, tok, [(str(i), PROMPTS[i])], SAMPLING) for i in mine]
    loss = _step_loss(model)  # training goes on with the gathered parameters
    torch.save({"got": dict(zip(mine, got, strict=True)), "loss": loss}, f"{out}.{rank}")


def test_fsdp_processes_sample_in_lockstep_like_the_unsharded_model(tmp_path: Path) -> None:
    tok = train_bpe([p.prompt + p.completion for p in gentask.generate("train", 300)], 300, tmp_path / "tok")
    run_ranks(_lockstep_rank, tok, str(tmp_path / "out"))
    ranks = [torch.load(tmp_path / f"out.{r}", weights_only=False) for r in (0, 1)]
    model = _tiny(tok)
    want = [generate(model, tok, [(str(i), p)], SAMPLING) for i, p in enumerate(PROMPTS)]
    got = ranks[0]["got"] | ranks[1]["got"]
    assert [got[i] for i in range(3)] == want
    # the samples stop at different steps (13 to 24 tokens), and rank 0 samples twice: rank 1 has idle forwards
    assert len({s.n_tokens for g in want for s in g}) > 1
    assert ranks[0]["loss"] == ranks[1]["loss"] == pytest.approx(_step_loss(model), rel=1e-6)
