"""Studio settings from `WMTP_*` environment variables.

One machine needs none of them: everything lives under the studio home (`~/.wmtp`). Several hosts point
`WMTP_DATABASE_URL` at PostgreSQL (`postgresql+psycopg://...`) and `WMTP_QUEUE_URL` at Redis (`redis://...`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict


class Settings(BaseModel):
    """Where the studio keeps its state. Build it with `Settings.from_env()`."""

    model_config = ConfigDict(frozen=True, use_attribute_docstrings=True)

    home: Path
    """`WMTP_HOME`: the studio home (default `~/.wmtp`)."""
    database_url: str
    """`WMTP_DATABASE_URL`: SQLAlchemy URL of the studio database (default `sqlite:///<home>/studio.db`)."""
    queue_url: str
    """`WMTP_QUEUE_URL`: the Huey queue, `sqlite:///<path>` or `redis://...` (default `sqlite:///<home>/queue.db`)."""
    runs_dir: Path
    """`WMTP_RUNS_DIR`: where `runs/<id>/` directories are created (default `<home>/runs`)."""
    mlflow_uri: str
    """`WMTP_MLFLOW_URI`: MLflow tracking URI (default `sqlite:///<home>/mlflow.db`)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read `WMTP_*` variables from `env` (default: the process environment); unset ones get defaults."""
        env = os.environ if env is None else env
        home = Path(env.get("WMTP_HOME") or Path.home() / ".wmtp").expanduser()
        return cls(
            home=home,
            database_url=env.get("WMTP_DATABASE_URL") or f"sqlite:///{home / 'studio.db'}",
            queue_url=env.get("WMTP_QUEUE_URL") or f"sqlite:///{home / 'queue.db'}",
            runs_dir=Path(env.get("WMTP_RUNS_DIR") or home / "runs").expanduser(),
            mlflow_uri=env.get("WMTP_MLFLOW_URI") or f"sqlite:///{home / 'mlflow.db'}",
        )
