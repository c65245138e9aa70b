"""The Weights tab draws grad-wmtp's running score statistics per head, from the real metric stream of a 60-step
tiny-grad-wmtp run (tests/data/metrics/grad-wmtp.jsonl); other algorithms' runs do not show those charts."""

from __future__ import annotations

import pytest

from tests.tui.conftest import until
from tests.tui.test_run_screen import chart, new_run, points, run_app, stream
from wmtp_studio.tui.context import StudioContext

pytestmark = pytest.mark.anyio


async def test_weights_tab_draws_the_score_ema_per_head(ctx: StudioContext) -> None:
    lines = stream("grad-wmtp")
    train = [ln for ln in lines if ln.kind == "train"]
    steps = [float(ln.step) for ln in train]
    assert len(steps) == 12  # a line every 5 steps
    run = new_run(ctx, "grad-wmtp", lines)
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: len(points(app, "chart-score-mu", "head3")) == 12, "the score EMA curves")
        for head in range(4):
            assert points(app, "chart-score-mu", f"head{head}") == steps
            assert points(app, "chart-score-sigma", f"head{head}") == steps
        last = train[-1].metrics
        assert chart(app, "chart-score-mu").drawn["head1"][1][-1] == pytest.approx(last["head1/score_mu"])
        assert chart(app, "chart-score-sigma").drawn["head2"][1][-1] == pytest.approx(
            last["head2/score_sigma"]
        )
        assert chart(app, "chart-score-mu").display and chart(app, "chart-score-sigma").display
        assert not chart(app, "chart-selected").display and not chart(app, "chart-ev2").display


async def test_other_algorithms_hide_the_score_charts(ctx: StudioContext) -> None:
    run = new_run(ctx, "rho1-wmtp", stream("rho1-wmtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: len(points(app, "chart-selected", "head1")) > 0, "the rho1 charts")
        assert not chart(app, "chart-score-mu").display and not chart(app, "chart-score-sigma").display
