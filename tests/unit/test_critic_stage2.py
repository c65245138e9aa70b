"""critic-wmtp Stage 2 value continual learning (METHOD.md): with `train_on: correct` the value loss still sees
incorrect examples, so a value head that decodes success keeps its explained variance instead of drifting to V = 1;
the held-out slice is split by problem and Stage 2 logs its value loss and explained variance.

A tiny real run on a task whose success is decodable from one token ("+" is right, "-" is wrong)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from wmtp_studio.recipe import load_recipe
from wmtp_studio.train.loop import setup, train

ROOT = Path(__file__).resolve().parents[2]


def write_task(path: Path, problems: int = 120) -> None:
    """Each problem: one correct solution and one incorrect twin with the same prompt."""
    rng = random.Random(0)
    with path.open("w") as fh:
        for i in range(problems):
            name, c = f"f{i}", rng.randint(1, 9)
            prompt = f"def {name}(x):\n    '''x plus {c}'''\n"
            for body, ok in ((f"return x + {c}", 1), ("raise ValueError", 0)):  # decided by the first token
                rec = {"prompt": prompt, "completion": f"    {body}\n", "is_correct": ok}
                fh.write(json.dumps(rec) + "\n")


def make_critic_run(tmp: Path, stage2_steps: int, *extra: str) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    data = tmp / "task.jsonl"
    write_task(data)
    r = load_recipe(
        ROOT / "recipes" / "tiny-critic-wmtp.yaml",
        [
            "data.source=jsonl",
            f"data.path={data}",
            "model.tiny.hidden_size=32",
            "model.n_heads=2",
            "model.head_coefficients=[1.0,0.5]",
            "tokenizer.vocab_size=300",
            f"train.steps={stage2_steps}",
            "train.batch_size=16",
            "train.seq_len=32",
            "train.log_every=10",
            "train.hist_every=1000",
            "train.top_tokens_every=1000",
            "train.checkpoint_every=100000",
            "optim.warmup_steps=5",
            "optim.lr=1e-3",
            "algorithm.value_lr=3e-3",
            "algorithm.stage1.steps=100",
            "algorithm.stage1.eval_every=25",
            "algorithm.stage1.patience=100",
            "eval.val_fraction=0.2",
            "eval.val_every=25",
            "eval.benchmarks=[]",
            *extra,
        ],
    )
    run = tmp / "run"
    run.mkdir(parents=True, exist_ok=True)
    (run / "recipe.json").write_text(r.canonical_json())
    return run


def stream(run: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def ev_before_after(run: Path) -> tuple[dict[str, float], dict[str, float]]:
    """Held-out value metrics at Stage 1's end and at Stage 2's end."""
    lines = stream(run)
    s1 = [m["metrics"] for m in lines if m["kind"] == "stage1"][-1]
    s2 = [m["metrics"] for m in lines if m["kind"] == "val" and "heldout_value_loss" in m["metrics"]][-1]
    return s1, s2


def test_stage2_keeps_explained_variance_and_logs_it(tmp_path: Path) -> None:
    run = make_critic_run(tmp_path, 100)
    assert train(run) == 0
    s1, s2 = ev_before_after(run)
    # Stage 1 decodes success (mean V apart by label), and Stage 2 keeps it: before the fix V drifted towards 1
    # on every example (benchmarks/bench_critic_value.py: EV 0.387 -> 0.101, mean V on incorrect 0.249 -> 0.582).
    assert s1["heldout_explained_variance"] > 0.3
    assert s2["heldout_explained_variance"] > s1["heldout_explained_variance"] - 0.1
    assert s2["heldout_mean_v_incorrect"] < 0.5 < s2["heldout_mean_v_correct"]
    vals = [m for m in stream(run) if m["kind"] == "val"]
    assert [m["step"] for m in vals] == [25, 50, 75, 100]
    assert all("heldout_explained_variance" in m["metrics"] for m in vals)  # never dropped
    train_lines = [m["metrics"] for m in stream(run) if m["kind"] == "train"]
    assert all("explained_variance" in m for m in train_lines)  # Stage 2 batches carry both labels


def test_heldout_slice_is_split_by_problem(tmp_path: Path) -> None:
    from wmtp_studio.train.data import (
        split_by_problem,  # here: benchmarks/ imports this module on older trees
    )

    run = make_critic_run(tmp_path, 1)
    s = setup(run, None)
    train_ids = {tuple(e.ids) for e in s.stage1_data}
    held = s.value_heldout
    assert held and {e.reward for e in held} == {0.0, 1.0}
    # A problem's two variants share the prompt tokens: none of the held-out prompts is in value training.
    prompt = lambda e: tuple(t for t, c in zip(e.ids, e.completion, strict=True) if not c)  # noqa: E731
    assert not {prompt(e) for e in held} & {prompt(e) for e in s.stage1_data}
    assert not {tuple(e.ids) for e in held} & train_ids
    # The LM's held-out (validation) problems are the value's held-out problems, for every algorithm.
    assert {prompt(e) for e in s.val_data} == {prompt(e) for e in held}
    assert len(s.value_extra) == sum(e.reward == 0.0 for e in s.stage1_data) > 0
    # split_by_problem itself: twins never straddle, and 20 % of the 5 problems is 1 problem.
    keys = ["a", "a", "b", "c", "c", "d", "e"]
    tr, ho = split_by_problem(keys, 0.2, seed=0)
    assert sorted(tr + ho) == list(range(7)) and not {keys[i] for i in tr} & {keys[i] for i in ho}
    assert len({keys[i] for i in ho}) == 1
