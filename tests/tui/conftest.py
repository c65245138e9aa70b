"""Dashboard test setup: a real studio database in a temp home, stored runs, and a bare app hosting one screen."""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from textual.app import App
from textual.pilot import Pilot
from textual.screen import Screen

from wmtp_studio import store
from wmtp_studio.models import Evaluation, Run
from wmtp_studio.recipe import load_recipe
from wmtp_studio.rundir.metrics import MetricLine
from wmtp_studio.settings import Settings
from wmtp_studio.tui.context import StudioContext

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
FROZEN = datetime(2026, 11, 27, 12, 0, 0, tzinfo=UTC)
"""The clock of tests whose cells show times (ages, ETA)."""


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> None:
    """Every coroutine test here is a Pilot test run by anyio's plugin: mark it while it is collected (before
    anyio's own hook looks for the mark), so that it is parametrised like any other test."""
    if inspect.iscoroutinefunction(obj) and name.startswith("test"):
        pytest.mark.anyio(obj)


@pytest.fixture
def anyio_backend() -> str:
    """Pilot tests are coroutines run by anyio's plugin (`pytestmark = pytest.mark.anyio`), on asyncio only."""
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    home = tmp_path / "home"
    home.mkdir()
    return Settings.from_env({"WMTP_HOME": str(home)})


@pytest.fixture
def engine(settings: Settings) -> Engine:
    eng = store.make_engine(settings.database_url)
    store.upgrade(engine=eng)
    return eng


@pytest.fixture
def ctx(engine: Engine, settings: Settings) -> StudioContext:
    return StudioContext(engine=engine, settings=settings, recipes_dir=RECIPES, poll_s=0.05)


def add_run(
    engine: Engine, settings: Settings, recipe: str = "tiny-ntp.yaml", *overrides: str, **kw: Any
) -> Run:
    """Store a run of a recipe from recipes/ (`kw` goes to `Submission.add_run`, e.g. comparison_set_id)."""
    r = load_recipe(RECIPES / recipe, list(overrides))
    with store.submission(engine=engine, runs_dir=settings.runs_dir) as sub:
        return sub.add_run(recipe=r, **kw)


def add_losses(
    engine: Engine, run_id: int, losses: list[float], *, first_seq: int = 0, step0: int = 5
) -> None:
    """train/loss points at steps step0, 2*step0, ..."""
    lines = [
        MetricLine(
            seq=first_seq + i, step=step0 * (first_seq + i + 1), time=0.0, kind="train", metrics={"loss": v}
        )
        for i, v in enumerate(losses)
    ]
    store.ingest_metric_lines(engine=engine, run_id=run_id, lines=lines)


def add_pass1(engine: Engine, run_id: int, value: float, benchmark: str = "generated") -> None:
    store.record_evaluation(
        engine=engine,
        evaluation=Evaluation(
            run_id=run_id,
            benchmark=benchmark,
            k=1,
            pass_at_k=value,
            ci_low=value - 0.05,
            ci_high=value + 0.05,
            n_problems=200,
        ),
    )


def frozen() -> datetime:
    return FROZEN


def claim(engine: Engine, owner: str = "host:1") -> Run:
    """The best queued run, claimed as a worker would (the lease lasts an hour)."""
    run = store.claim_next_run(engine=engine, owner=owner, gpus_free=0, lease_s=3600)
    assert run is not None
    return run


class ScreenApp(App[None]):
    """A bare app that shows one screen: how each screen is tested alone."""

    def __init__(self, make: Callable[[], Screen[Any]]) -> None:
        super().__init__()
        self.make = make

    def on_mount(self) -> None:
        self.push_screen(self.make())


async def until(pilot: Pilot[Any], cond: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    """Let the app run (its poll timers, workers and redraws) until `cond` holds; fail naming `what` after
    `timeout` seconds (generous: a loaded machine draws late). The one way dashboard tests wait."""
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out after {timeout:g} s waiting for {what}"
        await pilot.pause(0.02)


def choices_shown(app: App[Any]) -> bool:
    """The app shows a ChoiceModal whose options are mounted (the screen is pushed before its compose runs)."""
    from textual.widgets import OptionList

    from wmtp_studio.tui.pickers import ChoiceModal

    return isinstance(app.screen, ChoiceModal) and bool(app.screen.query(OptionList))


def ago(seconds: float) -> datetime:
    return FROZEN - timedelta(seconds=seconds)


async def settle(pilot: Pilot[Any]) -> None:
    """Wait for the app's workers to finish, except the pollers (a new one every tick, older ones cancelled)."""
    app = pilot.app
    await app.workers.wait_for_complete([w for w in app.workers if not w.group.endswith("-poll")])
    await pilot.pause()
