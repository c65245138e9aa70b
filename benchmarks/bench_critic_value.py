"""critic-wmtp value drift: explained variance and mean V on held-out problems at Stage 1's end and after Stage 2.

The tiny task of tests/unit/test_critic_stage2.py (success decided by the first completion token). Two runs of the
same recipe: `stage1_end` (one Stage 2 step with value_coef 0 and lr ~0: the value head as Stage 1 left it) and
`stage2` (N Stage 2 steps). Each final checkpoint's value head is scored here, independently of what the trainer
logs, on the labelled examples of the validation problems (20 %, split over the problems' correct examples as the
trainer's validation split is), so the same script measures any version of the trainer:

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_critic_value.py [--steps 100]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after PYTHONPATH: an older tree can be measured
from tests.unit.test_critic_stage2 import make_critic_run
from wmtp_studio.train.data import encode, load_examples, split_heldout
from wmtp_studio.train.loop import train
from wmtp_studio.train.model import ValueHead, load_mtp


@torch.no_grad()
def score(run: Path) -> dict[str, float]:
    from transformers import AutoTokenizer

    from wmtp_studio.recipe import recipe_from_json

    recipe = recipe_from_json((run / "recipe.json").read_text(), "recipe.json")
    ckpt = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    tok = AutoTokenizer.from_pretrained(ckpt / "model")
    model = load_mtp(str(ckpt / "model"), recipe.n_heads, recipe.model.heads, torch.float32).eval()
    head = ValueHead(model.hidden_size)
    head.load_state_dict(load_file(str(ckpt / "value_head.safetensors")))
    examples = load_examples(recipe.data)
    correct = [e for e in examples if e.is_correct == 1]
    _, held = split_heldout(len(correct), recipe.eval.val_fraction, recipe.train.seed)
    prompts = {correct[i].prompt for i in held}
    chosen = [e for e in examples if e.prompt in prompts]
    vs, rs = [], []
    for enc in encode(chosen, tok, recipe.train.seq_len):
        ids = torch.tensor([enc.ids])
        v = head(model.trunk(ids).hidden)[0]
        first = enc.completion.index(True)  # states s_0 (end of prompt) .. s_{T-1}
        vs.append(v[first - 1 : len(enc.ids) - 1])
        rs.append(torch.full_like(vs[-1], enc.reward))
    v, r = torch.cat(vs).double(), torch.cat(rs).double()
    return {
        "explained_variance": float(1 - (r - v).var(unbiased=False) / r.var(unbiased=False)),
        "mean_v_incorrect": float(v[r == 0].mean()),
        "mean_v_correct": float(v[r == 1].mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = {}
        for name, steps, extra in (
            ("stage1_end", 1, ("algorithm.value_coef=0", "optim.lr=1e-12")),
            ("stage2", args.steps, ()),
        ):
            run = make_critic_run(Path(tmp) / name, steps, *extra)
            assert train(run) == 0
            rows[name] = score(run)
    print(f"{'':12} {'EV':>7} {'mean V (R=0)':>13} {'mean V (R=1)':>13}")
    for name, m in rows.items():
        print(
            f"{name:12} {m['explained_variance']:7.3f} {m['mean_v_incorrect']:13.3f} {m['mean_v_correct']:13.3f}"
        )


if __name__ == "__main__":
    main()
