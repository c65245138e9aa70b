"""grpo-wmtp on-policy refresh for real: a tiny model samples G completions per training prompt, the subprocess
sandbox labels them, training goes on with the new groups; a run interrupted around the refreshes and resumed
equals the run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import assert_same_training, lines, make_run, train_losses
from wmtp_studio.errors import StudioError
from wmtp_studio.rundir.checkpoints import read_trainer_state
from wmtp_studio.train import checkpoint as ckpt
from wmtp_studio.train.grpo import GROUPS_FILE
from wmtp_studio.train.loop import EXIT_INTERRUPTED, train


def comment_task(path: Path) -> Path:
    """40 prompts `x = i  # note:` with the test `assert x == i`. A completion continues the comment: it passes
    unless it breaks the line (a newline or carriage return, then code that is not valid or changes x) or holds
    a NUL byte, so a random tiny model's samples both pass and fail. Every other prompt also has a wrong
    labelled completion, so the data's own groups carry signal."""
    rows = []
    for i in range(40):
        ok = {
            "prompt": f"x = {i}  # note:",
            "completion": " fine",
            "tests": [f"assert x == {i}"],
            "id": f"t{i}",
        }
        rows.append(ok | {"is_correct": 1})
        if i % 2 == 0:
            rows.append(ok | {"completion": "\nx = -1", "is_correct": 0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grpo_run(run_dir: Path, data: Path, *overrides: str) -> Path:
    return make_run(
        run_dir,
        "tiny-grpo-wmtp.yaml",
        "data.source=jsonl",
        f"data.path={data}",
        "eval.val_fraction=0.1",
        "train.steps=8",
        "train.batch_size=4",
        "train.checkpoint_every=100",
        "algorithm.refresh_steps=3",
        "algorithm.refresh_prompts=8",
        "algorithm.group_size=4",
        "algorithm.max_new_tokens=10",
        "algorithm.temperature=1.0",
        *overrides,
    )


def passes_outside_the_sandbox(program: str) -> bool:
    """The label an independent judge gives: run the program with this Python, no sandbox."""
    if "\x00" in program:
        return False  # Python refuses source with NUL bytes (and a command line cannot carry one)
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30, check=False)
    return done.returncode == 0


def test_refresh_samples_labels_and_resumes_exactly(tmp_path: Path) -> None:
    data = comment_task(tmp_path / "task.jsonl")
    straight = grpo_run(tmp_path / "straight", data)
    assert train(straight) == 0

    # Refreshes after steps 3 and 6: 8 prompts x 4 samples, labelled by the sandbox, written to grpo/step_N.jsonl.
    refreshes = [m for m in lines(straight) if m.get("event") == "grpo_refresh"]
    assert [m["step"] for m in refreshes] == [3, 6]
    for m in refreshes:
        d = m["data"]
        assert d["samples"] == 32 and d["groups"] == 8 and d["gen_s"] > 0 and d["judge_s"] > 0
        assert not d["kept_previous"]  # some groups mixed passes and failures: training went on with them
        assert 0 < d["reward_mean"] < 1 and d["zero_var_fraction"] < 1
    sampled = [json.loads(x) for x in (straight / "grpo" / "step_3.jsonl").read_text().splitlines()]
    assert len(sampled) == 32 and len({s["prompt"] for s in sampled}) == 8
    assert all(sum(s["prompt"] == p["prompt"] for s in sampled) == 4 for p in sampled)
    for s in sampled:  # the sandbox's verdicts agree with running each program directly
        program = s["prompt"] + s["completion"] + "\n" + "".join(t + "\n" for t in s["tests"])
        assert s["is_correct"] == int(passes_outside_the_sandbox(program)), s
    assert {s["is_correct"] for s in sampled} == {0, 1}
    # the train lines carry the groups' stats, and the weights histograms are written per head
    last = [m for m in lines(straight) if m["kind"] == "train"][-1]["metrics"]
    assert last["grpo/groups"] == 8 and 0 < last["grpo/reward_mean"] < 1 and last["grpo/gen_s"] > 0
    assert any(m["kind"] == "hist" and len(m["data"]["heads"]) == 4 for m in lines(straight))

    # Interrupted twice: at step 3, before its refresh (the resumed run refreshes first), and at step 5, after it
    # (the checkpoint holds the refreshed groups).
    interrupted = grpo_run(tmp_path / "interrupted", data)

    def sigterm_at(at: int):  # type: ignore[no-untyped-def]
        def on_step(step: int, _total: int, _m: dict[str, float]) -> None:
            if step == at:
                os.kill(os.getpid(), signal.SIGTERM)

        return on_step

    assert train(interrupted, progress=sigterm_at(2)) == EXIT_INTERRUPTED
    first = ckpt.latest_checkpoint(interrupted)
    assert first is not None and first.name == "step_3" and not (first / GROUPS_FILE).exists()
    assert train(interrupted, resume=True, progress=sigterm_at(4)) == EXIT_INTERRUPTED
    second = ckpt.latest_checkpoint(interrupted)
    assert second is not None and second.name == "step_5"
    assert json.loads((second / GROUPS_FILE).read_text())["made_at"] == 3
    assert read_trainer_state(second).step == 5
    assert train(interrupted, resume=True) == 0

    assert_same_training(straight, interrupted, 8)
    for n in (3, 6):  # the same samples and labels
        assert (straight / "grpo" / f"step_{n}.jsonl").read_text() == (
            interrupted / "grpo" / f"step_{n}.jsonl"
        ).read_text()
    stream = lines(interrupted)
    assert [m["seq"] for m in stream] == list(range(len(stream)))
    assert [m["step"] for m in stream if m.get("event") == "grpo_refresh"] == [3, 6]


def test_data_without_signal_is_refreshed_at_step_0_and_a_refresh_without_signal_is_an_error(
    tmp_path: Path,
) -> None:
    data = comment_task(tmp_path / "task.jsonl")
    only_correct = [r for r in map(json.loads, data.read_text().splitlines()) if r["is_correct"]]
    data.write_text(
        "".join(json.dumps(r) + "\n" for r in only_correct)
    )  # every group: one correct completion
    run = grpo_run(tmp_path / "r", data)
    recipe = json.loads((run / "recipe.json").read_text())
    recipe["train"]["steps"] = 2
    (run / "recipe.json").write_text(json.dumps(recipe))
    assert train(run) == 0
    (refresh,) = [m for m in lines(run) if m.get("event") == "grpo_refresh"]
    assert refresh["step"] == 0 and not refresh["data"]["kept_previous"]
    assert sorted(train_losses(run)) == [1, 2]

    # tests that no completion passes: every sampled group is all wrong, and there is nothing else to train on
    hopeless = [r | {"tests": ["assert False"]} for r in only_correct]
    data.write_text("".join(json.dumps(r) + "\n" for r in hopeless))
    run = grpo_run(tmp_path / "hopeless", data)
    with pytest.raises(StudioError, match="no group of the refresh at step 0 has mixed rewards"):
        train(run)
    assert lines(run)[-1]["event"] == "error"
