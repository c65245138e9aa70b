"""`python -m wmtp_studio.evaluate --run-dir D`: the evaluator's own entry point (the one workers launch after
training), in a real subprocess on a tiny trained run directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, lines, make_run
from wmtp_studio.rundir.results import read_results
from wmtp_studio.train.loop import train


def evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wmtp_studio.evaluate", *args],
        cwd=ROOT,
        env=dict(os.environ, HF_HUB_OFFLINE="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = make_run(
        tmp_path_factory.mktemp("evaluate") / "run",
        "tiny-ntp.yaml",
        "train.steps=4",
        "eval.benchmarks=[generated:basic:4,generated:basic:3]",
        "eval.n_samples=2",
        "eval.k=[1,2,5]",  # 5 > n_samples: left out, as the worker always did
        "eval.temperature=0.8",
        "eval.max_new_tokens=16",
        "eval.timeout_s=2",
    )
    assert train(run) == 0
    return run


def test_the_recipes_evaluations_run_with_its_settings(run: Path) -> None:
    res = evaluate("--run-dir", str(run))
    assert res.returncode == 0, res.stderr
    for i, (name, problems) in enumerate([("generated:basic:4", 4), ("generated:basic:3", 3)]):
        out = run / "eval" / f"{i}-{name.replace(':', '_')}"
        results = read_results(out)
        assert (results.benchmark, results.n_problems) == (name, problems)
        assert (results.sampling["n"], results.sampling["temperature"]) == (2, 0.8)
        assert results.protocol["timeout_s"] == 2.0  # the recipe's limit reached the sandbox and the record
        assert [p.k for p in results.pass_at_k] == [1, 2]
        samples = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 2 * problems
        # pass@1 is the mean over problems of c/n, n = 2: the share of passing samples
        assert results.pass_at_k[0].value == pytest.approx(sum(s["passed"] for s in samples) / (2 * problems))
        assert f"{name}: {problems} problems" in res.stderr
    evals = [m for m in lines(run) if m["kind"] == "eval"]
    assert [sorted(m["metrics"])[0] for m in evals] == [
        *["generated:basic:4/pass@1", "generated:basic:4/pass@2"],
        *["generated:basic:3/pass@1", "generated:basic:3/pass@2"],
    ]
    seqs = [m["seq"] for m in lines(run)]
    assert seqs == list(range(len(seqs)))  # the eval lines continue the trainer's stream without gaps


def test_one_benchmark_into_a_given_directory(run: Path, tmp_path: Path) -> None:
    res = evaluate("--run-dir", str(run), "--benchmark", "generated:basic:3", "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    assert read_results(tmp_path / "o").n_problems == 3


def test_bad_input_exits_2_with_a_message(run: Path, tmp_path: Path) -> None:
    res = evaluate("--run-dir", str(run), "--benchmark", "humaneval")
    assert res.returncode == 2 and "eval.benchmarks" in res.stderr and "Traceback" not in res.stderr
    res = evaluate("--run-dir", str(run), "--out", str(tmp_path))
    assert res.returncode == 2 and "--out needs --benchmark" in res.stderr
    res = evaluate("--run-dir", str(tmp_path))
    assert (
        res.returncode == 2 and "recipe.json does not exist" in res.stderr and "Traceback" not in res.stderr
    )
