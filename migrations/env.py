"""Alembic environment of the studio database, driven from `store.upgrade()` (no alembic.ini needed).

`store.upgrade(engine)` passes an open connection in `config.attributes["connection"]`. To make a new revision
after changing models.py, from the repository root:

    python -m wmtp_studio.migrations revision -m "what changed"
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

from wmtp_studio import models

config = context.config


def render_item(kind: str, obj: Any, autogen: AutogenContext) -> str | Literal[False]:
    """Write our column types as plain SQLAlchemy ones, so that revisions never import models.py."""
    if kind == "type" and isinstance(obj, AutoString):
        return f"sa.String(length={obj.length})" if obj.length else "sa.String()"
    if kind == "type" and isinstance(obj, models.UTCDateTime):
        return "sa.DateTime(timezone=True)"
    return False


connection = config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=SQLModel.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
