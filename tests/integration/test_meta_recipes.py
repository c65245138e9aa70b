"""The meta-7b-mtp-* recipes and what they need: the checkpoint's variable and directory (exit 2 without them), a
Meta checkpoint trained through the real set-up, and `train.freeze: trunk`, which leaves the trunk's weights as
they were."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from tests.integration.conftest import RECIPES, make_run
from tests.unit.test_meta_checkpoint import PARAMS, write_checkpoint
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.checkpoints import TrainerState
from wmtp_studio.train.setup import setup
from wmtp_studio.train.step import train_step

HEADS, FULL = RECIPES / "meta-7b-mtp-heads.yaml", RECIPES / "meta-7b-mtp-full.yaml"


def wmtp(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from wmtp_studio.cli import wmtp_main; wmtp_main()", *args]
    base = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=base | env)


def test_the_meta_recipes_differ_in_what_trains_and_point_at_the_checkpoint() -> None:
    env = {"WMTP_META_7B": "/models/7B_1T_4"}
    heads, full = load_recipe(HEADS, env=env), load_recipe(FULL, env=env)
    assert heads.model.meta_checkpoint == full.model.meta_checkpoint == "/models/7B_1T_4"
    assert (heads.train.freeze, full.train.freeze) == ("trunk", "none")
    assert heads.model.n_heads == 4 and heads.train.ce_chunk == 512
    assert (heads.train.parallel, full.train.parallel) == ("ddp", "fsdp")  # 7B's AdamW state: sharded
    a, b = heads.model_dump(mode="json"), full.model_dump(mode="json")
    for d in (a, b):
        del d["name"], d["train"]["freeze"], d["train"]["parallel"], d["optim"]["lr"]
    assert a == b  # the same run but for what trains (its learning rate, and sharding over several GPUs)


def test_a_missing_variable_or_directory_exits_2(tmp_path: Path) -> None:
    res = wmtp("validate", str(HEADS), env={})
    assert res.returncode == 2 and "WMTP_META_7B is not set" in res.stderr and "Traceback" not in res.stderr
    missing = tmp_path / "7B_1T_4"
    res = wmtp("train", str(FULL), "--run-dir", str(tmp_path / "run"), env={"WMTP_META_7B": str(missing)})
    assert res.returncode == 2, res.stderr
    assert f"model.meta_checkpoint: {missing} does not exist" in res.stderr.replace("\n", "")
    assert "Traceback" not in res.stderr


def test_heads_only_training_leaves_the_trunk_of_a_meta_checkpoint_as_it_was(tmp_path: Path) -> None:
    write_checkpoint(tmp_path / "ckpt", {**PARAMS, "vocab_size": 512})  # the BPE's 512 tokens
    run = make_run(
        tmp_path / "run",
        "tiny-baseline-mtp.yaml",
        "model.tiny=null",
        f"model.meta_checkpoint={tmp_path / 'ckpt'}",
        "train.freeze=trunk",
        "train.ce_chunk=48",
        "data.generated.num_train=120",
        "train.batch_size=4",
    )
    s = setup(run, None)
    assert len(s.model.extra_heads) == 3  # 4 heads: Meta's 2 extra heads and a copy of head 0
    trunk = {id(p) for p in s.model.trunk_parameters()}
    named = dict(s.model.named_parameters())
    frozen = {n for n, p in named.items() if id(p) in trunk}
    # the embedding and the trunk layers 0, 1 (head 0 is layer 2); nothing of the heads, norm or unembedding
    assert "hf.model.embed_tokens.weight" in frozen and "hf.model.layers.1.mlp.up_proj.weight" in frozen
    assert not any(
        n.startswith(("hf.model.layers.2.", "extra_heads.", "hf.model.norm", "hf.lm_head")) for n in frozen
    )
    optimised = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert optimised == {id(p) for p in named.values()} - trunk
    before = {n: p.detach().clone() for n, p in named.items()}
    state = TrainerState()
    results = [train_step(s, state, detail=False, stop_requested=False) for _ in range(2)]
    assert all(r.finite for r in results) and state.step == 2
    for n, p in named.items():
        if n in frozen:
            assert torch.equal(p, before[n]), f"{n} changed"
            assert p.grad is None
        else:
            assert not torch.equal(p, before[n]), f"{n} did not train"
