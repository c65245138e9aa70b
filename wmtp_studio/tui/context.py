"""What every screen needs: the studio database, the settings and where recipes live.

Screens take a `StudioContext` instead of reaching into the app, so each one can be tested alone under Pilot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from wmtp_studio.settings import Settings


@dataclass(frozen=True)
class StudioContext:
    engine: Engine
    settings: Settings
    recipes_dir: Path | None = None
    """A directory of recipe YAML files shown on the recipes screen (e.g. the checkout's `recipes/`)."""
    poll_s: float = field(default=0.5)
    """How often screens poll the store for new rows."""
