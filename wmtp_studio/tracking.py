"""MLflow logging: params from an allow-list, metrics in batches, artifacts; never fatal to training.

If the tracking server cannot be reached, a warning is printed and the run continues without MLflow (the
metrics stay in metrics.jsonl, from which the studio can catch up later).

`wmtp train` logs by itself when `tracking.mlflow_uri` is set. Under the studio the worker forwards the stored
metrics (workers/mlflow_sync.py) and launches the trainer with `WMTP_TRAINER_MLFLOW=off`, so nothing is logged twice.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from wmtp_studio.recipe import Recipe, recipe_from_json

log = logging.getLogger(__name__)

TRAINER_MLFLOW_ENV = "WMTP_TRAINER_MLFLOW"
"""Set to `off` in the trainer's environment when something else forwards its metrics to MLflow."""

# Recipe fields that become MLflow params. Paths and ${VAR}-substituted values stay out (they may hold secrets).
PARAM_ALLOW_LIST = (
    "name",
    "model.n_heads",
    "model.heads",
    "model.head_coefficients",
    "model.dtype",
    "model.tiny",
    "tokenizer.kind",
    "tokenizer.vocab_size",
    "data.source",
    "data.generated",
    "data.max_examples",
    "train.steps",
    "train.epochs",
    "train.batch_size",
    "train.grad_accum",
    "train.seq_len",
    "train.packing",
    "train.loss_on",
    "train.seed",
    "train.grad_clip",
    "train.mixed_precision",
    "train.parallel",
    "train.freeze",
    "train.ce_chunk",
    "optim",
    "algorithm",
)
_SECRET_FREE_ALGO_KEYS = {"reference"}  # a reference path is shown by name only


def allowed_params(recipe: Recipe) -> dict[str, str]:
    """Flat `section.field` -> string params for the allow-listed recipe fields. Pass the recipe as stored (its
    secret-looking `${VAR}` references unresolved), not the trainer's resolved one."""
    dumped = recipe.model_dump(mode="json")
    out: dict[str, str] = {}

    def flatten(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                flatten(f"{prefix}.{k}", v)
        else:
            out[prefix] = str(value)

    for key in PARAM_ALLOW_LIST:
        node: Any = dumped
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and key == "algorithm":
            node = {k: v for k, v in node.items() if k not in _SECRET_FREE_ALGO_KEYS}
        flatten(key, node)
    out["n_heads_trained"] = str(recipe.n_heads)
    return out


def artifact_location(uri: str) -> str | None:
    """Experiments' artifacts go beside a `sqlite:` tracking database (MLflow would otherwise write ./mlruns in
    the current directory); None lets a tracking server or a file store choose."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).resolve().parent / "mlflow-artifacts").as_uri()


class MlflowLogger:
    """One MLflow run; metrics are buffered and sent with log_batch."""

    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id
        self.buffer: list[Any] = []
        self.last_flush = time.monotonic()

    @classmethod
    def start(cls, recipe: Recipe, run_dir: Path) -> MlflowLogger | None:
        """A run at `recipe.tracking.mlflow_uri` (resolved); everything logged comes from the stored recipe.json."""
        if os.environ.get(TRAINER_MLFLOW_ENV) == "off":
            log.info("MLflow logging is left to the studio worker (%s=off)", TRAINER_MLFLOW_ENV)
            return None
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient

            frozen = run_dir / "recipe.json"
            stored = recipe_from_json(frozen.read_text(), str(frozen))  # secret references unresolved
            uri, name = recipe.tracking.mlflow_uri or "", stored.tracking.experiment
            client = MlflowClient(tracking_uri=uri)
            exp = client.get_experiment_by_name(name)
            exp_id = exp.experiment_id if exp else client.create_experiment(name, artifact_location(uri))
            run = client.create_run(
                exp_id,
                run_name=stored.tracking.run_name or run_dir.name,
                tags={"wmtp.algorithm": stored.algorithm.name},
            )
            params = [Param(k, v[:6000]) for k, v in allowed_params(stored).items()]
            for i in range(0, len(params), 100):
                client.log_batch(run.info.run_id, params=params[i : i + 100])
            client.log_artifact(run.info.run_id, str(run_dir / "recipe.json"))
            return cls(client, run.info.run_id)
        except Exception as exc:
            log.warning("MLflow unavailable (%s); continuing without it", exc)
            return None

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.buffer += [Metric(k, float(v), ts, step) for k, v in metrics.items()]
        if len(self.buffer) >= 500 or time.monotonic() - self.last_flush > 10:
            self.flush()

    def flush(self) -> None:
        try:
            for i in range(0, len(self.buffer), 1000):
                self.client.log_batch(self.run_id, metrics=self.buffer[i : i + 1000])
        except Exception as exc:
            log.warning("MLflow log_batch failed (%s); metrics remain in metrics.jsonl", exc)
        self.buffer = []
        self.last_flush = time.monotonic()

    def end(self, status: str = "FINISHED") -> None:
        self.flush()
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception as exc:
            log.warning("MLflow set_terminated failed (%s)", exc)
