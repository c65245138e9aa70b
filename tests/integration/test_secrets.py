"""Secret hygiene, end to end: a sentinel secret in the environment of the CLI and the worker, used by a recipe
through `${VAR}`, never appears in any byte of the studio database, the queue, the MLflow store, the run
directories (logs, metrics, checkpoints, recipe.json) or the worker's log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import RECIPES, ROOT
from wmtp_studio import store

pytestmark = pytest.mark.slow

STUDIO = "from wmtp_studio.studio_cli import studio_main; studio_main()"
WORKER = "from workers.daemon import main; main()"
VAR = "WMTP_TEST_SECRET_TOKEN"


def files_holding(needle: bytes, *roots: Path) -> list[str]:
    return [
        str(p) for root in roots for p in sorted(root.rglob("*")) if p.is_file() and needle in p.read_bytes()
    ]


def test_a_secret_from_the_environment_is_never_stored(tmp_path: Path) -> None:
    sentinel = f"sentinel-{uuid.uuid4().hex}"
    home, mlflow_dir = tmp_path / "home", tmp_path / "mlflow"
    mlflow_dir.mkdir()
    uri = f"sqlite:///{mlflow_dir / 'mlflow.db'}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WMTP_")} | {
        "WMTP_HOME": str(home),
        "WMTP_MLFLOW_URI": uri,
        "HF_HUB_OFFLINE": "1",
        VAR: sentinel,
    }
    # The trainer's own MLflow logging is asked for too: under the studio the worker forwards instead.
    recipe = tmp_path / "secret.yaml"
    tracking = f"tracking: {{mlflow_uri: '{uri}', run_name: '${{{VAR}}}', experiment: 'trainer-own'}}\n"
    recipe.write_text((RECIPES / "tiny-ntp.yaml").read_text() + tracking)
    sets = ["data.generated.num_train=300", "train.steps=6", "train.batch_size=16", "eval.benchmarks=[]"]
    out = subprocess.run(
        [sys.executable, "-c", STUDIO, "submit", str(recipe), *[x for s in sets for x in ("--set", s)]],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert sentinel not in out.stdout + out.stderr
    run_id = int(out.stdout)

    engine = store.make_engine(f"sqlite:///{home / 'studio.db'}")
    log_path = tmp_path / "worker.log"
    with open(log_path, "wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-c", WORKER, "--cpu", "--poll-s", "0.2"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while not ((run := store.get_run(engine=engine, run_id=run_id)) and run.mlflow_done):
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.5)
        # the secret was really there: in the worker's environment, which its trainer inherits
        assert sentinel.encode() in Path(f"/proc/{worker.pid}/environ").read_bytes()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0, log_path.read_text()[-3000:]
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()

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
    assert files_holding(sentinel.encode(), home, mlflow_dir, log_path.parent) == []
    assert f"${{{VAR}}}" in (Path(run.run_dir) / "recipe.json").read_text()  # kept as a reference
