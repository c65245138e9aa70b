"""Training data: sources -> `Example`s -> token ids with masks -> deterministic batches.

Sources: the generated task, MBPP (standard fields; a JSON/JSONL path or an HF dataset id; split by task id),
generic JSONL (`prompt`, `completion`, optional `is_correct`, optional `tests`), and a directory of code files
(raw text for packed pre-training). Each example is `prompt ⧺ completion ⧺ EOS`; prompt and completion are tokenised separately so
the completion boundary is exact. The batch order is a function of (seed, epoch) only, so a resumed run sees the
same batches as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from wmtp_studio import prompts
from wmtp_studio.errors import StudioError
from wmtp_studio.recipe_sections import DataSection, TrainSection
from wmtp_studio.records import read_records, require_fields


@dataclass(frozen=True)
class Example:
    """One training text: the prompt (never trained with loss_on: completion), its completion and reward."""

    prompt: str
    completion: str
    is_correct: int = 1
    tests: tuple[str, ...] = ()
    id: str = ""


@dataclass(frozen=True)
class Encoded:
    """Token ids of one example and which of them are completion tokens (EOS included)."""

    ids: list[int]
    completion: list[bool]
    reward: float
    truncated: bool = False  # the example's final token was cut off (its reward sits on no token)
    advantage: float | None = None  # grpo: A of its group (None: not grouped, or its group has no signal)


@dataclass
class Batch:
    """One micro-batch, right-padded. All tensors (B, S)."""

    input_ids: Tensor  # long
    token_mask: Tensor  # bool: x_j is a trained token
    completion_mask: Tensor  # bool: x_j is a completion token (critic states)
    segment_ids: Tensor  # long: example index inside the row, -1 on padding
    rewards: Tensor  # float: R of the example each position belongs to
    ref_ce: Tensor | None = None  # float: CE^ref_j (rho1, cached)
    tokens: int = 0  # non-pad tokens, counted on the CPU
    example_end: Tensor | None = None  # bool: x_j is its example's true final token (critic: R sits there)
    advantages: Tensor | None = None  # float: grpo A of the example each position belongs to (None: no grpo)
    group_signal: Tensor | None = None  # bool: that example's group carries signal (grpo)

    def to(self, device: torch.device) -> Batch:
        moved = {k: v.to(device, non_blocking=True) for k, v in vars(self).items() if isinstance(v, Tensor)}
        return replace(self, **moved)  # type: ignore[arg-type]


def load_examples(section: DataSection) -> list[Example]:
    """Every example of the configured source, in source order."""
    if section.source == "generated":
        from wmtp_studio.gentask import generate

        g = section.generated
        problems = generate(
            "train", g.num_train, family=g.family, seed=g.seed, incorrect_fraction=g.incorrect_fraction
        )
        return [Example(p.prompt, p.completion, p.is_correct, p.tests, p.task_id) for p in problems]
    if section.source == "mbpp":
        return _mbpp_examples(section)
    if section.source == "jsonl":
        assert section.path is not None
        path = Path(section.path)
        if not path.is_file():
            raise StudioError(f"data.path {section.path!r} is not a file")
        out = []
        for i, (where, rec) in enumerate(read_records(path)):
            require_fields(rec, ("prompt", "completion"), f"{path} {where}")
            out.append(
                Example(
                    str(rec["prompt"]),
                    str(rec["completion"]),
                    int(rec.get("is_correct", 1)),
                    tuple(rec.get("tests") or ()),
                    str(rec.get("id", i)),
                )
            )
        return out
    assert section.path is not None
    root = Path(section.path)
    if not root.is_dir():
        raise StudioError(f"data.path {section.path!r} is not a directory")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in section.extensions)
    if not files:
        raise StudioError(f"no {'/'.join(section.extensions)} files under {root}")
    return [
        Example("", p.read_text(encoding="utf-8", errors="replace"), 1, (), str(p.relative_to(root)))
        for p in files
    ]


def _mbpp_examples(section: DataSection) -> list[Example]:
    """MBPP's `data.split`, chosen by task id whatever the file holds (`mbpp_split`), in evaluation's format.

    The prompt is the 3-shot prompt the evaluation uses (tasks 2, 3, 4, then the task's block), so the model is
    trained on the format it is evaluated on. A record may carry `is_correct` (0 for a labelled wrong candidate
    in `code`, for critic-wmtp; default 1): the other algorithms train on the correct ones only.
    """
    from wmtp_studio.evaluate.tasks import mbpp_split

    assert section.path is not None
    records, shots, _ = mbpp_split(section.path, section.split)
    out = []
    for where, rec in records:
        at = f"{section.path} {where}"
        require_fields(rec, ("text", "code", "test_list"), at)
        label = rec.get("is_correct", 1)
        if label not in (0, 1) or isinstance(label, float):
            raise StudioError(f"{at}: is_correct must be 0 or 1, got {label!r}")
        out.append(
            Example(
                prompts.mbpp_prompt(rec, shots),
                prompts.mbpp_completion(rec),
                int(label),
                tuple(rec["test_list"]),
                f"mbpp/{rec['task_id']}",
            )
        )
    return out


def encode(examples: list[Example], tokenizer: Any, max_len: int | None) -> list[Encoded]:
    """Tokenise prompt and completion separately, append EOS; truncate to max_len (None: keep whole)."""
    eos = tokenizer.eos_token_id
    out = []
    for ex in examples:
        p = tokenizer.encode(ex.prompt, add_special_tokens=False) if ex.prompt else []
        c = [*tokenizer.encode(ex.completion, add_special_tokens=False), eos]
        ids = (p + c)[:max_len] if max_len else p + c
        comp = ([False] * len(p) + [True] * len(c))[: len(ids)]
        out.append(Encoded(ids, comp, float(ex.is_correct), len(ids) < len(p) + len(c)))
    return out


def split_heldout(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, held-out) index split; held-out is empty when fraction is 0."""
    order = list(range(n))
    random.Random(f"heldout-{seed}").shuffle(order)
    k = min(n - 1, math.ceil(n * fraction - 1e-9)) if fraction > 0 else 0  # 100 * 0.07 is 7.000000000000001
    return sorted(order[k:]), sorted(order[:k])


PACK_WINDOW = 16  # unfinished rows a packed chunk may go into (first fit)


def example_chunks(i: int, length: int, seq_len: int) -> list[tuple[int, int, int]]:
    """Example i cut into (i, start, end) chunks of seq_len tokens (the last one shorter).

    The cut points depend on the example alone, never on what else is packed with it: each chunk is read alone
    (block-diagonal attention, positions from 0), so rho1's cached reference CE scores exactly these chunks.
    """
    return [(i, s, min(s + seq_len, length)) for s in range(0, length, seq_len)]


def split_by_problem(keys: list[str], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """`split_heldout` over distinct problem keys: examples sharing a key (a problem's correct and incorrect
    variants) land on the same side. Returns sorted example indices (train, held-out)."""
    problems = list(dict.fromkeys(keys))  # first-occurrence order: a function of the data only
    _, held = split_heldout(len(problems), fraction, seed)
    out = {problems[i] for i in held}
    return [i for i, k in enumerate(keys) if k not in out], [i for i, k in enumerate(keys) if k in out]


def epoch_plan(
    lengths: list[int], batch: int, seed: int, epoch: int, packing: bool, seq_len: int
) -> list[list[Any]]:
    """The batches of one epoch as lists of example indices (or packed rows), a function of (seed, epoch) only.

    Without packing, batches are length-bucketed: the permutation is cut into groups of 50 batches, each group
    sorted by length, and the batch order shuffled (fewer pad tokens, same data). With packing, a row is a list
    of (example, start, end) chunks (`example_chunks`) of at most seq_len tokens in all, placed first-fit among
    the last PACK_WINDOW unfinished rows (a chunk is never split across rows; rows keep roughly the shuffled
    order).
    """
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if packing:
        rows: list[list[tuple[int, int, int]]] = []
        open_rows: list[tuple[int, list[tuple[int, int, int]]]] = []  # (room left, chunks), oldest first
        for piece in (c for i in order for c in example_chunks(i, lengths[i], seq_len)):
            size = piece[2] - piece[1]
            fit = next((r for r, (room, _) in enumerate(open_rows) if room >= size), None)
            if fit is None:
                if len(open_rows) == PACK_WINDOW:
                    rows.append(open_rows.pop(0)[1])
                open_rows.append((seq_len, []))
                fit = len(open_rows) - 1
            room, row = open_rows[fit]
            row.append(piece)
            open_rows[fit] = (room - size, row)
            if room == size:
                rows.append(open_rows.pop(fit)[1])
        rows += [row for _, row in open_rows]
        return [rows[j : j + batch] for j in range(0, len(rows) - batch + 1, batch)]
    batches: list[list[Any]] = []
    group = batch * 50
    for g in range(0, len(order), group):
        chunk = sorted(order[g : g + group], key=lambda i: lengths[i])
        batches += [chunk[j : j + batch] for j in range(0, len(chunk) - batch + 1, batch)]
    rng.shuffle(batches)
    return batches


def collate(
    rows: list[Any], encoded: list[Encoded], cfg: TrainSection, pad_id: int, ref_ce: list[list[float]] | None
) -> Batch:
    """Build a padded Batch from example indices (no packing) or packed rows of (example, start, end)."""
    if rows and isinstance(rows[0], int):
        rows = [[(i, 0, len(encoded[i].ids))] for i in rows]
    width = max(sum(e - s for _, s, e in row) for row in rows)
    shape = (len(rows), width)
    ids = torch.full(shape, pad_id, dtype=torch.long)
    comp = torch.zeros(shape, dtype=torch.bool)
    seg = torch.full(shape, -1, dtype=torch.long)
    rew = torch.zeros(shape)
    ref = torch.zeros(shape) if ref_ce is not None else None
    end = torch.zeros(shape, dtype=torch.bool)
    grouped = any(encoded[i].advantage is not None for row in rows for i, _, _ in row)
    adv = torch.zeros(shape) if grouped else None
    signal = torch.zeros(shape, dtype=torch.bool) if grouped else None
    for r, row in enumerate(rows):
        pos = 0
        for j, (i, s, e) in enumerate(row):
            enc = encoded[i]
            ids[r, pos : pos + e - s] = torch.tensor(enc.ids[s:e])
            comp[r, pos : pos + e - s] = torch.tensor(enc.completion[s:e])
            seg[r, pos : pos + e - s] = j
            rew[r, pos : pos + e - s] = enc.reward
            if ref is not None and ref_ce is not None:
                ref[r, pos : pos + e - s] = torch.tensor(ref_ce[i][s:e])
            end[r, pos + e - s - 1] = e == len(enc.ids) and not enc.truncated  # a cut piece never ends it
            if adv is not None and signal is not None and enc.advantage is not None:
                adv[r, pos : pos + e - s] = enc.advantage
                signal[r, pos : pos + e - s] = True
            pos += e - s
    trained = comp.clone() if cfg.loss_on == "completion" else seg >= 0
    return Batch(
        ids,
        trained,
        comp,
        seg,
        rew,
        ref,
        int((seg >= 0).sum()),
        example_end=end,
        advantages=adv,
        group_signal=signal,
    )
