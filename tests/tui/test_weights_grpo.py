"""The Weights tab draws grpo-wmtp's group reward statistics, from a real metric stream of a tiny grpo run (the
comment task of tests/integration/test_grpo_refresh.py, 30 steps, refreshes after steps 10 and 20), and only for
runs that write them."""

from __future__ import annotations

import pytest

from tests.tui.conftest import until
from tests.tui.test_run_screen import chart, new_run, points, run_app, stream
from wmtp_studio.tui.context import StudioContext

pytestmark = pytest.mark.anyio


async def test_weights_tab_draws_the_group_reward_stats_of_a_grpo_run(ctx: StudioContext) -> None:
    run = new_run(ctx, "grpo-wmtp", stream("grpo-wmtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await until(
            pilot, lambda: len(points(app, "chart-grpo", "reward mean")) == 15, "the group reward curve"
        )
        assert points(app, "chart-grpo", "reward mean") == list(range(2, 31, 2))  # the stream's train lines
        means = chart(app, "chart-grpo").drawn["reward mean"][1]
        # the data's own groups: 36 of 53 completions correct; the refresh after step 10 labelled 25 of its
        # 32 samples correct (8 prompts x 4), the one after step 20 23 of 32
        assert means[0] == pytest.approx(36 / 53) and means[5] == pytest.approx(25 / 32)
        assert means[-1] == pytest.approx(23 / 32)
        zero = chart(app, "chart-grpo").drawn["zero-variance groups"][1]
        assert zero[5] == pytest.approx(3 / 8) and zero[-1] == pytest.approx(2 / 8)
        assert chart(app, "chart-grpo").display and not chart(app, "chart-ev2").display


async def test_weights_tab_hides_the_group_reward_chart_of_other_runs(ctx: StudioContext) -> None:
    run = new_run(ctx, "baseline-mtp", stream("baseline-mtp"))
    app = run_app(ctx, run.id or 0)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("2")
        await until(pilot, lambda: bool(points(app, "chart-std", "head1")), "the weight std curve")
        assert not chart(app, "chart-grpo").display and not chart(app, "chart-grpo").drawn
