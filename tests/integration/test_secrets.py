"""Secret hygiene, end to end: a sentinel secret in the environment of the CLI and the worker, used by a recipe
through `${VAR}`, never appears in any byte of the studio database, the queue, the MLflow store, the run
directories (logs, metrics, checkpoints, recipe.json) or the worker's log."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import RECIPES
from tests.integration.jobs import studio_run
from tests.integration.test_e2e import studio_env_with_mlflow, worker_until
from wmtp_studio import store

pytestmark = pytest.mark.slow

VAR = "WMTP_TEST_SECRET_TOKEN"


def files_holding(needle: bytes, root: Path) -> list[str]:
    return [str(p) for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()]


def test_a_secret_from_the_environment_is_never_stored(tmp_path: Path) -> None:
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    env = studio_env_with_mlflow(tmp_path) | {VAR: sentinel}
    home, mlflow_dir, uri = Path(env["WMTP_HOME"]), tmp_path / "mlflow", env["WMTP_MLFLOW_URI"]
    mlflow_dir.mkdir()
    # The trainer's own MLflow logging is asked for too: under the studio the worker forwards instead.
    recipe = tmp_path / "secret.yaml"
    tracking = f"tracking: {{mlflow_uri: '{uri}', run_name: '${{{VAR}}}', experiment: 'trainer-own'}}\n"
    recipe.write_text((RECIPES / "tiny-ntp.yaml").read_text() + tracking)
    sets = ["data.generated.num_train=300", "train.steps=6", "train.batch_size=16", "eval.benchmarks=[]"]
    out = studio_run(env, "submit", str(recipe), *[x for s in sets for x in ("--set", s)])
    assert out.returncode == 0, out.stderr
    assert sentinel not in out.stdout + out.stderr
    run_id = int(out.stdout)

    engine = store.make_engine(env["WMTP_DATABASE_URL"])
    log_path = tmp_path / "worker.log"

    def forwarded() -> bool:
        run = store.get_run(engine=engine, run_id=run_id)
        return run is not None and run.mlflow_done

    with worker_until(env, forwarded, log_path, timeout=240) as pid:
        # the secret was really there: in the worker's environment, which its trainer inherits
        assert sentinel.encode() in Path(f"/proc/{pid}/environ").read_bytes()
    run = store.get_run(engine=engine, run_id=run_id)
    assert run is not None
    assert run.status == "succeeded", log_path.read_text()[-3000:]
    client = MlflowClient(tracking_uri=uri)
    assert client.get_experiment_by_name("trainer-own") is None  # no double logging under the studio
    assert client.get_run(run.mlflow_run_id or "").data.params["n_heads_trained"] == "1"
    scanned = [
        home / "studio.db",
        home / "queue.db",
        Path(run.run_dir) / "train.log",
        mlflow_dir / "mlflow.db",
    ]
    assert all(p.is_file() for p in scanned)
    assert files_holding(sentinel.encode(), tmp_path) == []  # the homes, the MLflow store and the worker log
    assert f"${{{VAR}}}" in (Path(run.run_dir) / "recipe.json").read_text()  # kept as a reference
