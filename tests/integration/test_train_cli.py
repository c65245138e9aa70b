"""Each tiny recipe trains end to end through the real `wmtp train` command, and its loss falls."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import FAST, RECIPES, lines

STEPS = 40


def wmtp(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", "from wmtp_studio.cli import wmtp_main; wmtp_main()", *args]
    return subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
        cwd=cwd,
    )


def sets(*extra: str) -> list[str]:
    out = []
    for s in (*FAST, f"train.steps={STEPS}", *extra):
        out += ["--set", s]
    return out


def first_last(run: Path, key: str) -> tuple[float, float]:
    values = [m["metrics"][key] for m in lines(run) if m["kind"] == "train"]
    return sum(values[:3]) / 3, sum(values[-3:]) / 3


@pytest.fixture(scope="module")
def ntp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ntp") / "run"
    res = wmtp("train", str(RECIPES / "tiny-ntp.yaml"), "--run-dir", str(run), *sets())
    assert res.returncode == 0, res.stderr
    return run


def test_ntp_trains_and_writes_a_reloadable_model(ntp_run: Path) -> None:
    first, last = first_last(ntp_run, "head0/ce")
    assert last < first - 0.5, (first, last)
    from transformers import AutoModelForCausalLM

    from wmtp_studio.train.model import load_mtp

    assert load_mtp(ntp_run / "model").n_heads == 1  # no recipe needed
    assert AutoModelForCausalLM.from_pretrained(ntp_run / "model").config.num_hidden_layers == 2


@pytest.mark.parametrize("recipe", ["tiny-baseline-mtp.yaml", "tiny-critic-wmtp.yaml", "tiny-rho1-wmtp.yaml"])
def test_tiny_recipe_trains_end_to_end(recipe: str, ntp_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    extra = ["algorithm.stage1.steps=20", "algorithm.stage1.eval_every=5"] if "critic" in recipe else []
    res = wmtp(
        "train",
        str(RECIPES / recipe),
        "--run-dir",
        str(run),
        *sets(*extra),
        env={"WMTP_RHO1_REFERENCE": str(ntp_run / "model")},
    )
    assert res.returncode == 0, res.stderr
    first, last = first_last(run, "loss")
    assert last < first - 0.5, (first, last)
    stream = lines(run)
    train = [m for m in stream if m["kind"] == "train"]
    assert {f"head{k}/ce" for k in range(4)} <= set(train[-1]["metrics"])
    hist = [m for m in stream if m["kind"] == "hist"]
    assert hist and len(hist[-1]["data"]["heads"]) == 4 and len(hist[-1]["data"]["edges"]) == 21
    assert any(m["kind"] == "top_tokens" and m["data"]["top"] for m in stream)
    assert any(m["kind"] == "val" for m in stream)
    if "critic" in recipe:
        stage1 = [m for m in stream if m["kind"] == "stage1"]
        assert stage1 and "heldout_explained_variance" in stage1[-1]["metrics"]
        assert "value_loss" in train[-1]["metrics"]
        assert train[-1]["metrics"]["head1/w_std"] > 0  # TD errors give non-uniform weights
    if "rho1" in recipe:
        frac = train[-1]["metrics"]["head1/selected_fraction"]
        assert frac == pytest.approx(0.6, abs=0.02)
        assert train[-1]["metrics"]["head0/selected_fraction"] == 1.0  # keep_head0


def test_bad_recipe_exits_2_naming_the_field_and_creates_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    text = (RECIPES / "tiny-critic-wmtp.yaml").read_text().replace("beta: 1.0", "beta: -1.0")
    bad.write_text(text)
    res = wmtp("train", str(bad), "--run-dir", str(tmp_path / "run"))
    assert res.returncode == 2
    assert "algorithm.beta" in res.stderr and str(bad) in res.stderr.replace("\n", "")
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()
    res = wmtp(
        "train", str(RECIPES / "tiny-ntp.yaml"), "--set", "optim.lrr=1", "--run-dir", str(tmp_path / "r2")
    )
    assert res.returncode == 2 and "optim.lrr" in res.stderr and not (tmp_path / "r2").exists()


def test_rho1_reference_with_another_tokenizer_is_refused(ntp_run: Path, tmp_path: Path) -> None:
    res = wmtp(
        "train",
        str(RECIPES / "tiny-rho1-wmtp.yaml"),
        "--run-dir",
        str(tmp_path / "run"),
        *sets("tokenizer.vocab_size=600"),
        env={"WMTP_RHO1_REFERENCE": str(ntp_run / "model")},
    )
    assert res.returncode == 2, res.stderr
    assert "does not share the base model's tokenizer" in res.stderr and "Traceback" not in res.stderr


def test_resume_with_a_different_recipe_is_refused(ntp_run: Path) -> None:
    res = wmtp(
        "train", str(RECIPES / "tiny-ntp.yaml"), "--run-dir", str(ntp_run), "--resume", *sets("optim.lr=1e-3")
    )
    assert res.returncode == 2 and "differs" in res.stderr and "optim" in res.stderr
    frozen = json.loads((ntp_run / "recipe.json").read_text())
    assert frozen["optim"]["lr"] == 3e-3  # nothing stored was changed


def test_a_missing_local_reference_says_so_instead_of_a_hub_error(tmp_path: Path) -> None:
    missing = tmp_path / "runs" / "tiny-ntp" / "model"
    res = wmtp(
        "train",
        str(RECIPES / "tiny-rho1-wmtp.yaml"),
        "--run-dir",
        str(tmp_path / "run"),
        *sets(),
        env={"WMTP_RHO1_REFERENCE": str(missing)},
    )
    assert res.returncode == 2, res.stderr
    assert f"algorithm.reference: {missing} does not exist" in res.stderr.replace("\n", "")
    assert "Repo id" not in res.stderr and "Traceback" not in res.stderr


def test_without_run_dir_the_run_goes_under_the_studio_home(tmp_path: Path) -> None:
    """The default run directory is the studio's (`<WMTP_HOME>/runs/<name>-<time>`, as for queued runs), not
    `runs/` under the working directory. A missing rho1 reference stops the run right after its directory was
    made, so nothing trains."""
    home = tmp_path / "home"
    res = wmtp(
        "train",
        str(RECIPES / "tiny-rho1-wmtp.yaml"),
        *sets(),
        env={"WMTP_HOME": str(home), "WMTP_RHO1_REFERENCE": str(tmp_path / "missing")},
        cwd=tmp_path,
    )
    assert res.returncode == 2 and "does not exist" in res.stderr, res.stderr
    [run] = (home / "runs").iterdir()
    assert run.name.startswith("tiny-rho1-wmtp-") and (run / "recipe.json").is_file()
    assert not (tmp_path / "runs").exists()
