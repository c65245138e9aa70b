"""`wmtp eval` and `wmtp eval-samples` on bad inputs: a corrupted model, run or checkpoint directory (a tiny model
trained for real, then damaged one way per case), undecodable or unusual samples files and `--k 0`. Every case
exits 2 with a message naming the file and the problem, never a traceback."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.integration.conftest import make_run
from wmtp_studio.cli import app
from wmtp_studio.evaluate.run import read_samples
from wmtp_studio.evaluate.tasks import load_benchmark
from wmtp_studio.train.loop import train


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-step run of a 16-wide, 4-head model with checkpoints at steps 1 and 2 (a few seconds on CPU)."""
    run = make_run(
        tmp_path_factory.mktemp("corrupt") / "run",
        "tiny-baseline-mtp.yaml",
        "train.steps=2",
        "train.checkpoint_every=1",
        "data.generated.num_train=50",
        "model.tiny.hidden_size=16",
        "model.tiny.num_attention_heads=2",
        "tokenizer.vocab_size=260",
    )
    assert train(run) == 0
    return run


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.write_bytes(b"\xff\xfe{not json")


CKPT = "checkpoints/step_2"
# (damage, the directory given to `wmtp eval`, the file the message must name, the problem it must state);
# targets: "run" (uses run/model), "ckpt-run" (run without model/: follows checkpoints/latest), "ckpt", "model"
CASES: dict[str, tuple[Callable[[Path], None], str, str, str]] = {
    "model-truncated": (lambda r: truncate(r / "model/model.safetensors"), "run", "model/model.safetensors", "truncated or corrupt safetensors"),
    "model-empty": (lambda r: empty(r / "model/model.safetensors"), "run", "model/model.safetensors", "header too small"),
    "heads-truncated": (lambda r: truncate(r / "model/mtp_heads.safetensors"), "run", "model/mtp_heads.safetensors", "truncated or corrupt safetensors"),
    "heads-empty": (lambda r: empty(r / "model/mtp_heads.safetensors"), "model", "model/mtp_heads.safetensors", "header too small"),
    "checkpoint-model-truncated": (lambda r: truncate(r / CKPT / "model/model.safetensors"), "ckpt-run", f"{CKPT}/model/model.safetensors", "truncated or corrupt safetensors"),
    "checkpoint-model-empty": (lambda r: empty(r / CKPT / "model/model.safetensors"), "ckpt", f"{CKPT}/model/model.safetensors", "header too small"),
    "checkpoint-heads-truncated": (lambda r: truncate(r / CKPT / "model/mtp_heads.safetensors"), "ckpt", f"{CKPT}/model/mtp_heads.safetensors", "truncated or corrupt safetensors"),
    "checkpoint-heads-empty": (lambda r: empty(r / CKPT / "model/mtp_heads.safetensors"), "ckpt-run", f"{CKPT}/model/mtp_heads.safetensors", "header too small"),
    "config-garbage": (lambda r: garbage(r / "model/config.json"), "model", "model/config.json", "not UTF-8 text"),
    "config-not-an-object": (lambda r: (r / "model/config.json").write_text("[1, 2]"), "model", "model/config.json", "expected a JSON object, got list"),
    "wmtp-config-garbage": (lambda r: (r / "model/wmtp_config.json").write_text("{n_heads: 4"), "run", "model/wmtp_config.json", "not valid JSON"),
    "wmtp-config-bad-heads": (lambda r: (r / "model/wmtp_config.json").write_text('{"n_heads": "four", "head_kind": "transformer"}'), "run", "model/wmtp_config.json", "n_heads must be an integer from 1 to 16, got 'four'"),
    "tokenizer-missing": (lambda r: (r / "model/tokenizer.json").unlink(), "run", "model", "no tokenizer (tokenizer.json is missing"),
    "tokenizer-garbage": (lambda r: (r / "model/tokenizer.json").write_text('{"model": '), "run", "model/tokenizer.json", "not valid JSON"),
    "latest-dangling": (lambda r: (r / "checkpoints/latest").write_text("step_9"), "ckpt-run", "checkpoints/latest", "names step_9, which is incomplete"),
    "weights-missing": (lambda r: (r / "model/model.safetensors").unlink(), "run", "model", "no file named model.safetensors"),
}  # fmt: skip


def invoke(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, list(args))
    assert isinstance(res.exception, SystemExit | None), res.exception  # no traceback: only typer's Exit
    return res.exit_code, res.output


@pytest.mark.parametrize("case", list(CASES))
def test_eval_of_a_corrupted_model_directory_exits_2_naming_the_file(
    run_dir: Path, tmp_path: Path, case: str
) -> None:
    damage, target, file, problem = CASES[case]
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    damage(run)
    if target == "ckpt-run":
        shutil.rmtree(run / "model")  # an unfinished run: eval follows checkpoints/latest
    where = {"run": run, "ckpt-run": run, "ckpt": run / CKPT, "model": run / "model"}[target]
    code, out = invoke("eval", str(where), "--benchmark", "generated:basic:2", "--max-new-tokens", "4")
    assert code == 2, out
    assert str(run / file) in out and problem in out, out
    assert not (run / "eval").exists()  # nothing was written


def test_the_undamaged_run_evaluates(run_dir: Path, tmp_path: Path) -> None:
    # the damaged cases above fail because of their damage: the same copy, undamaged, evaluates
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    code, out = invoke("eval", str(run), "--benchmark", "generated:basic:2", "--max-new-tokens", "4")
    assert code == 0, out
    assert json.loads((run / "eval/generated_basic_2/results.json").read_text())["n_problems"] == 2


def test_samples_files_are_read_as_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    # a raw U+2028 (and U+0085) is valid inside a JSON string; str.splitlines() used to cut the line there
    rows = [{"task_id": "HumanEval/0", "completion": "    return False  # a\u2028b\x85c\n"}]
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\r\n\n")
    assert read_samples(path, {"HumanEval/0"}) == [("HumanEval/0", 0, rows[0]["completion"])]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(
        json.dumps({"task_id": "t1", "prompt": "x = 1\u2028", "tests": ["assert x == 1"]}) + "\n"
    )
    assert load_benchmark(f"jsonl:{tasks}").tasks[0].prompt == "x = 1\u2028"


def test_eval_samples_bad_input_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "samples.jsonl"
    path.write_bytes(b'{"task_id": "HumanEval/0", "completion": "caf\xe9"}\n')  # latin-1, not UTF-8
    code, out = invoke("eval-samples", str(path), "--benchmark", "humaneval")
    assert code == 2 and f"{path}: not UTF-8 text (byte 45: invalid continuation" in out, (
        out
    )  # 0xe9 at offset 45
    path.write_text("[" * 100_000 + "\n")  # json.loads raises RecursionError, not JSONDecodeError
    code, out = invoke("eval-samples", str(path), "--benchmark", "humaneval")
    assert code == 2 and f"{path} line 1: not valid JSON" in out, out
    path.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return False\n"}) + "\n")
    for k in ("0", "1,0", "-1"):
        code, out = invoke("eval-samples", str(path), "--benchmark", "humaneval", "--k", k)
        assert code == 2 and f"--k {k}: every k must be at least 1" in out, out
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_bytes(b'{"task_id": "t", "prompt": "\xff", "tests": ["assert 1"]}\n')
    code, out = invoke("eval-samples", str(path), "--benchmark", f"jsonl:{tasks}")
    assert code == 2 and f"{tasks}: not UTF-8 text" in out, out
