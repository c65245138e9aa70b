"""Connecting to the studio database and migrating it; the reads and writes themselves are in store.py.

SQLite (the embedded default) runs in WAL mode with a 30 s busy timeout, and write transactions start with
`BEGIN IMMEDIATE`: a writer takes the lock up front and waits for it, instead of failing with "database is
locked" when a deferred transaction upgrades its read lock. PostgreSQL is used by URL
(`postgresql+psycopg://user@host/db`). The schema history lives in migrations/ (installed as wmtp_studio.migrations).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from wmtp_studio import models  # noqa: F401 - registers the tables on SQLModel.metadata
from wmtp_studio.errors import StudioError

# The top-level migrations/ folder is installed as the package wmtp_studio.migrations (see pyproject.toml).
MIGRATIONS = Path(importlib.util.find_spec("wmtp_studio.migrations").origin or "").parent  # type: ignore[union-attr]
_WRITE = "wmtp_write"  # execution option that makes SQLite start the transaction with BEGIN IMMEDIATE


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get WAL, busy_timeout, foreign keys and BEGIN IMMEDIATE for writes."""
    if not url.startswith("sqlite"):
        return sa.create_engine(url, pool_pre_ping=True)
    path = sa.make_url(url).database
    if path and path != ":memory:":  # a first start creates the studio home
        Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"timeout": 30.0})

    @sa.event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves; pysqlite's own BEGIN is always deferred
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA busy_timeout = 30000")
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")  # in WAL mode still durable across process crashes
        cur.execute("PRAGMA foreign_keys = ON")
        cur.close()

    @sa.event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITE) else "BEGIN")

    return engine


@contextmanager
def write_session(engine: Engine) -> Iterator[Session]:
    """A session in one write transaction (committed on exit); for store.py only."""
    with Session(engine.execution_options(**{_WRITE: True}), expire_on_commit=False) as s, s.begin():
        yield s


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reads; its rows stay usable after it closes. For store.py only."""
    with Session(engine, expire_on_commit=False) as s:
        yield s


def upgrade(*, engine: Engine) -> None:
    """Bring the database to the newest migration (alembic `upgrade head`); safe to call from every process."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with engine.execution_options(**{_WRITE: True}).begin() as conn:
        if (
            conn.dialect.name == "postgresql"
        ):  # serialize concurrent upgrades (studio and workers start together)
            conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7262001)")
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


def check_models_match_migrations(*, engine: Engine) -> None:
    """Raise StudioError if the tables of models.py differ from the database that `upgrade()` produced."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    if diff:
        lines = "\n".join(f"  {d}" for d in diff)
        raise StudioError(f"models.py and the migrations differ; add an alembic revision:\n{lines}")
