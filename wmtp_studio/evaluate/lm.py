"""Language-model measurements of a trained model: perplexity, per-head CE and top-1 accuracy, inference speed.

Per-head CE/accuracy use the training loss's own alignment (head k at t scored against x_{t+k+1}) with w = 1, on
held-out text: a JSONL file (prompt, completion), a directory of code files, MBPP, or the generated task's test
split. Perplexity is exp(head-0 CE) over the scored tokens.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from wmtp_studio.errors import StudioError
from wmtp_studio.recipe_sections import DataSection, GeneratedData, TrainSection
from wmtp_studio.train.data import Example, collate, encode, epoch_plan, load_examples
from wmtp_studio.train.loss import forward_backward
from wmtp_studio.train.model import MTPModel
from wmtp_studio.train.weights import uniform_weights


def heldout_examples(spec: str, limit: int | None) -> tuple[list[Example], str]:
    """Examples and their `loss_on` for a data spec: jsonl:PATH, code_dir:PATH, mbpp:PATH or generated[:FAMILY]."""
    kind, _, arg = spec.partition(":")
    if kind == "generated":
        from wmtp_studio.gentask import generate

        problems = generate("test", limit or 200, family=arg or "basic")  # type: ignore[arg-type]
        return [Example(p.prompt, p.completion, 1, p.tests, p.task_id) for p in problems], "completion"
    if kind not in ("jsonl", "code_dir", "mbpp") or not arg:
        raise StudioError(
            f"--data {spec!r}: expected jsonl:PATH, code_dir:PATH, mbpp:PATH or generated[:FAMILY]"
        )
    split = "test" if kind == "mbpp" else "train"  # MBPP: its held-out test tasks (ids 11-510)
    examples = load_examples(DataSection(source=kind, path=arg, split=split, generated=GeneratedData()))  # type: ignore[arg-type]
    return examples[:limit] if limit else examples, "all" if kind == "code_dir" else "completion"


@torch.no_grad()
def lm_metrics(
    model: MTPModel,
    tokenizer: Any,
    examples: list[Example],
    loss_on: str,
    *,
    seq_len: int = 1024,
    batch_size: int = 8,
) -> dict[str, float]:
    """Per-head CE and accuracy (w = 1) and head-0 perplexity over every scored token of `examples`."""
    cfg = TrainSection(steps=1, seq_len=seq_len, batch_size=batch_size, loss_on=loss_on)  # type: ignore[arg-type]
    enc = encode(examples, tokenizer, seq_len)
    device = next(model.parameters()).device
    n = model.n_heads
    sums = torch.zeros(n, 3, dtype=torch.float64)  # ce_sum, correct, count per head
    tokens, start = 0, time.perf_counter()
    for rows in epoch_plan([len(e.ids) for e in enc], batch_size, 0, 0, False, seq_len):
        b = collate(rows, enc, cfg, tokenizer.pad_token_id, None).to(device)
        stats = forward_backward(
            model,
            model.trunk(b.input_ids),
            b.input_ids,
            b.token_mask,
            b.segment_ids,
            uniform_weights,
            [1.0] * n,
            [1.0] * n,
            backward=False,
        )
        sums += stats.stats[:, :3].double().cpu()
        tokens += b.tokens
    if sums[0, 2] == 0:
        raise StudioError("no scored tokens in the held-out data")
    out = {f"head{k}/ce": float(sums[k, 0] / sums[k, 2]) for k in range(n)}
    out |= {f"head{k}/acc": float(sums[k, 1] / sums[k, 2]) for k in range(n)}
    out["perplexity"] = math.exp(out["head0/ce"])
    out["scored_tokens"] = float(sums[0, 2])
    out["forward_tokens_per_s"] = tokens / max(time.perf_counter() - start, 1e-9)
    return out


def evaluate_lm(
    model_path: Path,
    spec: str,
    *,
    limit: int | None = None,
    seq_len: int = 1024,
    speed_prompts: int = 10,
    max_new_tokens: int = 64,
) -> dict[str, Any]:
    """Held-out LM metrics plus greedy and self-speculative decoding speed (tokens/s, batch 1, KV cache)."""
    from wmtp_studio.evaluate.generate import greedy_decode, self_speculative_decode
    from wmtp_studio.evaluate.model_files import resolve_model_dir
    from wmtp_studio.train.model import load_for_generation

    model_dir, _ = resolve_model_dir(model_path)
    model, tokenizer, max_new_tokens = load_for_generation(model_dir, max_new_tokens)
    examples, loss_on = heldout_examples(spec, limit)
    results: dict[str, Any] = {
        "model": str(model_dir),
        "data": spec,
        "n_heads": model.n_heads,
        "metrics": lm_metrics(model, tokenizer, examples, loss_on, seq_len=seq_len),
    }
    prompts = [e.prompt for e in examples if e.prompt][:speed_prompts]
    if prompts:
        g_tok, g_s, s_tok, s_s, passes = 0, 0.0, 0, 0.0, 0
        for p in prompts:
            ids, secs = greedy_decode(model, tokenizer, p, max_new_tokens, ())
            g_tok, g_s = g_tok + len(ids), g_s + secs
            if model.n_heads > 1:
                sids, st = self_speculative_decode(model, tokenizer, p, max_new_tokens, ())
                s_tok, s_s, passes = s_tok + len(sids), s_s + st.seconds, passes + st.forward_passes
        speed = {"greedy_tokens_per_s": g_tok / max(g_s, 1e-9)}
        if model.n_heads > 1:
            speed |= {
                "speculative_tokens_per_s": s_tok / max(s_s, 1e-9),
                "mean_accepted_length": s_tok / max(passes, 1),
            }
        results["speed"] = speed
    return results
