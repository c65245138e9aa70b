"""The store's dashboard reads on a real SQLite file."""

from __future__ import annotations

from pathlib import Path

from wmtp_studio import store
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.metrics import MetricLine

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_points_since_is_ordered_paged_by_whole_lines_and_per_run(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    store.upgrade(engine=engine)
    recipe = load_recipe(RECIPES / "tiny-ntp.yaml", [])
    with store.submission(engine=engine, runs_dir=tmp_path / "runs") as sub:
        a, b = (sub.add_run(recipe=recipe) for _ in range(2))
    assert a.id is not None and b.id is not None
    lines = [
        MetricLine(seq=0, step=0, time=0.0, kind="event", event="start"),
        MetricLine(seq=1, step=5, time=1.0, kind="train", metrics={"loss": 3.0, "lr": 0.1}),
        MetricLine(seq=2, step=10, time=2.0, kind="train", metrics={"loss": 2.5, "lr": 0.2}),
        MetricLine(seq=3, step=10, time=3.0, kind="val", metrics={"val_loss": 2.75}),
    ]
    store.ingest_metric_lines(engine=engine, run_id=a.id, lines=lines)
    store.ingest_metric_lines(engine=engine, run_id=b.id, lines=lines[:2])
    page = store.points_since(engine=engine, run_id=a.id, after_seq=-1)
    rows = page.points
    assert not page.more and rows == [
        (1, "train/loss", 5, 3.0),
        (1, "train/lr", 5, 0.1),
        (2, "train/loss", 10, 2.5),
        (2, "train/lr", 10, 0.2),
        (3, "val/val_loss", 10, 2.75),
    ]
    assert rows[0].name == "train/loss" and rows[-1].value == 2.75
    assert store.points_since(engine=engine, run_id=a.id, after_seq=1, limit=3) == store.PointPage(
        rows[2:5], False
    )
    # a page never splits a line: 3 points would cut seq 2 after train/loss, so the page stops after seq 1
    assert store.points_since(engine=engine, run_id=a.id, after_seq=-1, limit=3) == store.PointPage(
        rows[:2], True
    )
    # a line longer than the limit comes whole
    assert store.points_since(engine=engine, run_id=a.id, after_seq=-1, limit=1) == store.PointPage(
        rows[:2], True
    )
    assert store.points_since(engine=engine, run_id=a.id, after_seq=3).points == []
    assert len(store.points_since(engine=engine, run_id=b.id, after_seq=-1).points) == 2
    lr = store.points_since(engine=engine, run_id=a.id, after_seq=-1, names=["train/lr"], limit=1)
    assert lr == store.PointPage([rows[1]], True)


def test_latest_metrics_is_the_newest_point_per_name(tmp_path: Path) -> None:
    engine = store.make_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    store.upgrade(engine=engine)
    with store.submission(engine=engine, runs_dir=tmp_path / "r") as sub:
        run = sub.add_run(recipe=load_recipe(RECIPES / "tiny-ntp.yaml"))
    lines = [
        MetricLine(seq=0, step=5, time=0.0, kind="train", metrics={"loss": 3.0, "lr": 1e-3}),
        MetricLine(seq=1, step=10, time=0.0, kind="train", metrics={"loss": 2.0}),
        MetricLine(seq=2, step=10, time=0.0, kind="val", metrics={"loss": 2.5}),
    ]
    store.ingest_metric_lines(engine=engine, run_id=run.id or 0, lines=lines)
    latest = store.latest_metrics(engine=engine, run_id=run.id or 0)
    assert {n: (p.seq, p.step, p.value) for n, p in latest.items()} == {
        "train/loss": (1, 10, 2.0),
        "train/lr": (0, 5, 1e-3),
        "val/loss": (2, 10, 2.5),
    }
    assert store.latest_metrics(engine=engine, run_id=999) == {}


def test_runs_table_pass1_is_the_runs_own_task_not_humaneval(tmp_path: Path) -> None:
    from wmtp_studio.models import Evaluation

    engine = store.make_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    store.upgrade(engine=engine)
    recipe = load_recipe(RECIPES / "tiny-ntp.yaml")
    with store.submission(engine=engine, runs_dir=tmp_path / "r") as sub:
        both, only_he = (sub.add_run(recipe=recipe) for _ in range(2))
    assert both.id is not None and only_he.id is not None

    def evaluation(run_id: int, benchmark: str, value: float) -> Evaluation:
        return Evaluation(
            run_id=run_id, benchmark=benchmark, k=1, pass_at_k=value, ci_low=0, ci_high=1, n_problems=1
        )

    # HumanEval recorded first (e.g. listed first in the recipe, or the held-out score came from a later eval)
    store.record_evaluation(engine=engine, evaluation=evaluation(both.id, "humaneval", 0.0))
    store.record_evaluation(engine=engine, evaluation=evaluation(both.id, "generated:compose:100", 0.71))
    store.record_evaluation(engine=engine, evaluation=evaluation(only_he.id, "humaneval", 0.05))
    pass1 = {o.run.id: o.pass_at_1 for o in store.runs_overview(engine=engine)}
    assert pass1 == {both.id: 0.71, only_he.id: 0.05}
