"""Non-finite losses are skipped and counted and abort the run; nothing non-finite is checkpointed; MLflow."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.integration.conftest import lines, make_run
from wmtp_studio.errors import TrainingAborted
from wmtp_studio.train import checkpoint as ckpt
from wmtp_studio.train.loop import train


def test_nonfinite_losses_abort_after_k_in_a_row_and_no_nan_is_checkpointed(tmp_path: Path) -> None:
    # lr 1e30 turns the weights into inf/NaN after the first update; every later step is non-finite.
    run = make_run(
        tmp_path / "r",
        "tiny-ntp.yaml",
        "train.steps=20",
        "optim.lr=1e30",
        "optim.warmup_steps=0",
        "train.max_nonfinite=3",
        "train.checkpoint_every=1",
    )
    with pytest.raises(TrainingAborted, match="3 consecutive steps"):
        train(run)
    stream = lines(run)
    nonfinite = [m for m in stream if m["event"] == "nonfinite"]
    assert [m["data"]["streak"] for m in nonfinite][-3:] == [1, 2, 3]
    assert stream[-1]["event"] == "error" and "consecutive" in stream[-1]["data"]["message"]
    latest = ckpt.latest_checkpoint(run)
    if latest is not None:  # whatever was published is finite
        weights = load_file(str(latest / "model" / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (run / "model").exists()


def test_mlflow_receives_allow_listed_params_and_batched_metrics(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = make_run(
        tmp_path / "r",
        "tiny-baseline-mtp.yaml",
        "train.steps=6",
        f"tracking.mlflow_uri={uri}",
        "tracking.experiment=guards",
    )
    assert train(run) == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("guards")
    assert exp is not None
    (mlrun,) = client.search_runs([exp.experiment_id])
    assert mlrun.info.status == "FINISHED"
    assert mlrun.data.params["algorithm.name"] == "baseline-mtp"
    assert mlrun.data.params["n_heads_trained"] == "4"
    assert not any("path" in k or "reference" in k for k in mlrun.data.params)
    history = client.get_metric_history(mlrun.info.run_id, "loss")
    assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
    assert "head3/ce" in mlrun.data.metrics
