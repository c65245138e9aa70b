"""`wmtp-studio` headless commands as real subprocesses on a real SQLite studio database in a temp home."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import RECIPES, ROOT
from tests.integration.jobs import studio_env, studio_run
from wmtp_studio.recipe_algorithms import ALGORITHMS
from wmtp_studio.submit import QUICKSTART_ALL_ALGORITHMS


@pytest.fixture
def studio(tmp_path: Path) -> Any:
    env = studio_env(tmp_path / "home") | {
        "WMTP_TINY_STEPS": "20",
        # the tiny rho1 recipe's reference must exist when it is submitted (a stand-in directory will do)
        "WMTP_RHO1_REFERENCE": str(tmp_path / "runs" / "tiny-ntp" / "model"),
    }
    (tmp_path / "runs" / "tiny-ntp" / "model").mkdir(parents=True)

    def call(*args: str, code: int = 0) -> subprocess.CompletedProcess[str]:
        proc = studio_run(env, *args)
        assert proc.returncode == code, (proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        return proc

    return call


def runs_json(studio: Any, *args: str) -> list[dict[str, Any]]:
    return json.loads(studio("runs", "--json", *args).stdout)


def test_submit_and_compare_queue_runs_with_frozen_recipes(studio: Any, tmp_path: Path) -> None:
    run_id = int(studio("submit", str(RECIPES / "tiny-ntp.yaml"), "--priority", "3", "--gpus", "1").stdout)
    out = studio(
        "compare",
        str(RECIPES / "tiny-rho1-wmtp.yaml"),
        "--algorithms",
        ",".join(ALGORITHMS),
        "--seeds",
        "0,1,2",
    ).stdout
    assert out.startswith(f"comparison set 1: tiny-rho1-wmtp, {len(ALGORITHMS)} algorithm(s) x 3 seed(s)")
    runs = runs_json(studio)
    assert len(runs) == 1 + 3 * len(ALGORITHMS) and runs[-1]["id"] == run_id  # newest first
    single = runs[-1]
    assert (single["algorithm"], single["seed"], single["status"]) == ("ntp", 0, "queued")
    assert (single["priority"], single["gpus_requested"], single["comparison_set_id"]) == (3, 1, None)
    in_set = runs_json(studio, "--set", "1")
    assert sorted((r["algorithm"], r["seed"]) for r in in_set) == sorted(
        (a, s) for a in ALGORITHMS for s in (0, 1, 2)
    )
    for r in in_set:
        assert r["status"] == "queued" and r["attempts"] == 0 and r["created_at"]
        frozen = json.loads((Path(r["run_dir"]) / "recipe.json").read_text())
        assert (frozen["algorithm"]["name"], frozen["train"]["seed"]) == (r["algorithm"], r["seed"])
        assert frozen["train"]["steps"] == 20  # ${WMTP_TINY_STEPS} substituted before freezing
        assert Path(r["run_dir"]).parent == tmp_path / "home" / "runs"
    assert runs_json(studio, "--status", "running") == []
    assert "queued" in studio("runs").stdout  # the human table


def test_invalid_input_exits_2_and_stores_nothing(studio: Any, tmp_path: Path) -> None:
    studio("submit", str(RECIPES / "tiny-ntp.yaml"))
    before = runs_json(studio)
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "tiny-ntp.yaml").read_text().replace("  batch_size: 32", "  batch_sise: 32"))
    for args in (
        ("submit", str(bad)),
        ("compare", str(bad), "--seeds", "0,1"),
        ("compare", str(RECIPES / "tiny-ntp.yaml"), "--set", "optim.lr=-1"),
    ):
        err = studio(*args, code=2).stderr
        assert "error:" in err and "invalid recipe" in err
    assert "train.batch_sise" in studio("submit", str(bad), code=2).stderr
    err = studio("compare", str(RECIPES / "tiny-ntp.yaml"), "--algorithms", "ntp,mtp", code=2).stderr
    assert (
        "'mtp'" in err
        and "valid ones are ntp, baseline-mtp, critic-wmtp, rho1-wmtp, grad-wmtp, grpo-wmtp" in err
    )
    assert "rho1-wmtp needs a reference" in studio("compare", str(RECIPES / "tiny-ntp.yaml"), code=2).stderr
    err = studio(
        "compare", str(RECIPES / "tiny-rho1-wmtp.yaml"), "--set", "algorithm.reference=no/such/model", code=2
    ).stderr
    assert "algorithm.reference: no/such/model does not exist" in err and str(ROOT / "no/such/model") in err
    assert (
        "expected comma-separated integers"
        in studio(
            "compare", str(RECIPES / "tiny-ntp.yaml"), "--algorithms", "ntp", "--seeds", "0,x", code=2
        ).stderr
    )
    assert (
        "seeds are repeated"
        in studio(
            "compare", str(RECIPES / "tiny-ntp.yaml"), "--algorithms", "ntp", "--seeds", "0,0", code=2
        ).stderr
    )
    assert "expected one of queued" in studio("runs", "--status", "done", code=2).stderr
    assert "no run with id 99" in studio("show", "99", code=2).stderr
    assert runs_json(studio) == before  # nothing stored, nothing changed
    assert not list((tmp_path / "home" / "runs").glob("2"))


def test_quickstart_seeds_option(studio: Any) -> None:
    assert "is not between 1 and 10" in studio("quickstart", "--seeds", "0", code=2).stderr
    assert "--seeds" in studio("quickstart", "--seeds", "x", code=2).stderr  # typer: not an integer
    assert runs_json(studio) == []
    runs = json.loads(studio("quickstart", "--seeds", "3", "--json").stdout)
    tunes = [r for r in runs if r["comparison_set_id"] is not None]
    assert len(runs) == 13 and sorted({r["seed"] for r in tunes}) == [0, 1, 2]
    assert sorted(r["algorithm"] for r in tunes if r["seed"] == 2) == sorted(
        ["ntp", "baseline-mtp", "critic-wmtp", "rho1-wmtp"]
    )
    assert "3 seed(s)" in studio("quickstart", "--seeds", "3").stdout
    every = json.loads(studio("quickstart", "--all-algorithms", "--json").stdout)
    assert sorted(r["algorithm"] for r in every if r["comparison_set_id"] is not None) == sorted(
        QUICKSTART_ALL_ALGORITHMS
    )


def test_cancel_retry_priority_and_show(studio: Any) -> None:
    studio("compare", str(RECIPES / "tiny-rho1-wmtp.yaml"), "--algorithms", "ntp,rho1-wmtp")
    ntp = next(r for r in runs_json(studio) if r["algorithm"] == "ntp")
    rid = str(ntp["id"])
    assert studio("cancel", rid).stdout.strip() == f"run {rid}: cancelled"
    assert runs_json(studio, "--status", "cancelled")[0]["id"] == ntp["id"]
    assert "already cancelled" in studio("cancel", rid, code=2).stderr
    assert studio("retry", rid).stdout.strip() == f"run {rid}: queued"
    assert "only failed or cancelled runs can be retried" in studio("retry", rid, code=2).stderr
    studio("priority", rid, "7")
    assert {r["id"]: r["priority"] for r in runs_json(studio)}[ntp["id"]] == 7

    shown = studio("show", rid).stdout
    assert f"run {rid}: tiny-ntp-s0 (ntp, seed 0)" in shown
    assert 'algorithm.name: "rho1-wmtp" -> "ntp"' in shown
    # a relative reference that exists where the set was submitted is made absolute there
    assert re.search(r'algorithm.reference: "\S*runs/tiny-ntp/model" -> null', shown)
    details = json.loads(studio("show", rid, "--json").stdout)
    assert details["diff"]["name"] == ["tiny-rho1-wmtp", "tiny-ntp-s0"]
    assert details["recipe"]["algorithm"] == {"name": "ntp"}
    assert (details["status"], details["priority"], details["latest_metrics"], details["evaluations"]) == (
        "queued",
        7,
        {},
        [],
    )


def test_db_upgrade_workers_and_help(studio: Any) -> None:
    first = studio("db", "upgrade").stdout
    assert "(head)" in first and studio("db", "upgrade").stdout == first  # idempotent
    assert json.loads(studio("workers", "--json").stdout) == []
    assert "no workers registered" in studio("workers").stdout
    help_text = studio("--help").stdout  # (no arguments opens the dashboard: tests/tui)
    for command in (
        "submit",
        "compare",
        "quickstart",
        "runs",
        "show",
        "cancel",
        "retry",
        "priority",
        "workers",
        "db",
        "serve",
    ):
        assert command in help_text
