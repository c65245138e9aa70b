"""The training loop on accelerate: `train(run_dir)` reads `recipe.json` and writes only files in `run_dir`.

Reads top to bottom: `setup` builds everything once, `train` runs (critic Stage 1, then) steps, `train_step` does
one optimiser step over `grad_accum` micro-batches. Gradients are summed across processes by hand after the
per-head backward passes (a DDP wrapper expects one backward per forward); each head's term is divided by its
token count over the whole step and every process, so 2 processes x batch 2 equal 1 process x batch 4.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from wmtp_studio import rundir
from wmtp_studio.errors import StudioError, TrainingAborted
from wmtp_studio.recipe import Recipe, recipe_from_json
from wmtp_studio.rundir.checkpoints import TrainerState as State
from wmtp_studio.rundir.checkpoints import read_trainer_state, write_trainer_state
from wmtp_studio.runrefs import check_local_paths, resolve_run_refs
from wmtp_studio.tracking import MlflowLogger
from wmtp_studio.train import checkpoint as ckpt
from wmtp_studio.train import lifecycle
from wmtp_studio.train.algorithms import StepDiagnostics, algorithm_hooks, rho1_step_selection
from wmtp_studio.train.critic import ValueRows, heldout_value_stats, stage1
from wmtp_studio.train.data import (
    Batch,
    Encoded,
    collate,
    encode,
    epoch_plan,
    load_examples,
    split_by_problem,
)
from wmtp_studio.train.events import MetricsWriter
from wmtp_studio.train.loss import HIST_EDGES, STAT_FIELDS, HeadStats, forward_backward, head_mask
from wmtp_studio.train.model import MTPModel, ValueHead, build_tiny_hf, load_mtp
from wmtp_studio.train.reference import cached_reference_ce, load_reference
from wmtp_studio.train.threads import apply_threads
from wmtp_studio.train.tokenizer import load_tokenizer

EXIT_INTERRUPTED = 143  # 128 + SIGTERM: checkpointed, can be resumed
log = logging.getLogger("wmtp.train")  # progress lines for train.log (python -m wmtp_studio.train sets it up)


@dataclass
class Setup:
    recipe: Recipe
    run_dir: Path
    accel: Any
    tokenizer: Any
    model: MTPModel
    value_head: ValueHead | None
    reference: torch.nn.Module | None
    train_data: list[Encoded]
    val_data: list[Encoded]
    stage1_data: list[Encoded]
    ref_ce: list[list[float]] | None
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    writer: MetricsWriter
    mlflow: MlflowLogger | None
    plans: dict[int, list[list[Any]]] = field(default_factory=dict)
    # critic: labelled examples of the held-out problems, and the incorrect rows only the value loss sees
    value_heldout: list[Encoded] = field(default_factory=list)
    value_extra: list[Encoded] = field(default_factory=list)
    value_plans: dict[int, list[list[Any]]] = field(default_factory=dict)
    value_heldout_batches: list[Batch] | None = None

    @property
    def world(self) -> int:
        return int(self.accel.num_processes)


def _build_model(recipe: Recipe, tokenizer: Any, source: Path | None) -> MTPModel:
    dtype = getattr(torch, recipe.model.dtype)
    if source is not None or recipe.model.name_or_path:
        return load_mtp(source or str(recipe.model.name_or_path), recipe.n_heads, recipe.model.heads, dtype)
    tiny = recipe.model.tiny
    assert tiny is not None
    special = {
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.eos_token_id,
    }
    hf = build_tiny_hf(
        tiny.arch,
        len(tokenizer),
        tiny.hidden_size,
        tiny.num_layers,
        tiny.num_attention_heads,
        tiny.intermediate_size,
        tiny.max_position_embeddings,
        special,
    )
    return MTPModel(hf, recipe.n_heads, recipe.model.heads, base_id=f"tiny-{tiny.arch}").to(dtype)


def _optimizer(recipe: Recipe, model: MTPModel, value_head: ValueHead | None, lr_value: float) -> Any:
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": recipe.optim.weight_decay, "lr": recipe.optim.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": recipe.optim.lr},
    ]
    if value_head is not None:
        groups.append({"params": list(value_head.parameters()), "weight_decay": 0.0, "lr": lr_value})
    return torch.optim.AdamW(groups, betas=recipe.optim.betas, eps=recipe.optim.eps)


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to min_ratio at `total` (multiplies each group's lr)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def setup(run_dir: Path, resume_from: Path | None) -> Setup:
    """Everything a run needs, built once, restored from `resume_from` when given."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    frozen = run_dir / "recipe.json"
    recipe = recipe_from_json(frozen.read_text(), str(frozen), resolve_secrets=True)  # secrets: from our env
    recipe = resolve_run_refs(recipe, run_dir.resolve().parent)  # run:N -> <runs dir>/N/model
    check_local_paths(recipe)  # "no such directory", never a hub error about repo ids
    cfg, algo = recipe.train, recipe.algorithm
    apply_threads(cfg.num_threads)  # the cores free now, or a warning when a fixed number oversubscribes them
    mp = {"fp32": "no", "bf16": "bf16"}.get(
        cfg.mixed_precision, "bf16" if torch.cuda.is_available() else "no"
    )
    accel = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=mp,
    )
    set_seed(cfg.seed)
    examples = load_examples(recipe.data)
    if recipe.data.max_examples and len(examples) > recipe.data.max_examples:
        keep = sorted(
            random.Random(f"max-examples-{cfg.seed}").sample(range(len(examples)), recipe.data.max_examples)
        )
        examples = [examples[i] for i in keep]
    if not examples:
        raise StudioError("the data source yielded no examples")
    tok_source = resume_from / "model" if resume_from else None
    tokenizer = _load_tok(recipe, examples, tok_source)
    encoded = encode(examples, tokenizer, cfg.seq_len if not cfg.packing else None)
    # Held out by problem (its prompt): a problem's correct and incorrect variants never straddle the split, and
    # the split is the same for every algorithm (METHOD.md, critic-wmtp and Fair comparison).
    keys = [e.prompt or f"example-{i}" for i, e in enumerate(examples)]
    tr_idx, val_idx = split_by_problem(keys, recipe.eval.val_fraction, cfg.seed)
    lm_all = algo.name == "critic-wmtp" and algo.train_on == "all"  # train_on filters the LM loss only
    train_data = [encoded[i] for i in tr_idx if encoded[i].reward == 1.0 or lm_all]
    val_data = [encoded[i] for i in val_idx if encoded[i].reward == 1.0 or lm_all]
    value_train, value_heldout = _value_split(recipe, encoded, keys, tr_idx, val_idx)
    model = _build_model(recipe, tokenizer, resume_from / "model" if resume_from else None).to(accel.device)
    model.train()
    value_head = ValueHead(model.hidden_size).to(accel.device) if algo.name == "critic-wmtp" else None
    reference, ref_ce = None, None
    if algo.name == "rho1-wmtp":
        reference = load_reference(algo.reference, tokenizer, accel.device)
        if algo.cache:
            if accel.is_main_process:
                cached_reference_ce(reference, tokenizer, train_data, cfg.seq_len, accel.device)
            accel.wait_for_everyone()
            ref_ce = cached_reference_ce(
                reference, tokenizer, train_data, cfg.seq_len, accel.device, compute=False
            )
            reference = None  # cached: the reference is not needed any more
    value_lr = algo.value_lr if algo.name == "critic-wmtp" else 0.0
    optimizer = _optimizer(recipe, model, value_head, value_lr)
    per_step = cfg.batch_size * accel.num_processes * cfg.grad_accum
    total = cfg.steps or max(1, math.ceil((cfg.epochs or 1) * len(train_data) / per_step))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, recipe.optim.warmup_steps, total, recipe.optim.min_lr_ratio)
    )
    return Setup(
        recipe,
        run_dir,
        accel,
        tokenizer,
        model,
        value_head,
        reference,
        train_data,
        val_data,
        value_train,
        ref_ce,
        optimizer,
        scheduler,
        total,
        MetricsWriter(run_dir / "metrics.jsonl", enabled=False),
        None,
        value_heldout=value_heldout,
        value_extra=[e for e in value_train if e.reward != 1.0 and not lm_all],
    )


def _value_split(
    recipe: Recipe, encoded: list[Encoded], keys: list[str], tr_idx: list[int], val_idx: list[int]
) -> tuple[list[Encoded], list[Encoded]]:
    """critic: (value training, value held-out) labelled examples, split by problem.

    The held-out problems are the run's validation problems, which no algorithm trains on; with
    `eval.val_fraction: 0` they are `stage1.heldout_fraction` of the training problems, kept from the value loss.
    """
    algo = recipe.algorithm
    if algo.name != "critic-wmtp":
        return [], []
    if not val_idx:
        tr, ho = split_by_problem(
            [keys[i] for i in tr_idx], algo.stage1.heldout_fraction, recipe.train.seed + 1
        )
        tr_idx, val_idx = [tr_idx[i] for i in tr], [tr_idx[i] for i in ho]
    train, held = [encoded[i] for i in tr_idx], [encoded[i] for i in val_idx]
    if all(e.reward == 1.0 for e in train):
        raise StudioError(
            "critic-wmtp needs training examples labelled is_correct: 0 (set data.generated."
            "incorrect_fraction > 0, or label candidates with `wmtp label`)"
        )
    return train, held


def _load_tok(recipe: Recipe, examples: list[Any], saved: Path | None) -> Any:
    if saved is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(saved)
    return load_tokenizer(recipe, (e.prompt + e.completion for e in examples))


def _plan(s: Setup, data: list[Encoded], epoch: int, seed_offset: int = 0) -> list[list[Any]]:
    cfg = s.recipe.train
    return epoch_plan(
        [len(e.ids) for e in data],
        cfg.batch_size * s.world,
        cfg.seed + seed_offset,
        epoch,
        cfg.packing,
        cfg.seq_len,
    )


def next_batch(s: Setup, state: State) -> Batch:
    """This process's slice of the next global micro-batch (on the CPU); advances the data position."""
    plan = s.plans.get(state.epoch)
    if plan is None:
        s.plans = {state.epoch: _plan(s, s.train_data, state.epoch)}
        plan = s.plans[state.epoch]
        if not plan:
            raise StudioError(
                f"not enough training data for one global batch of {s.recipe.train.batch_size * s.world}"
            )
    if state.batch_index >= len(plan):
        state.epoch, state.batch_index = state.epoch + 1, 0
        return next_batch(s, state)
    rows = plan[state.batch_index]
    state.batch_index += 1
    b = s.recipe.train.batch_size
    mine = rows[s.accel.process_index * b : (s.accel.process_index + 1) * b]
    return collate(mine, s.train_data, s.recipe.train, s.tokenizer.pad_token_id, s.ref_ce)  # on the CPU


def _value_rows(s: Setup, g: int) -> ValueRows | None:
    """critic, `train_on: correct`: the incorrect rows riding with the step's g-th micro-batch, seen by the value
    loss only (METHOD.md: else every Stage 2 reward is 1 and V drifts to 1). As many rows per micro-batch as keep
    the data's ratio of incorrect to correct examples; their own plan, a function of (seed, g) only, so resumed
    runs see the same rows. The LM rows, and so the LM loss's tokens, stay those of every other algorithm.
    """
    if not s.value_extra:
        return None
    cfg = s.recipe.train
    per = max(1, round(cfg.batch_size * len(s.value_extra) / max(1, len(s.train_data))))
    per = min(per, max(1, len(s.value_extra) // s.world))
    if 0 not in s.value_plans:  # every epoch's plan has the same length (same examples, same rows)
        s.value_plans = {0: _plan_rows(s, s.value_extra, per, 0)}
    epoch, index = divmod(g, max(1, len(s.value_plans[0])))
    if epoch not in s.value_plans:
        s.value_plans = {0: s.value_plans[0], epoch: _plan_rows(s, s.value_extra, per, epoch)}
    plan = s.value_plans[epoch]
    if not plan:
        return None
    mine = plan[index % len(plan)][s.accel.process_index * per : (s.accel.process_index + 1) * per]
    batch = collate(mine, s.value_extra, cfg, s.tokenizer.pad_token_id, None).to(s.accel.device)
    algo = s.recipe.algorithm
    with torch.set_grad_enabled(algo.name == "critic-wmtp" and algo.value_trunk_grad):
        return ValueRows(batch, s.model.trunk(batch.input_ids, batch.segment_ids).hidden)


def _plan_rows(s: Setup, data: list[Encoded], per: int, epoch: int) -> list[list[Any]]:
    cfg = s.recipe.train
    return epoch_plan(
        [len(e.ids) for e in data], per * s.world, cfg.seed + 2, epoch, cfg.packing, cfg.seq_len
    )


def _all_reduce_grads(params: list[torch.nn.Parameter], world: int) -> None:
    """Sum gradients over processes in ~64 MB buckets (missing gradients count as zero)."""
    if world == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    bucket: list[torch.Tensor] = []
    size = 0
    for i, p in enumerate(params):
        assert p.grad is not None
        bucket.append(p.grad)
        size += p.grad.numel()
        if size >= 16_000_000 or i == len(params) - 1:
            flat = torch.cat([g.flatten() for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()
            bucket, size = [], 0


def _reduce(s: Setup, values: torch.Tensor) -> list[float]:
    """Sum a vector over processes and read it (the step's one host sync besides the grad norm)."""
    if s.world > 1:
        values = values.to(s.accel.device, torch.float64)
        dist.all_reduce(values)
    return [float(v) for v in values.tolist()]


@dataclass
class StepResult:
    loss: float
    grad_norm: float
    tokens: int
    finite: bool
    stop: bool
    heads: HeadStats
    diag: StepDiagnostics
    batch: Batch


def train_step(s: Setup, state: State, detail: bool, stop_requested: bool) -> StepResult:
    """One optimiser step over grad_accum micro-batches; skipped (not counted) when the loss is not finite."""
    cfg = s.recipe.train
    micro = [next_batch(s, state) for _ in range(cfg.grad_accum)]
    n = s.recipe.n_heads
    counts = torch.tensor(  # per-head valid entries of the whole step, every process (masks built on the CPU)
        [float(sum(int(head_mask(b.token_mask, b.segment_ids, k).sum()) for b in micro)) for k in range(n)]
    )
    denominators = _reduce(s, counts)
    diag = StepDiagnostics()
    heads: HeadStats | None = None
    with s.accel.autocast():  # rho1 select: the kept tokens are chosen over the whole step first
        selection = rho1_step_selection(s.recipe, s.model, micro, s.reference, s.world, s.accel.device)
    for i, cpu_batch in enumerate(micro):
        batch = cpu_batch.to(s.accel.device)
        with s.accel.autocast():
            trunk = s.model.trunk(batch.input_ids, batch.segment_ids)
            weights_for, extra = algorithm_hooks(
                s.recipe,
                batch,
                trunk,
                s.value_head,
                s.reference,
                diag,
                value_scale=s.world * cfg.grad_accum,
                value_rows=_value_rows(s, state.step * cfg.grad_accum + i),
                selection=selection[i] if selection else None,
            )
            stats = forward_backward(
                s.model,
                trunk,
                batch.input_ids,
                batch.token_mask,
                batch.segment_ids,
                weights_for,
                s.recipe.head_coefficients,
                denominators,
                extra_loss=extra,
                naive=cfg.naive_loss,
                detail=detail and i == 0,
            )
        heads = heads.merge(stats) if heads is not None else stats
    assert heads is not None
    params = [p for g in s.optimizer.param_groups for p in g["params"]]
    _all_reduce_grads(params, s.world)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
    tokens = sum(b.tokens for b in micro)
    local = torch.stack(
        [
            (heads.loss + heads.extra).double().cpu(),
            torch.tensor(float(tokens), dtype=torch.float64),
            torch.tensor(float(stop_requested), dtype=torch.float64),
        ]
    )
    loss, tokens_all, stop = _reduce(s, local)
    finite = math.isfinite(loss) and math.isfinite(grad_norm)
    if finite:
        s.optimizer.step()
        s.scheduler.step()
        state.step += 1
        state.nonfinite_streak = 0
    else:
        state.nonfinite_streak += 1
        state.nonfinite_total += 1
    s.optimizer.zero_grad(set_to_none=True)
    state.tokens_seen += int(tokens_all)
    return StepResult(loss, grad_norm, int(tokens_all), finite, stop > 0, heads, diag, micro[0])


def head_metrics(h: HeadStats, prefix: str = "") -> dict[str, float]:
    """Per-head scalars from summed stats: CE, accuracy, weight mean/std/min/max, entropy (one host read)."""
    out: dict[str, float] = {}
    for k, row in enumerate(h.stats.tolist()):
        v = dict(zip(STAT_FIELDS, row, strict=True))
        c = max(v["count"], 1.0)
        out |= {f"head{k}/{prefix}ce": v["ce_sum"] / c, f"head{k}/{prefix}acc": v["correct"] / c}
        if not prefix:
            mean = v["w_sum"] / c
            valid = v["count"] > 0
            out |= {
                f"head{k}/w_mean": mean,
                f"head{k}/w_std": math.sqrt(max(0.0, v["w_sq"] / c - mean * mean)),
                f"head{k}/w_min": v["w_min"] if valid else 0.0,
                f"head{k}/w_max": v["w_max"] if valid else 0.0,
            }
            if h.hist is not None:
                out[f"head{k}/w_entropy"] = v["w_entropy"]
    return out


@torch.no_grad()
def validate(s: Setup) -> dict[str, float]:
    """Per-head CE and accuracy (w = 1) on the held-out slice; rank 0 only, no collectives."""
    cfg = s.recipe.train
    plan = epoch_plan(
        [len(e.ids) for e in s.val_data], cfg.batch_size, cfg.seed, -1, cfg.packing, cfg.seq_len
    )
    total: HeadStats | None = None
    for rows in plan[: s.recipe.eval.val_batches]:
        b = collate(rows, s.val_data, cfg, s.tokenizer.pad_token_id, None).to(s.accel.device)
        with s.accel.autocast():
            trunk = s.model.trunk(b.input_ids, b.segment_ids)
            stats = forward_backward(
                s.model,
                trunk,
                b.input_ids,
                b.token_mask,
                b.segment_ids,
                lambda _k, _c, m: m.float(),
                [1.0] * s.recipe.n_heads,
                [1.0] * s.recipe.n_heads,
                backward=False,
            )
        total = total.merge(stats) if total else stats
    if total is None:
        return {}
    out = head_metrics(total, prefix="val_")
    out["val_loss"] = sum(c * out[f"head{k}/val_ce"] for k, c in enumerate(s.recipe.head_coefficients))
    return out


def _top_tokens(s: Setup, r: StepResult) -> dict[str, Any]:
    """Tokens of the first sequence with each head's weight on the token it predicts, and the top-20 overall."""
    ids = r.batch.input_ids[0]
    valid = int((r.batch.segment_ids[0] >= 0).sum())
    tokens = [s.tokenizer.decode([int(t)]) for t in ids[:valid]]
    per_head, top = [], []
    for k, w in enumerate(r.heads.weights):
        row = w[0].tolist()
        aligned = [0.0] * valid  # weight of head k on target token j is w[j - k - 1]
        for j in range(k + 1, valid):
            aligned[j] = round(float(row[j - k - 1]), 4)
        per_head.append(aligned)
        top += [(wt, k, j) for j, wt in enumerate(aligned) if wt > 0]
    top.sort(reverse=True)
    return {
        "tokens": tokens,
        "weights": per_head,
        "top": [{"head": k, "pos": j, "token": tokens[j], "weight": wt} for wt, k, j in top[:20]],
    }


def save_checkpoint(s: Setup, state: State) -> None:
    """Every rank stores its RNG state, rank 0 the rest; published atomically (see checkpoint.py)."""
    staging = ckpt.staging_dir(s.run_dir, state.step)
    if s.accel.is_main_process:
        ckpt.assert_finite(s.model, f"step {state.step}")
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    s.accel.wait_for_everyone()
    torch.save(ckpt.rng_state(), staging / f"rng_{s.accel.process_index}.pt")
    s.accel.wait_for_everyone()
    if s.accel.is_main_process:
        s.model.save(staging / "model")
        s.tokenizer.save_pretrained(staging / "model")
        if s.value_head is not None:
            save_file(s.value_head.state_dict(), str(staging / "value_head.safetensors"))
        torch.save(s.optimizer.state_dict(), staging / "optimizer.pt")
        torch.save(s.scheduler.state_dict(), staging / "scheduler.pt")
        rundir.write_stamp(staging, rundir.ensure_stamp(s.run_dir))  # whose checkpoint this is
        s.writer.write(
            "event", state.step, event="checkpoint", data={"path": f"checkpoints/step_{state.step}"}
        )
        state.seq, state.metrics_offset = s.writer.seq, s.writer.offset
        write_trainer_state(staging, state)
        ckpt.publish(s.run_dir, state.step, s.recipe.train.keep_checkpoints)
        log.info("checkpoint at step %d", state.step)
    s.accel.wait_for_everyone()


def restore(s: Setup, path: Path) -> State:
    """Load value head, optimiser, scheduler, RNG and trainer state (the model was built from path/model)."""
    state = read_trainer_state(path)
    if s.value_head is not None:
        s.value_head.load_state_dict(
            load_file(str(path / "value_head.safetensors"), device=str(s.accel.device))
        )
    s.optimizer.load_state_dict(
        torch.load(path / "optimizer.pt", map_location=s.accel.device, weights_only=True)
    )
    s.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = path / f"rng_{s.accel.process_index}.pt"
    if rng.is_file():
        ckpt.set_rng_state(torch.load(rng, weights_only=False))
    return state


def export_model(s: Setup) -> None:
    """The final model as `run_dir/model` (HF-loadable head-0 model + heads + tokenizer), published atomically."""
    if not s.accel.is_main_process:
        return
    import shutil

    tmp, final = s.run_dir / ".model.tmp", s.run_dir / "model"
    shutil.rmtree(tmp, ignore_errors=True)
    s.model.save(tmp)
    s.tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)


def _run_stage1(s: Setup, state: State) -> None:
    algo = s.recipe.algorithm
    assert algo.name == "critic-wmtp" and s.value_head is not None
    cfg = s.recipe.train
    train_part = s.stage1_data  # labelled examples of the training problems; held-out problems never straddle

    def stream() -> Iterator[Batch]:  # every process sees the same batches: value heads stay identical
        epoch = 0
        while True:
            for rows in epoch_plan(
                [len(e.ids) for e in train_part],
                cfg.batch_size,
                cfg.seed + 1,
                epoch,
                cfg.packing,
                cfg.seq_len,
            ):
                yield collate(rows, train_part, cfg, s.tokenizer.pad_token_id, None).to(s.accel.device)
            epoch += 1

    steps = stage1(
        s.model,
        s.value_head,
        algo.stage1,
        stream(),
        _value_heldout_batches(s),
        lambda step, m: s.writer.write("stage1", step, metrics=m),
        cfg.grad_clip,
    )
    state.stage1_done = True
    s.writer.write("event", 0, event="stage1_done", data={"steps": steps})
    log.info("critic stage 1 done after %d steps", steps)


def _value_heldout_batches(s: Setup) -> list[Batch]:
    """critic: the held-out problems' labelled examples, batched once (Stage 1 and Stage 2 measure the same)."""
    if s.value_heldout_batches is None:
        cfg = s.recipe.train
        rows = sorted(
            range(len(s.value_heldout)), key=lambda i: len(s.value_heldout[i].ids)
        )  # little padding
        s.value_heldout_batches = [
            collate(rows[j : j + cfg.batch_size], s.value_heldout, cfg, s.tokenizer.pad_token_id, None).to(
                s.accel.device
            )
            for j in range(0, len(rows), cfg.batch_size)
        ]
    return s.value_heldout_batches


def _value_heldout_metrics(s: Setup, state: State) -> dict[str, float]:
    """critic Stage 2: held-out value loss, explained variance (or that it is undefined) and mean V by label."""
    if s.value_head is None:
        return {}
    stats = heldout_value_stats(s.model, s.value_head, _value_heldout_batches(s))
    if "explained_variance_undefined" in stats:
        s.writer.write(
            "event",
            state.step,
            event="value_ev_undefined",
            data={"reason": "the held-out value examples all have the same reward"},
        )
    return {f"heldout_{k}": v for k, v in stats.items()}


def _log_step(s: Setup, state: State, r: StepResult, elapsed: float, tokens: int) -> dict[str, float]:
    metrics = {
        "loss": r.loss,
        "grad_norm": r.grad_norm,
        "lr": float(s.scheduler.get_last_lr()[0]),
        "tokens_per_s": tokens / max(elapsed, 1e-9),
        "tokens_seen": float(state.tokens_seen),
        "epoch": float(state.epoch),
        "nonfinite_total": float(state.nonfinite_total),
    }
    metrics |= head_metrics(r.heads) | r.diag.means()
    if torch.cuda.is_available():
        metrics["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    s.writer.write("train", state.step, metrics=metrics)
    if s.mlflow:
        s.mlflow.log(metrics, state.step)
    return metrics


ProgressFn = Callable[[int, int, dict[str, float]], None]


def train(run_dir: Path, resume: bool = False, progress: ProgressFn | None = None) -> int:
    """Train the run in `run_dir`; returns 0 when done or EXIT_INTERRUPTED after a SIGTERM checkpoint (or after
    its supervising worker died). Rank 0 holds the run directory's lock throughout: a second trainer of the same
    directory raises `rundir.RunDirBusy`."""
    stop = {"requested": False}
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(requested=True))
    try:
        if os.environ.get("LOCAL_RANK", "0") != "0":
            return _train(run_dir, resume, progress, stop)
        with rundir.owned(run_dir):
            rundir.ensure_stamp(run_dir)
            return _train(run_dir, resume, progress, stop)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _train(run_dir: Path, resume: bool, progress: ProgressFn | None, stop: dict[str, bool]) -> int:
    latest = ckpt.latest_checkpoint(run_dir) if resume else None
    if latest is not None:
        rundir.check_checkpoint(run_dir, latest)
    s = setup(run_dir, latest)
    state = restore(s, latest) if latest else State()
    main = s.accel.is_main_process
    s.writer = MetricsWriter(
        run_dir / "metrics.jsonl", seq=state.seq, offset=state.metrics_offset if latest else 0, enabled=main
    )
    if main and s.recipe.tracking.mlflow_uri:
        s.mlflow = MlflowLogger.start(s.recipe, run_dir)
    s.writer.write(
        "event",
        state.step,
        event="resumed" if latest else "start",
        data={
            "total_steps": s.total_steps,
            "processes": s.world,
            "n_heads": s.recipe.n_heads,
            "algorithm": s.recipe.algorithm.name,
            "train_examples": len(s.train_data),
        },
    )
    log.info(
        "%s %s: %s, %d head(s), %d training examples, %d steps on %d process(es)",
        f"resuming at step {state.step} of" if latest else "training",
        s.recipe.name,
        s.recipe.algorithm.name,
        s.recipe.n_heads,
        len(s.train_data),
        s.total_steps,
        s.world,
    )
    if s.recipe.algorithm.name == "critic-wmtp" and not state.stage1_done:
        _run_stage1(s, state)
    cfg = s.recipe.train
    tick, tick_tokens = time.perf_counter(), 0
    try:
        while state.step < s.total_steps:
            upcoming = state.step + 1
            detail = upcoming % cfg.hist_every == 0 or upcoming % cfg.top_tokens_every == 0
            stopping = stop["requested"] or lifecycle.supervisor_gone()  # an orphan checkpoints and exits
            r = train_step(s, state, detail, stopping)
            tick_tokens += r.tokens
            if not r.finite:
                s.writer.write(
                    "event",
                    state.step,
                    event="nonfinite",
                    data={
                        "loss": str(r.loss),
                        "grad_norm": str(r.grad_norm),
                        "streak": state.nonfinite_streak,
                        "total": state.nonfinite_total,
                    },
                )
                if state.nonfinite_streak >= cfg.max_nonfinite:
                    if main:  # train lines are only logged for finite steps: record the count it died of
                        s.writer.write(
                            "train", state.step, metrics={"nonfinite_total": state.nonfinite_total}
                        )
                    raise TrainingAborted(
                        f"{state.nonfinite_streak} consecutive steps with a non-finite loss "
                        f"or gradient (last loss {r.loss}, grad norm {r.grad_norm})"
                    )
                if r.stop:  # a stop request is honoured at every step boundary, skipped steps included
                    if all(bool(torch.isfinite(p).all()) for p in s.model.parameters()):
                        save_checkpoint(s, state)  # else the last finite checkpoint is where it resumes
                    s.writer.write("event", state.step, event="interrupted")
                    return EXIT_INTERRUPTED
                continue
            if main:
                if state.step % cfg.log_every == 0 or state.step == s.total_steps:
                    now = time.perf_counter()
                    metrics = _log_step(s, state, r, now - tick, tick_tokens)
                    tick, tick_tokens = now, 0
                    log.info(
                        "step %d/%d loss %.4f lr %.2e %.0f tok/s",
                        state.step,
                        s.total_steps,
                        metrics["loss"],
                        metrics["lr"],
                        metrics["tokens_per_s"],
                    )
                    if progress:
                        progress(state.step, s.total_steps, metrics)
                if detail and r.heads.hist is not None and state.step % cfg.hist_every == 0:
                    s.writer.write(
                        "hist", state.step, data={"edges": list(HIST_EDGES), "heads": r.heads.hist.tolist()}
                    )
                if detail and r.heads.weights and state.step % cfg.top_tokens_every == 0:
                    s.writer.write("top_tokens", state.step, data=_top_tokens(s, r))
                if state.step % s.recipe.eval.val_every == 0 or state.step == s.total_steps:
                    val = (validate(s) if s.val_data else {}) | _value_heldout_metrics(s, state)
                    if val:
                        s.writer.write("val", state.step, metrics=val)
                        if "val_loss" in val:
                            log.info("step %d/%d val_loss %.4f", state.step, s.total_steps, val["val_loss"])
            if r.stop:
                save_checkpoint(s, state)
                s.writer.write("event", state.step, event="interrupted")
                log.info("interrupted: checkpoint at step %d; the run resumes from it", state.step)
                return EXIT_INTERRUPTED
            if state.step % cfg.checkpoint_every == 0 and state.step < s.total_steps:
                save_checkpoint(s, state)
        save_checkpoint(s, state)
        export_model(s)
        s.writer.write("event", state.step, event="done", data={"tokens_seen": state.tokens_seen})
        log.info(
            "done: %d steps, %d tokens seen; model in %s", state.step, state.tokens_seen, run_dir / "model"
        )
        return 0
    except StudioError as exc:
        s.writer.write("event", state.step, event="error", data={"message": str(exc)})
        raise
    finally:
        if s.mlflow:
            s.mlflow.end()
        s.writer.close()
