"""MLflow forwarding from the store (wmtp_studio.workers.mlflow_sync) with a real trainer and real MLflow stores: a tracking
server that cannot be reached never fails the job and is reported once; a later catch-up to a real MLflow store
(SQLite in a temp dir) sends every stored point exactly once, with params, evaluations and artifacts."""

from __future__ import annotations

import json
import logging
import socket
from collections import Counter
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import Engine

from tests.evaluations import first_solved, greedy_pass1
from tests.integration.conftest import FAST, RECIPES
from wmtp_studio import store
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.metrics import MetricLine
from wmtp_studio.tracking import allowed_params
from wmtp_studio.workers import mlflow_sync
from wmtp_studio.workers.supervise import supervise

pytestmark = pytest.mark.slow


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    eng = store.make_engine(f"sqlite:///{tmp_path / 'studio.db'}")
    store.upgrade(engine=eng)
    return eng


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_mlflow_never_fails_the_job_and_is_caught_up_exactly_once(
    engine: Engine, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    overrides = [*FAST, "train.steps=12", "eval.benchmarks=[generated:basic:10]", "eval.k=[1]"]
    recipe = load_recipe(RECIPES / "tiny-ntp.yaml", overrides)
    with store.submission(engine=engine, runs_dir=tmp_path / "runs") as sub:
        sub.add_run(recipe=recipe)
    run = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30)
    assert run is not None and run.id is not None
    down = mlflow_sync.Forwarder(
        engine=engine, uri=f"http://127.0.0.1:{closed_port()}", min_interval_s=0.1, catch_up_s=0.3
    )
    with caplog.at_level(logging.INFO, logger="wmtp_worker.mlflow"):
        down.start()
        outcome = supervise(engine=engine, run=run, owner="w", token=run.fencing_token, poll_s=0.2)
        down.stop()
    assert outcome.status == "succeeded", outcome.error_tail
    reports = [r for r in caplog.records if r.name == "wmtp_worker.mlflow"]
    assert [r.levelname for r in reports] == ["WARNING"]  # once, however many batches and passes failed
    row = store.get_run(engine=engine, run_id=run.id)
    assert row is not None and (row.mlflow_run_id, row.mlflow_synced_seq, row.mlflow_done) == (
        None,
        -1,
        False,
    )

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    (tmp_path / "mlflow").mkdir()
    points = store.points_since(engine=engine, run_id=run.id, after_seq=-1).points
    up = mlflow_sync.Forwarder(engine=engine, uri=uri)
    assert up.sync_pending() == len(points) > 0
    assert up.sync_pending() == 0  # nothing is sent twice
    assert store.runs_to_sync(engine=engine) == []
    row = store.get_run(engine=engine, run_id=run.id)
    assert row is not None and row.mlflow_run_id is not None and row.mlflow_done
    assert row.mlflow_synced_seq == points[-1].seq

    client = MlflowClient(tracking_uri=uri)
    # a batch sent again (e.g. a timeout after the server stored it) has the same timestamps: deduplicated
    mlflow_sync._forward_points(
        client, engine, row.model_copy(update={"mlflow_synced_seq": -1}), row.mlflow_run_id
    )
    counts = Counter(p.name for p in points)
    assert counts["train/loss"] == 12  # train.log_every=1
    for name, n in counts.items():
        history = client.get_metric_history(row.mlflow_run_id, mlflow_sync.metric_key(name))
        assert len(history) == n, name
    losses = {m.step: m.value for m in client.get_metric_history(row.mlflow_run_id, "train/loss")}
    assert losses == {p.step: p.value for p in points if p.name == "train/loss"}

    mrun = client.get_run(row.mlflow_run_id)
    assert mrun.info.status == "FINISHED" and mrun.info.run_name == row.name
    assert mrun.data.params == allowed_params(recipe)
    assert mrun.data.tags["wmtp.run_id"] == str(run.id) and mrun.data.tags["wmtp.algorithm"] == "ntp"
    (ev,) = store.list_evaluations(engine=engine, run_id=run.id)
    assert mrun.data.metrics["eval/generated:basic:10/pass_at_1"] == ev.pass_at_k
    assert mrun.data.metrics["eval/generated:basic:10/pass_at_1/ci_high"] == ev.ci_high
    assert client.get_experiment(mrun.info.experiment_id).name == mlflow_sync.NO_SET_EXPERIMENT
    assert {a.path for a in client.list_artifacts(row.mlflow_run_id)} == {"recipe.json", "eval"}
    results, samples = client.list_artifacts(row.mlflow_run_id, "eval/0-generated_basic_10")
    assert results.path.endswith("results.json") and samples.path.endswith("samples.jsonl")
    got = Path(client.download_artifacts(row.mlflow_run_id, samples.path, str(tmp_path)))
    verdicts = [json.loads(line) for line in got.read_text().splitlines()]
    assert len(verdicts) == 10 and all(v["passed"] or v["detail"] for v in verdicts)  # each failure says why
    local = Path(client.download_artifacts(row.mlflow_run_id, "recipe.json", str(tmp_path)))
    assert local.read_text() == row.recipe_json
    # artifacts beside the tracking database, not in the current directory
    assert mrun.info.artifact_uri.startswith((tmp_path / "mlflow" / "mlflow-artifacts").as_uri())


def _lines(first_seq: int, steps: range, per_line: int) -> list[MetricLine]:
    """train lines of `per_line` scalars each, with an event line (no points) between them."""
    out, seq = [], first_seq
    for step in steps:
        metrics = {f"m{i}": float(step * 100 + i) for i in range(per_line)}
        out.append(MetricLine(seq=seq, step=step, time=0.0, kind="train", metrics=metrics))
        out.append(MetricLine(seq=seq + 1, step=step, time=0.0, kind="event", event="checkpoint"))
        seq += 2
    return out


def test_batches_of_whole_lines_a_set_experiment_and_a_retried_run(engine: Engine, tmp_path: Path) -> None:
    recipe = load_recipe(RECIPES / "tiny-ntp.yaml", FAST)
    with store.submission(engine=engine, runs_dir=tmp_path / "runs") as sub:
        cset = sub.add_comparison_set(name="tiny", base=recipe, factor="seed", diff={})
        sub.add_run(recipe=recipe, comparison_set_id=cset.id)
    run = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30)
    assert run is not None and run.id is not None
    # 1200 lines of 3 points: 3600 points, more than one log_batch; a batch holds whole lines only
    store.ingest_metric_lines(engine=engine, run_id=run.id, lines=_lines(0, range(1, 1201), 3))
    page = store.points_since(engine=engine, run_id=run.id, after_seq=-1, limit=1000)
    batch = page.points
    assert (
        page.more
        and len(batch) == 999
        and batch[-1].seq == 2 * 332
        and {p.name for p in batch[-3:]} == {"train/m0", "train/m1", "train/m2"}
    )
    store.finish_run(engine=engine, run_id=run.id, owner="w", token=run.fencing_token, status="failed")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    forwarder = mlflow_sync.Forwarder(engine=engine, uri=uri)
    assert forwarder.sync_pending() == 3600
    client = MlflowClient(tracking_uri=uri)
    row = store.get_run(engine=engine, run_id=run.id)
    assert row is not None and row.mlflow_done and row.mlflow_run_id is not None
    exp = client.get_experiment_by_name(f"wmtp/set-{cset.id}-tiny")
    assert exp is not None
    # the set's experiment: the run, and the set's comparison on a parent run the run hangs under
    found = client.search_runs([exp.experiment_id])
    (parent,) = [m for m in found if "wmtp.comparison" in m.data.tags]
    assert [m.info.run_id for m in found if m is not parent] == [row.mlflow_run_id]
    assert client.get_run(row.mlflow_run_id).data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert client.get_run(row.mlflow_run_id).info.status == "FAILED"

    store.retry_run(engine=engine, run_id=run.id)  # retried: it runs on and succeeds this time
    again = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30)
    assert again is not None and again.id == run.id
    store.ingest_metric_lines(engine=engine, run_id=run.id, lines=_lines(2400, range(1201, 1211), 3))
    store.finish_run(engine=engine, run_id=run.id, owner="w", token=again.fencing_token, status="succeeded")
    assert forwarder.sync_pending() == 30 and forwarder.sync_pending() == 0
    assert client.get_run(row.mlflow_run_id).info.status == "FINISHED"
    history = client.get_metric_history(row.mlflow_run_id, "train/m2")
    assert sorted(m.step for m in history) == list(range(1, 1211))  # each point exactly once


def test_a_quickstart_set_is_one_experiment_with_its_comparison_on_a_parent_run(tmp_path: Path) -> None:
    from wmtp_studio.settings import Settings
    from wmtp_studio.submit import submit_quickstart

    settings = Settings.from_env({"WMTP_HOME": str(tmp_path / "home")})
    engine = store.make_engine(settings.database_url)
    store.upgrade(engine=engine)
    cset, runs = submit_quickstart(engine=engine, settings=settings)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    forwarder = mlflow_sync.Forwarder(engine=engine, uri=uri)
    # held-out pass@1 on 10 problems, greedy (one sample each): the problems each run solves
    solved = {"ntp": 6, "baseline-mtp": 4, "critic-wmtp": 7, "rho1-wmtp": 6}
    for _ in runs:
        run = store.claim_next_run(engine=engine, owner="w", gpus_free=0, lease_s=30)
        assert run is not None and run.id is not None
        if run.algorithm in solved and run.comparison_set_id is not None:
            c = solved[run.algorithm]
            evaluation = greedy_pass1(run.id, first_solved(c, 10), benchmark="generated:compose:100")
            store.record_evaluation(engine=engine, evaluation=evaluation)
        assert mlflow_sync.log_comparison(engine=engine, client=MlflowClient(uri), run_id=run.id) is None
        store.finish_run(
            engine=engine, run_id=run.id, owner="w", token=run.fencing_token, status="succeeded", exit_code=0
        )
        forwarder.sync_pending()

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(f"wmtp/set-{cset.id}-quickstart")
    assert exp is not None and exp.tags["mlflow.experimentKind"] == "custom_model_development"
    in_exp = client.search_runs([exp.experiment_id])
    assert len(in_exp) == 6  # the base, the 4 fine-tunes and the comparison
    assert client.get_experiment_by_name(mlflow_sync.NO_SET_EXPERIMENT) is None  # the base is not elsewhere
    (parent,) = [r for r in in_exp if r.data.tags.get(mlflow_sync.COMPARISON_TAG) == str(cset.id)]
    children = {r.info.run_id for r in in_exp if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert children == {store.get_run(engine=engine, run_id=r.id or 0).mlflow_run_id for r in runs}  # type: ignore[union-attr]
    m = parent.data.metrics
    key = "generated:compose:100/pass_at_1"
    # paired over the same 10 problems: baseline-mtp solves 4 of ntp's 6 -> (4 - 6) / 10 = -0.2
    assert m[f"{key}/quickstart-baseline-mtp-s0/delta"] == pytest.approx(-0.2)
    assert m[f"{key}/quickstart-critic-wmtp-s0/delta"] == pytest.approx(0.1)  # (7 - 6) / 10
    assert m[f"{key}/quickstart-rho1-wmtp-s0/delta"] == 0.0
    low, high = (m[f"{key}/quickstart-baseline-mtp-s0/delta_ci_{s}"] for s in ("low", "high"))
    assert low <= -0.2 <= high <= 0  # bootstrap over problems: 2 discordant of 10
    # 2 discordant problems, both ntp's: exact two-sided sign test 2 * (1/2)^2 = 0.5
    assert m[f"{key}/quickstart-baseline-mtp-s0/p"] == pytest.approx(0.5)
    assert parent.data.tags[f"wmtp.test.{key}/quickstart-baseline-mtp-s0"] == "exact sign test"
    assert f"{key}/quickstart-rho1-wmtp-s0/p" not in m  # every problem ties: no test
    table = Path(client.download_artifacts(parent.info.run_id, "comparison.md", str(tmp_path))).read_text()
    assert "Δ generated:compose:100 pass@1" in table and "quickstart-ntp-s0" in table
    assert parent.data.tags["wmtp.baseline"].endswith("quickstart-ntp-s0")
    # again (e.g. a run retried and finished once more): the same parent, no second one
    again = mlflow_sync.log_comparison(engine=engine, client=client, run_id=runs[-1].id or 0)
    assert again == parent.info.run_id and len(client.search_runs([exp.experiment_id])) == 6
