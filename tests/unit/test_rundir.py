"""The run directory's typed contract (rundir/): each model round-trips through its file, files written by the
previous version (tests/data/rundir-v0: results.json and trainer_state.json as the dict-writing code wrote them;
tests/data/metrics: metrics.jsonl of an older trainer) still load and are rewritten byte for byte, and pass@k
reaches the database from the typed results."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.integration.conftest import RECIPES
from wmtp_studio import store
from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.checkpoints import (
    TrainerState,
    latest_checkpoint,
    point_latest,
    read_trainer_state,
    resume_state,
    write_trainer_state,
)
from wmtp_studio.rundir.metrics import MetricLine, read_metrics
from wmtp_studio.rundir.results import (
    EvalResults,
    PassAtK,
    ProblemCount,
    eval_dir,
    read_results,
    read_samples,
    write_results,
    write_samples,
)

DATA = Path(__file__).resolve().parents[1] / "data"
V0 = DATA / "rundir-v0"


def test_metric_lines_round_trip_and_an_older_trainers_file_loads(tmp_path: Path) -> None:
    line = MetricLine(seq=3, step=10, time=1.5, kind="eval", metrics={"mbpp/pass@1": 0.25}, data={"n": 2})
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(line.model_dump_json().encode() + b"\n" + b'{"seq": 4, "st')  # a partial last line
    assert read_metrics(path) == [line]  # the partial line is left for later
    old = read_metrics(DATA / "metrics" / "ntp.jsonl")
    assert [ln.seq for ln in old] == list(range(27)) and old[0].event == "start"
    assert old[1].metrics["loss"] == pytest.approx(5.345559597015381)


def test_trainer_state_of_the_previous_version_loads_and_is_rewritten_identically(tmp_path: Path) -> None:
    state = read_trainer_state(V0)
    assert state == TrainerState(
        step=6, epoch=1, batch_index=2, tokens_seen=3072, nonfinite_total=1, stage1_done=True, seq=21,
        metrics_offset=4567,
    )  # fmt: skip
    write_trainer_state(tmp_path, state)
    assert (tmp_path / "trainer_state.json").read_bytes() == (V0 / "trainer_state.json").read_bytes()
    state.step += 1  # the trainer advances it in place
    write_trainer_state(tmp_path, state)
    assert read_trainer_state(tmp_path).step == 7
    (tmp_path / "trainer_state.json").write_text('{"step": "six"}')
    with pytest.raises(StudioError, match=r"trainer_state\.json is not a trainer state"):
        read_trainer_state(tmp_path)


def test_the_latest_pointer_names_the_state_a_resume_starts_from(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path) is None and resume_state(tmp_path) == TrainerState()
    step = tmp_path / "checkpoints" / "step_6"
    shutil.copytree(V0, step)
    point_latest(tmp_path, step)
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_6"
    assert latest_checkpoint(tmp_path) == step
    assert (resume_state(tmp_path).seq, resume_state(tmp_path).metrics_offset) == (21, 4567)
    (step / "trainer_state.json").unlink()  # the pointer names an incomplete checkpoint
    with pytest.raises(StudioError, match="which is incomplete"):
        latest_checkpoint(tmp_path)


def test_results_of_the_previous_version_load_and_are_rewritten_identically(tmp_path: Path) -> None:
    results = read_results(V0)
    assert (results.benchmark, results.n_problems, results.isolation_tier) == (
        "generated:basic:3",
        3,
        "process",
    )
    # per problem (n, c): (2, 2), (2, 1), (2, 0). pass@1 = mean(c/n) = (1 + 0.5 + 0) / 3 = 0.5;
    # pass@2 = mean(1 - C(n-c, 2)/C(2, 2)) = (1 + 1 + 0) / 3 = 2/3
    assert [(p.k, p.value) for p in results.pass_at_k] == [(1, 0.5), (2, pytest.approx(2 / 3))]
    assert results.per_problem["gen/basic/test/1"] == ProblemCount(n=2, c=1)
    assert results.protocol["timeout_s"] == 4.0 and results.sampling["temperature"] == 0.8
    write_results(tmp_path, results)
    assert (tmp_path / "results.json").read_bytes() == (V0 / "results.json").read_bytes()


def test_results_round_trip_with_mixed_tiers_and_refuse_a_file_that_is_not_results(tmp_path: Path) -> None:
    results = EvalResults(
        benchmark="mbpp",
        protocol={"source": "x"},
        sampling={"source": "samples.jsonl"},
        model="external",
        isolation_tier=["namespace", "process"],
        n_problems=1,
        pass_at_k=[PassAtK(k=1, value=1.0, ci_low=1.0, ci_high=1.0, n_problems=1, n_samples=1)],
        per_problem={"1": ProblemCount(n=1, c=1)},
        time=2.0,
    )
    out = eval_dir(tmp_path, 1, "mbpp:/data/x.jsonl")
    assert out == tmp_path / "eval" / "1-mbpp__data_x.jsonl"
    out.mkdir(parents=True)
    write_results(out, results)
    assert read_results(out) == results
    (out / "results.json").write_text(json.dumps({"benchmark": "mbpp"}))
    with pytest.raises(
        StudioError, match=r"results\.json is not an evaluation's results: protocol: Field required"
    ):
        read_results(out)


def test_pass_at_k_reaches_the_database_from_the_typed_results(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    store.upgrade(engine=engine)
    with store.submission(engine=engine, runs_dir=tmp_path / "runs") as sub:
        run = sub.add_run(recipe=load_recipe(RECIPES / "tiny-ntp.yaml"))
    assert run.id is not None
    results = read_results(V0)  # as the previous version wrote it
    store.record_results(engine=engine, run_id=run.id, results=results, samples=V0 / "samples.jsonl")
    rows = store.list_evaluations(engine=engine, run_id=run.id)
    assert [(e.benchmark, e.k, e.pass_at_k, e.ci_low, e.ci_high, e.n_problems) for e in rows] == [
        ("generated:basic:3", 1, 0.5, 0.0, 1.0, 3),
        ("generated:basic:3", 2, pytest.approx(2 / 3), 0.0, 1.0, 3),
    ]
    raw = json.loads((V0 / "results.json").read_text())
    assert rows[0].per_problem == raw["per_problem"]
    assert rows[0].protocol == {
        "protocol": raw["protocol"],
        "sampling": raw["sampling"],
        "isolation_tier": "process",
        "samples": str(V0 / "samples.jsonl"),
    }


# A samples.jsonl line exactly as the evaluator wrote it before the model existed (json.dumps of its dataclass).
OLD_SAMPLE = (
    '{"task_id": "HumanEval/0", "index": 1, "completion": "    return 1\\n", "passed": false, '
    '"status": "wrong_answer", "tier": "process", "finish_reason": "stop", "n_tokens": 5, '
    '"detail": "assert at line 3 failed", "line": 3, "expected": "2", "got": "1", "exception": "", '
    '"stderr": "", "output_truncated": false, "duration_s": 0.0123}\n'
)


def test_samples_of_the_previous_version_load_and_are_rewritten_identically(tmp_path: Path) -> None:
    (tmp_path / "old").mkdir()
    older = (
        '{"task_id": "t", "index": 0, "completion": "", "passed": true, "status": "passed", "tier": "uid"}\n'
    )
    (tmp_path / "old" / "samples.jsonl").write_text(OLD_SAMPLE + older)
    first, second = read_samples(tmp_path / "old" / "samples.jsonl")
    assert (first.line, first.expected, first.got, first.duration_s) == (3, "2", "1", 0.0123)
    assert (
        second.passed and second.output_truncated is False and second.duration_s == 0.0
    )  # fields added later
    write_samples(tmp_path, [first])
    assert (tmp_path / "samples.jsonl").read_text() == OLD_SAMPLE
    assert read_samples(tmp_path / "old" / "samples.jsonl", limit=1) == [first]
    (tmp_path / "bad.jsonl").write_text('{"task_id": "t"}\n')
    with pytest.raises(ValueError, match="index"):
        read_samples(tmp_path / "bad.jsonl")


def test_a_runs_generated_benchmark_is_its_own_family_read_from_its_frozen_recipe(tmp_path: Path) -> None:
    from wmtp_studio.evaluate.run import benchmark_for_run

    recipe = load_recipe(
        RECIPES / "tiny-ntp.yaml",
        ["data.generated.family=compose", "eval.benchmarks=[humaneval, generated:compose:100]"],
    )
    (tmp_path / "recipe.json").write_text(recipe.canonical_json())
    assert benchmark_for_run("generated", tmp_path) == "generated:compose:100"
    assert benchmark_for_run("humaneval", tmp_path) == "humaneval"
    (tmp_path / "recipe.json").write_text(load_recipe(RECIPES / "tiny-ntp.yaml").canonical_json())
    assert benchmark_for_run("generated", tmp_path) == "generated:basic"
