"""Throw-away databases on the test PostgreSQL server that `.ci/run` starts (WMTP_TEST_POSTGRES_URL)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa

POSTGRES_URL = os.environ.get("WMTP_TEST_POSTGRES_URL")
REDIS_URL = os.environ.get("WMTP_TEST_REDIS_URL")


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """The URL of a new, empty database of its own, dropped afterwards (with any connection left to it)."""
    assert POSTGRES_URL, "WMTP_TEST_POSTGRES_URL is not set"
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    name = f"wmtp_test_{secrets.token_hex(6)}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield sa.make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
