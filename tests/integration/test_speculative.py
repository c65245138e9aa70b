"""Self-speculative decoding on a really trained tiny MTP model: identical to greedy, and the drafts get accepted."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from tests.integration.conftest import make_run
from wmtp_studio import gentask
from wmtp_studio.evaluate.generate import greedy_decode
from wmtp_studio.evaluate.speculative import self_speculative_decode
from wmtp_studio.train.loop import train
from wmtp_studio.train.model import load_mtp

pytestmark = pytest.mark.slow

# The tiny recipe (4 heads, coefficients 1, 0.5, 0.25, 0.125) for 300 steps, without FAST's every-5-steps extras.
QUIET = (
    "train.steps=300",
    "eval.val_every=1000",
    "train.hist_every=1000",
    "train.top_tokens_every=1000",
    "train.log_every=50",
    "train.checkpoint_every=1000",
)


@pytest.mark.parametrize("heads", ["transformer", "linear"])
def test_self_speculative_equals_greedy_on_a_trained_model(tmp_path: Path, heads: str) -> None:
    run = make_run(tmp_path / "r", "tiny-baseline-mtp.yaml", *QUIET, f"model.heads={heads}")
    assert train(run) == 0
    model = load_mtp(run / "model")
    assert (model.n_heads, model.head_kind) == (4, heads)
    tok = PreTrainedTokenizerFast.from_pretrained(str(run / "model"))
    identical, accepted, eos_endings = 0, [], 0
    for problem in gentask.generate("test", 30):
        greedy, _ = greedy_decode(model, tok, problem.prompt, 64)
        spec, stats = self_speculative_decode(model, tok, problem.prompt, 64)
        identical += spec == greedy
        accepted += stats.accepted_lengths
        eos_endings += greedy[-1] == tok.eos_token_id
    assert identical == 30
    assert eos_endings >= 25  # the model has learnt where a completion ends: real completions were compared
    mean_accepted = sum(accepted) / len(accepted)
    assert mean_accepted > 1.0, mean_accepted
