"""Fault injection against real studio processes: a studio home per test, `wmtp-worker` and trainer
subprocesses, tiny CPU recipes (seconds per run). Only the faulted process is killed; everything else is real."""

from __future__ import annotations

from tests.integration.conftest import wmtp_home  # noqa: F401 - the shared tokenizer cache fixture
from tests.integration.studio_fixtures import engine, env, worker  # noqa: F401 - fixtures
