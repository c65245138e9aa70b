"""End to end, every part real: a tiny comparison set (2 algorithms x 2 seeds) is submitted with the
`wmtp-studio` CLI into a studio home in a temp dir, a `wmtp-worker` process (with its in-process Huey consumer)
trains and evaluates every run, and the metrics and evaluations end up in the studio database and in an MLflow
store (SQLite) in the temp dir: one experiment for the set, one MLflow run per studio run."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import RECIPES
from tests.integration.jobs import start_worker, studio_env, studio_run, wait_for
from wmtp_studio import store
from wmtp_studio.recipe import recipe_from_json
from wmtp_studio.tracking import allowed_params

pytestmark = pytest.mark.slow

TINY = [
    "data.generated.num_train=400",
    "train.steps=12",
    "train.batch_size=16",
    "train.log_every=1",
    "eval.val_every=6",
    "train.hist_every=6",
    "train.top_tokens_every=6",
    "eval.benchmarks=[generated:basic:10]",
    "eval.k=[1]",
    "eval.max_new_tokens=48",
]


def studio_env_with_mlflow(tmp_path: Path) -> dict[str, str]:
    """jobs.studio_env for a home in tmp_path, forwarding to an MLflow store (SQLite) there too."""
    return studio_env(tmp_path / "home") | {
        "WMTP_MLFLOW_URI": f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    }


@contextmanager
def worker_until(
    env: dict[str, str], done: Callable[[], bool], log_path: Path, timeout: float
) -> Iterator[int]:
    """Run a `wmtp-worker --cpu` process until `done()`, yield its pid, then SIGTERM it: it must exit 0."""
    worker = start_worker(env, log_path, "--cpu", "--poll-s", "0.2")
    try:
        wait_for(done, timeout, "the worker to be done", every=0.5, log=log_path)
        yield worker.pid
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_cli_comparison_runs_through_a_worker_into_the_database_and_mlflow(tmp_path: Path) -> None:
    env = studio_env_with_mlflow(tmp_path)
    (tmp_path / "mlflow").mkdir()
    sets = [x for o in TINY for x in ("--set", o)]
    cli = ["compare", str(RECIPES / "tiny-ntp.yaml"), *sets]
    out = studio_run(env, *cli, "--algorithms", "ntp,baseline-mtp", "--seeds", "0,1", "--json")
    assert out.returncode == 0, out.stderr
    ids = [r["id"] for r in json.loads(out.stdout)]
    assert len(ids) == 4

    engine = store.make_engine(env["WMTP_DATABASE_URL"])
    log_path = tmp_path / "worker.log"

    def finished_and_forwarded() -> bool:
        runs = [store.get_run(engine=engine, run_id=i) for i in ids]
        return all(r is not None and r.finished_at is not None and r.mlflow_done for r in runs)

    with worker_until(env, finished_and_forwarded, log_path, timeout=420):
        pass
    runs = [store.get_run(engine=engine, run_id=i) for i in ids]
    assert [r.status if r else None for r in runs] == ["succeeded"] * 4, log_path.read_text()[-3000:]
    client = MlflowClient(tracking_uri=env["WMTP_MLFLOW_URI"])
    (cset_id,) = {r.comparison_set_id for r in runs if r}
    cset = store.get_comparison_set(engine=engine, comparison_set_id=cset_id or 0)
    assert cset is not None
    exp = client.get_experiment_by_name(f"wmtp/set-{cset_id}-{cset.name}")
    assert exp is not None
    found = client.search_runs([exp.experiment_id])
    # one MLflow run per run, and the set's comparison table on one parent run they hang under
    (parent,) = [m for m in found if "wmtp.comparison" in m.data.tags]
    assert parent.data.tags["wmtp.comparison"] == str(cset_id)
    mruns = [m for m in found if m is not parent]
    assert sorted(int(m.data.tags["wmtp.run_id"]) for m in mruns) == sorted(ids)
    assert {m.data.tags["mlflow.parentRunId"] for m in mruns} == {parent.info.run_id}
    by_id = {int(m.data.tags["wmtp.run_id"]): m for m in mruns}
    for run in runs:
        assert run is not None and run.id is not None
        seqs = {p.seq for p in store.points_since(engine=engine, run_id=run.id, after_seq=-1).points}
        seqs |= {b.seq for b in store.metric_blobs_since(engine=engine, run_id=run.id, after_seq=-1)}
        assert sorted(seqs) == list(range(len(seqs))) and len(seqs) > 12  # gapless, from 0
        losses = store.points_since(engine=engine, run_id=run.id, after_seq=-1, names=["train/loss"]).points
        assert [p.step for p in losses] == list(range(1, 13))
        (ev,) = store.list_evaluations(engine=engine, run_id=run.id)
        assert (ev.benchmark, ev.k, ev.n_problems) == ("generated:basic:10", 1, 10)

        mrun = by_id[run.id]
        assert mrun.info.status == "FINISHED" and mrun.info.run_id == run.mlflow_run_id
        assert (mrun.data.tags["wmtp.algorithm"], mrun.data.tags["wmtp.seed"]) == (
            run.algorithm,
            str(run.seed),
        )
        history = client.get_metric_history(mrun.info.run_id, "train/loss")
        assert sorted((m.step, m.value) for m in history) == [(p.step, p.value) for p in losses]
        assert mrun.data.params == allowed_params(recipe_from_json(run.recipe_json, "recipe.json"))
        assert mrun.data.params["algorithm.name"] == run.algorithm
        assert mrun.data.metrics["eval/generated:basic:10/pass_at_1"] == ev.pass_at_k
        assert "recipe.json" in {a.path for a in client.list_artifacts(mrun.info.run_id)}
        forwarded = {a.path for a in client.list_artifacts(mrun.info.run_id, "eval/0-generated_basic_10")}
        assert forwarded == {
            f"eval/0-generated_basic_10/{name}" for name in ("results.json", "samples.jsonl")
        }
