"""The training loop's one schedule: what is due after each optimiser step."""

from __future__ import annotations

from pathlib import Path

from wmtp_studio.recipe import load_recipe
from wmtp_studio.train.loop import Due, due

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_each_check_fires_at_its_own_steps_and_the_last_step_logs_and_validates() -> None:
    recipe = load_recipe(
        RECIPES / "tiny-ntp.yaml",
        [
            "train.log_every=2",
            "train.hist_every=3",
            "train.top_tokens_every=4",
            "eval.val_every=5",
            "train.checkpoint_every=4",
        ],
    )
    got = {step: due(recipe, step, 7) for step in range(1, 8)}
    assert [s for s, d in got.items() if d.log] == [2, 4, 6, 7]  # every 2nd, and the last (7)
    assert [s for s, d in got.items() if d.hist] == [3, 6]
    assert [s for s, d in got.items() if d.top_tokens] == [4]
    assert [s for s, d in got.items() if d.validate] == [5, 7]
    assert [s for s, d in got.items() if d.checkpoint] == [4]  # the final checkpoint is the loop's own
    assert [s for s, d in got.items() if d.detail] == [3, 4, 6]  # histograms or top tokens
    # a periodic checkpoint never falls on the last step (the final one is written once, after the loop)
    assert due(recipe, 8, 8) == Due(log=True, hist=False, top_tokens=True, validate=True, checkpoint=False)
