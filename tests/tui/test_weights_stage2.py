"""The Weights tab draws critic Stage 2's held-out explained variance and value loss (METHOD.md: logged in Stage 2
too), from a real metric stream of a tiny critic run (tests/unit/test_critic_stage2.py's task, 100 steps)."""

from __future__ import annotations

import pytest

from tests.tui.conftest import until
from tests.tui.test_run_screen import STREAMS, chart, new_run, points, run_app
from wmtp_studio.rundir.metrics import read_metrics
from wmtp_studio.tui.context import StudioContext

pytestmark = pytest.mark.anyio


async def test_weights_tab_draws_the_stage2_explained_variance_curve(ctx: StudioContext) -> None:
    run = new_run(ctx, "critic-wmtp", read_metrics(STREAMS / "critic-wmtp-stage2.jsonl"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: len(points(app, "chart-ev2", "held-out")) == 4, "the stage 2 EV curve")
        assert points(app, "chart-ev2", "held-out") == [25, 50, 75, 100]  # the stream's val steps
        assert chart(app, "chart-ev2").drawn["held-out"][1][-1] == pytest.approx(0.482, abs=1e-3)
        assert points(app, "chart-ev", "held-out") == [25, 50, 75, 100]  # stage 1, its own step counter
        assert points(app, "chart-critic2", "held-out") == [25, 50, 75, 100]
        assert chart(app, "chart-ev2").display and not chart(app, "chart-selected").display
