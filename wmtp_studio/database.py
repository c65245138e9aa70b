"""Connecting to the studio database and migrating it; the reads and writes themselves are in the store package.

SQLite (the embedded default) runs in WAL mode with a 30 s busy timeout, and write transactions start with
`BEGIN IMMEDIATE`: a writer takes the lock up front and waits for it, instead of failing with "database is
locked" when a deferred transaction upgrades its read lock. PostgreSQL is used by URL
(`postgresql+psycopg://user@host/db`). The schema history lives in migrations/ (installed as wmtp_studio.migrations).
"""

from __future__ import annotations

import errno
import importlib.util
import os
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
        try:
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise database_error(url, exc) from None
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
    """A session in one write transaction (committed on exit); for the store package only."""
    with Session(engine.execution_options(**{_WRITE: True}), expire_on_commit=False) as s, s.begin():
        yield s


@contextmanager
def read_session(engine: Engine) -> Iterator[Session]:
    """A session for reads; its rows stay usable after it closes. For the store package only."""
    with Session(engine, expire_on_commit=False) as s:
        yield s


def upgrade(*, engine: Engine) -> None:
    """Bring the database to the newest migration (alembic `upgrade head`); safe to call from every process."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.execution_options(**{_WRITE: True}).begin() as conn:
            if (
                conn.dialect.name == "postgresql"
            ):  # serialize concurrent upgrades (studio and workers start together)
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7262001)")
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except (sa.exc.OperationalError, sa.exc.DatabaseError) as exc:
        raise database_error(engine.url, exc) from None


def database_file(url: str | sa.URL) -> Path | None:
    """The file of a SQLite database URL (None for other databases and in-memory SQLite)."""
    u = sa.make_url(url)
    if u.get_backend_name() != "sqlite" or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database or "").expanduser().absolute()


def file_identity(url: str | sa.URL) -> tuple[int, int] | None:
    """(device, inode) of a SQLite database file: it changes when the file is deleted or replaced. None when the
    file is missing (and for other databases, which have no file)."""
    path = database_file(url)
    try:
        st = os.stat(path) if path else None
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino) if st else None


def _cause(path: Path, exc: BaseException) -> str:
    """What is wrong with the disk or the file, as far as the file system tells."""
    orig = getattr(exc, "orig", None) or exc
    name = str(getattr(orig, "sqlite_errorname", ""))
    code = getattr(orig, "errno", None)
    folder = next((p for p in (path.parent, *path.parents) if p.exists()), path.parent)
    try:
        fs = os.statvfs(folder)
    except OSError:
        fs = None
    if fs is not None and fs.f_flag & os.ST_RDONLY:
        return f"the file system holding {folder} is mounted read-only"
    if name == "SQLITE_FULL" or code == errno.ENOSPC or (fs is not None and fs.f_bavail == 0):
        free = fs.f_bavail * fs.f_frsize if fs else 0
        return f"the disk holding {folder} is full ({free} bytes free)"
    if name in ("SQLITE_CORRUPT", "SQLITE_NOTADB"):
        return "the file is not a valid SQLite database (corrupted, truncated or overwritten)"
    if not path.parent.exists():
        return f"the folder {path.parent} does not exist and cannot be created"
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        return "no permission to write the file or its folder"
    return "the file cannot be opened or written"


def database_error(url: str | sa.URL, exc: BaseException, what: str = "studio database") -> StudioError:
    """A StudioError naming the database, the cause found on disk and the underlying error."""
    path = database_file(url)
    detail = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__])[0]
    if path is None:
        return StudioError(f"{what} {sa.make_url(url).render_as_string()}: {detail}")
    return StudioError(f"{what} {path}: {_cause(path, exc)} ({detail})")


def check_models_match_migrations(*, engine: Engine) -> None:
    """Raise StudioError if the tables of models.py differ from the database that `upgrade()` produced."""
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    if diff:
        lines = "\n".join(f"  {d}" for d in diff)
        raise StudioError(f"models.py and the migrations differ; add an alembic revision:\n{lines}")
