"""Submission on a real SQLite file: `run:N` dependencies, one transaction per call, the quickstart set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from wmtp_studio import store
from wmtp_studio.errors import RecipeError, StudioError
from wmtp_studio.models import ComparisonSet
from wmtp_studio.recipe import Recipe, load_recipe
from wmtp_studio.runrefs import absolutize_local_paths, resolve_run_refs, run_refs
from wmtp_studio.settings import Settings
from wmtp_studio.submit import QUICKSTART_ALGORITHMS, submit_comparison, submit_quickstart, submit_run

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.from_env({"WMTP_HOME": str(tmp_path / "home")})


@pytest.fixture
def engine(settings: Settings) -> Engine:
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine=engine)
    return engine


def rho1(*overrides: str) -> Recipe:
    return load_recipe(RECIPES / "tiny-rho1-wmtp.yaml", list(overrides))


def test_run_refs_are_found_resolved_and_checked(tmp_path: Path) -> None:
    recipe = rho1("algorithm.reference=run:3")
    assert run_refs(recipe) == {3}
    resolved = resolve_run_refs(recipe, tmp_path / "runs")
    assert resolved.algorithm.reference == str((tmp_path / "runs" / "3" / "model").resolve())  # type: ignore[union-attr]
    assert resolved.model.tiny == recipe.model.tiny  # nothing else changes
    with pytest.raises(RecipeError, match=r"reference 'run:three'.*run:N"):
        run_refs(rho1("algorithm.reference=run:three"))


def test_relative_local_paths_become_absolute_hub_ids_do_not(tmp_path: Path) -> None:
    (tmp_path / "models" / "ref").mkdir(parents=True)
    local = absolutize_local_paths(rho1("algorithm.reference=models/ref"), tmp_path)
    assert local.algorithm.reference == str(tmp_path / "models" / "ref")  # type: ignore[union-attr]
    hub = absolutize_local_paths(rho1("algorithm.reference=org/some-model"), tmp_path)
    assert hub.algorithm.reference == "org/some-model"  # type: ignore[union-attr]


def test_a_run_naming_an_earlier_run_waits_for_it(engine: Engine, settings: Settings) -> None:
    base = submit_run(engine=engine, settings=settings, recipe=load_recipe(RECIPES / "tiny-ntp.yaml"))
    child = submit_run(engine=engine, settings=settings, recipe=rho1(f"algorithm.reference=run:{base.id}"))
    assert (child.status, child.depends_on_run_id) == ("waiting", base.id)
    assert (
        json.loads(Path(child.run_dir, "recipe.json").read_text())["algorithm"]["reference"]
        == f"run:{base.id}"
    )
    claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30)
    assert claimed is not None and claimed.id == base.id
    assert (
        store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30) is None
    )  # child still waits
    store.finish_run(
        engine=engine,
        run_id=base.id or 0,
        owner="w",
        token=claimed.fencing_token,
        status="succeeded",
        exit_code=0,
    )
    nxt = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30)
    assert nxt is not None and nxt.id == child.id


def test_unknown_failed_or_several_runs_are_refused_and_nothing_is_stored(
    engine: Engine, settings: Settings
) -> None:
    with pytest.raises(StudioError, match="run:42 names no run"):
        submit_run(engine=engine, settings=settings, recipe=rho1("algorithm.reference=run:42"))
    a = submit_run(engine=engine, settings=settings, recipe=load_recipe(RECIPES / "tiny-ntp.yaml"))
    b = submit_run(engine=engine, settings=settings, recipe=load_recipe(RECIPES / "tiny-ntp.yaml"))
    two = rho1(f"algorithm.reference=run:{a.id}", "model.tiny=null", f"model.name_or_path=run:{b.id}")
    with pytest.raises(StudioError, match="depend on one earlier run only"):
        submit_run(engine=engine, settings=settings, recipe=two)
    store.request_cancel(engine=engine, run_id=a.id or 0)
    with pytest.raises(StudioError, match=f"run {a.id} is cancelled"):
        submit_comparison(
            engine=engine,
            settings=settings,
            recipe=rho1(f"algorithm.reference=run:{a.id}"),
            algorithms=["ntp", "rho1-wmtp"],
            seeds=[0, 1],
        )
    # the set row was added before the first run failed: the whole transaction is gone
    with Session(engine) as s:
        assert s.exec(select(ComparisonSet)).all() == []
    assert [r.id for r in store.list_runs(engine=engine)] == [b.id, a.id]


def test_quickstart_is_a_base_and_four_fine_tunes_depending_on_it(engine: Engine, settings: Settings) -> None:
    cset, runs = submit_quickstart(engine=engine, settings=settings)
    base, tunes = runs[0], runs[1:]
    assert (base.name, base.algorithm, base.status, base.comparison_set_id) == (
        "quickstart-base",
        "ntp",
        "queued",
        None,
    )
    assert [t.algorithm for t in tunes] == list(QUICKSTART_ALGORITHMS)
    assert {(t.status, t.depends_on_run_id, t.comparison_set_id) for t in tunes} == {
        ("waiting", base.id, cset.id)
    }
    for t in tunes:
        frozen = json.loads(Path(t.run_dir, "recipe.json").read_text())
        assert frozen["model"]["name_or_path"] == frozen["tokenizer"]["path"] == f"run:{base.id}"
        assert frozen["data"]["generated"]["family"] == "compose"
        assert frozen["eval"]["benchmarks"] == ["generated:compose:100", "humaneval"]
    assert cset.diff == {"algorithm": list(QUICKSTART_ALGORITHMS), "seed": [0]}


def test_quickstart_with_three_seeds_shares_the_base_and_stores_seed_by_seed(
    engine: Engine, settings: Settings
) -> None:
    cset, runs = submit_quickstart(engine=engine, settings=settings, seeds=3)
    base, tunes = runs[0], runs[1:]
    assert base.name == "quickstart-base" and len(tunes) == 3 * len(QUICKSTART_ALGORITHMS)
    # seed-major: workers take the oldest first, so seed 0's four fine-tunes finish before seed 1 starts
    assert [(t.seed, t.algorithm) for t in tunes] == [
        (s, a) for s in (0, 1, 2) for a in QUICKSTART_ALGORITHMS
    ]
    assert [t.id for t in tunes] == sorted(t.id or 0 for t in tunes)
    assert {(t.depends_on_run_id, t.comparison_set_id) for t in tunes} == {(base.id, cset.id)}
    assert tunes[4].name == "quickstart-ntp-s1"
    assert cset.diff == {"algorithm": list(QUICKSTART_ALGORITHMS), "seed": [0, 1, 2]}


@pytest.mark.parametrize("seeds", [0, -1, 11])
def test_quickstart_refuses_a_seed_count_out_of_range_and_stores_nothing(
    engine: Engine, settings: Settings, seeds: int
) -> None:
    with pytest.raises(StudioError, match=f"quickstart seeds: {seeds} is not between 1 and 10"):
        submit_quickstart(engine=engine, settings=settings, seeds=seeds)
    assert store.list_runs(engine=engine) == []


def test_a_missing_local_reference_is_refused_naming_field_and_path(
    engine: Engine, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    # the README's example: tiny-rho1-wmtp.yaml's default reference, before tiny-ntp was trained here
    with pytest.raises(StudioError) as caught:
        submit_comparison(
            engine=engine, settings=settings, recipe=rho1(), algorithms=["ntp", "rho1-wmtp"], seeds=[0]
        )
    message = str(caught.value)
    assert "algorithm.reference: runs/tiny-ntp/model does not exist" in message
    assert str(tmp_path / "runs" / "tiny-ntp" / "model") in message
    missing_model = rho1(
        "model.tiny=null", f"model.name_or_path={tmp_path / 'nope'}", "algorithm.reference=org/m"
    )
    with pytest.raises(StudioError, match=f"model.name_or_path: {tmp_path / 'nope'} does not exist"):
        submit_run(engine=engine, settings=settings, recipe=missing_model)
    assert store.list_runs(engine=engine) == []  # nothing stored
    with Session(engine) as s:
        assert s.exec(select(ComparisonSet)).all() == []
    # a hub id (name or namespace/name) is not a path; an existing directory is fine
    assert submit_run(engine=engine, settings=settings, recipe=rho1("algorithm.reference=org/some-model")).id
    (tmp_path / "runs" / "tiny-ntp" / "model").mkdir(parents=True)
    run = submit_run(engine=engine, settings=settings, recipe=rho1())
    assert json.loads(run.recipe_json)["algorithm"]["reference"] == str(tmp_path / "runs/tiny-ntp/model")


def test_failure_reason_is_the_last_error_line_of_a_failed_run(engine: Engine, settings: Settings) -> None:
    run = submit_run(engine=engine, settings=settings, recipe=load_recipe(RECIPES / "tiny-ntp.yaml"))
    claimed = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30)
    assert claimed is not None and store.failure_reason(claimed) is None
    tail = "step 5/600 loss 3.2\nerror: quickstart: algorithm.reference: /x/runs/1/model does not exist\n"
    store.finish_run(
        engine=engine,
        run_id=run.id or 0,
        owner="w",
        token=claimed.fencing_token,
        status="failed",
        exit_code=2,
        error_tail=tail,
    )
    failed = store.get_run(engine=engine, run_id=run.id or 0)
    assert failed is not None
    assert store.failure_reason(failed) == "quickstart: algorithm.reference: /x/runs/1/model does not exist"
    crashed = failed.model_copy(update={"error_tail": "Traceback ...\n  File x\nRuntimeError: boom\n\n"})
    assert store.failure_reason(crashed) == "RuntimeError: boom"
