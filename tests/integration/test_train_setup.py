"""The trainer's set-up opens the metrics writer and MLflow first and closes them when a later stage fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.integration.conftest import make_run
from wmtp_studio.errors import StudioError
from wmtp_studio.train.setup import setup


def test_a_set_up_that_fails_on_its_data_marks_the_mlflow_run_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WMTP_TRAINER_MLFLOW", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = make_run(
        tmp_path / "run",
        "tiny-critic-wmtp.yaml",
        "data.generated.incorrect_fraction=0",  # critic needs incorrect examples: _setup_data refuses
        f"tracking.mlflow_uri={uri}",
    )
    with pytest.raises(StudioError, match="is_correct: 0"):
        setup(run, None, record=True)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("wmtp")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert (run / "metrics.jsonl").read_bytes() == b""  # opened first, nothing written, closed
