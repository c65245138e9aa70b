"""Everything a run needs, built once by `setup(run_dir, resume_from)` in stages, like a torchtune recipe.

The recipe and the accelerator come first, then the metrics writer and MLflow (before the stages that can fail on
bad input: a failed set-up closes them and marks the MLflow run FAILED), then data, model, reference and
optimiser, in this order after `set_seed` (the model's and value head's initial weights come from the seeded
generators). The result is a frozen `Setup`; what advances during training lives in `rundir.checkpoints.TrainerState`. The batch
plans are memoised pure functions of the epoch, so a Setup never changes after it is built.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch

from wmtp_studio.errors import StudioError
from wmtp_studio.recipe import Recipe, recipe_from_json
from wmtp_studio.recipe_algorithms import GRPOConfig
from wmtp_studio.runrefs import check_local_paths, resolve_run_refs
from wmtp_studio.tracking import MlflowLogger
from wmtp_studio.train import fsdp, grpo
from wmtp_studio.train.data import (
    Batch,
    Encoded,
    Example,
    collate,
    encode,
    epoch_plan,
    load_examples,
    split_by_problem,
)
from wmtp_studio.train.events import MetricsWriter
from wmtp_studio.train.grpo import GroupSet
from wmtp_studio.train.meta_checkpoint import load_meta_mtp
from wmtp_studio.train.model import MTPModel, ValueHead, build_tiny_hf, load_mtp
from wmtp_studio.train.reference import cached_reference_ce, load_reference
from wmtp_studio.train.threads import apply_threads
from wmtp_studio.train.tokenizer import load_tokenizer

Plan = Callable[[int], list[list[Any]]]
"""epoch -> that epoch's global micro-batches (lists of example indices or packed rows); memoised."""


@dataclass(frozen=True)
class Data:
    """The tokenised examples of a run, split by problem (METHOD.md, critic-wmtp and Fair comparison)."""

    tokenizer: Any
    train: list[Encoded]  # what the LM loss trains on (critic `train_on: all`: incorrect examples too)
    val: list[Encoded]  # the held-out problems' examples the LM is validated on
    stage1: list[Encoded]  # critic: the training problems' labelled examples (Stage 1 and the value loss)
    value_heldout: list[Encoded]  # critic: the held-out problems' labelled examples
    value_extra: list[Encoded]  # critic, `train_on: correct`: the incorrect rows only the value loss sees
    groups: GroupSet | None = None  # grpo: the data's groups (train holds their signal-carrying completions)


@dataclass(frozen=True)
class Setup:
    recipe: Recipe
    run_dir: Path
    accel: Any
    writer: MetricsWriter
    mlflow: MlflowLogger | None
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
    train_plan: Plan
    value_heldout: list[Encoded]
    value_extra: list[Encoded]
    value_rows: int  # critic: value-only rows per micro-batch and process (see loop._value_rows)
    value_plan: Plan  # critic: the value-only rows' own epoch plan, a function of (seed, epoch) only
    value_heldout_batches: list[Batch]  # critic: batched once, on the device (Stage 1 and 2 measure the same)
    groups: GroupSet | None = None  # grpo: the groups in force (train_data is their signal-carrying part)

    @property
    def world(self) -> int:
        return int(self.accel.num_processes)

    @property
    def fsdp(self) -> bool:
        """The model is sharded (train.parallel: fsdp over several processes): its forward is a collective."""
        return fsdp.active(self.recipe, self.world)


def setup(
    run_dir: Path, resume_from: Path | None, *, record: bool = False, seq: int = 0, offset: int = 0
) -> Setup:
    """Everything a run needs, built once, restored from `resume_from` (its model and tokenizer) when given.

    `record`: rank 0 appends to metrics.jsonl from line `seq`, cut back to byte `offset`, and logs to MLflow when
    the recipe asks for it; otherwise nothing is written (benchmarks and tests build a Setup to inspect it).
    """
    recipe = read_recipe(run_dir)
    accel = _setup_accelerator(recipe)
    main = record and accel.is_main_process
    writer = MetricsWriter(run_dir / "metrics.jsonl", seq=seq, offset=offset, enabled=main)
    mlflow = MlflowLogger.start(recipe, run_dir) if main and recipe.tracking.mlflow_uri else None
    try:
        from accelerate.utils import set_seed

        set_seed(recipe.train.seed)
        saved = resume_from / "model" if resume_from else None
        data = _setup_data(recipe=recipe, saved_tokenizer=saved)
        model, value_head = _setup_model(recipe=recipe, tokenizer=data.tokenizer, saved=saved, accel=accel)
        reference, ref_ce = _setup_reference(recipe=recipe, data=data, accel=accel)
        optimizer, scheduler, total = _setup_optimizer(
            recipe=recipe,
            model=model,
            value_head=value_head,
            n_train=_budget_examples(data),
            world=accel.num_processes,
        )
    except BaseException:  # bad data, a missing reference: nothing trained, the MLflow run says so
        if mlflow:
            mlflow.end("FAILED")
        writer.close()
        raise
    cfg, world = recipe.train, accel.num_processes
    # critic `train_on: correct`: as many value-only rows per micro-batch as keep the data's ratio of incorrect
    # to correct examples (at least 1, at most what every process can have)
    per = max(1, round(cfg.batch_size * len(data.value_extra) / max(1, len(data.train))))
    per = min(per, max(1, len(data.value_extra) // world))
    return Setup(
        recipe=recipe,
        run_dir=run_dir,
        accel=accel,
        writer=writer,
        mlflow=mlflow,
        tokenizer=data.tokenizer,
        model=model,
        value_head=value_head,
        reference=reference,
        train_data=data.train,
        val_data=data.val,
        stage1_data=data.stage1,
        ref_ce=ref_ce,
        optimizer=optimizer,
        scheduler=scheduler,
        total_steps=total,
        train_plan=plan_of(recipe, data.train, cfg.batch_size * world, cfg.seed),
        value_heldout=data.value_heldout,
        value_extra=data.value_extra,
        value_rows=per,
        value_plan=plan_of(
            recipe, data.value_extra, per * world, cfg.seed + 2, keep=2
        ),  # epoch 0 and current
        value_heldout_batches=_batched(recipe, data.tokenizer, data.value_heldout, accel.device),
        groups=data.groups,
    )


def read_recipe(run_dir: Path) -> Recipe:
    """The run's frozen recipe.json, secrets read from this process's environment and run:N references resolved."""
    frozen = run_dir / "recipe.json"
    recipe = recipe_from_json(frozen.read_text(), str(frozen), resolve_secrets=True)  # secrets: from our env
    recipe = resolve_run_refs(recipe, run_dir.resolve().parent)  # run:N -> <runs dir>/N/model
    check_local_paths(recipe)  # "no such directory", never a hub error about repo ids
    return recipe


def _setup_accelerator(recipe: Recipe) -> Any:
    from accelerate import Accelerator

    cfg = recipe.train
    apply_threads(cfg.num_threads)  # the cores free now, or a warning when a fixed number oversubscribes them
    mp = {"fp32": "no", "bf16": "bf16"}.get(
        cfg.mixed_precision, "bf16" if torch.cuda.is_available() else "no"
    )
    return Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mp)


def leave_process_group(code: int) -> NoReturn:
    """End a process of a multi-process run once everything is written: destroy the process group, flush the logs
    and exit with `code` without the interpreter's teardown. torch's C++ static destructors can abort a finished
    process there ("terminate called without an active exception", SIGABRT with no Python frame; about 1 FSDP
    run in 8 on gloo), and the launcher would then report a trained run as failed."""
    import torch.distributed as dist

    dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _setup_data(*, recipe: Recipe, saved_tokenizer: Path | None) -> Data:
    cfg, algo = recipe.train, recipe.algorithm
    examples = load_examples(recipe.data)
    if recipe.data.max_examples and len(examples) > recipe.data.max_examples:
        keep = sorted(
            random.Random(f"max-examples-{cfg.seed}").sample(range(len(examples)), recipe.data.max_examples)
        )
        examples = [examples[i] for i in keep]
    if not examples:
        raise StudioError("the data source yielded no examples")
    tokenizer = _load_tok(recipe, examples, saved_tokenizer)
    encoded = encode(examples, tokenizer, cfg.seq_len if not cfg.packing else None)
    # Held out by problem (its prompt): a problem's correct and incorrect variants never straddle the split, and
    # the split is the same for every algorithm (METHOD.md, critic-wmtp and Fair comparison).
    keys = [e.prompt or f"example-{i}" for i, e in enumerate(examples)]
    tr_idx, val_idx = split_by_problem(keys, recipe.eval.val_fraction, cfg.seed)
    lm_all = algo.name == "critic-wmtp" and algo.train_on == "all"  # train_on filters the LM loss only
    value_train, value_heldout = _value_split(recipe, encoded, keys, tr_idx, val_idx)
    if isinstance(algo, GRPOConfig):
        train_part = ([examples[i] for i in tr_idx], [encoded[i] for i in tr_idx])
        return _grpo_data(algo, tokenizer, *train_part, [encoded[i] for i in val_idx])
    return Data(
        tokenizer=tokenizer,
        train=[encoded[i] for i in tr_idx if encoded[i].reward == 1.0 or lm_all],
        val=[encoded[i] for i in val_idx if encoded[i].reward == 1.0 or lm_all],
        stage1=value_train,
        value_heldout=value_heldout,
        value_extra=[e for e in value_train if e.reward != 1.0 and not lm_all],
    )


def _setup_model(
    *, recipe: Recipe, tokenizer: Any, saved: Path | None, accel: Any
) -> tuple[MTPModel, ValueHead | None]:
    model = _build_model(recipe, tokenizer, saved)
    if recipe.train.freeze == "trunk":  # heads only: the optimiser takes what still requires grad
        for p in model.trunk_parameters():
            p.requires_grad_(False)
    if fsdp.active(recipe, accel.num_processes):  # unit by unit, only this rank's shards stay on the device
        fsdp.shard(model, fsdp.bf16_params(recipe))
    else:
        model = model.to(accel.device)
    model.train()
    critic = recipe.algorithm.name == "critic-wmtp"
    return model, ValueHead(model.hidden_size).to(accel.device) if critic else None


def _setup_reference(
    *, recipe: Recipe, data: Data, accel: Any
) -> tuple[torch.nn.Module | None, list[list[float]] | None]:
    """rho1: the frozen reference LM, or (cache) its CE per training example, computed once by rank 0."""
    algo, seq_len = recipe.algorithm, recipe.train.seq_len
    if algo.name != "rho1-wmtp":
        return None, None
    reference = load_reference(algo.reference, data.tokenizer, accel.device)
    if not algo.cache:
        return reference, None
    if accel.is_main_process:
        chunk = recipe.train.ce_chunk
        cached_reference_ce(reference, data.tokenizer, data.train, seq_len, accel.device, chunk=chunk)
    accel.wait_for_everyone()
    ref_ce = cached_reference_ce(reference, data.tokenizer, data.train, seq_len, accel.device, compute=False)
    return None, ref_ce  # cached: the reference is not needed any more


def _setup_optimizer(
    *, recipe: Recipe, model: MTPModel, value_head: ValueHead | None, n_train: int, world: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, int]:
    """AdamW (no decay on biases and norms; the value head at its own lr), the lr schedule, the step count."""
    cfg, algo, optim = recipe.train, recipe.algorithm, recipe.optim
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": optim.weight_decay, "lr": optim.lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": optim.lr},
    ]
    if value_head is not None:
        value_lr = algo.value_lr if algo.name == "critic-wmtp" else 0.0
        groups.append({"params": list(value_head.parameters()), "weight_decay": 0.0, "lr": value_lr})
    optimizer = torch.optim.AdamW(groups, betas=optim.betas, eps=optim.eps)
    per_step = cfg.batch_size * world * cfg.grad_accum
    total = cfg.steps or max(1, math.ceil((cfg.epochs or 1) * n_train / per_step))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, optim.warmup_steps, total, optim.min_lr_ratio)
    )
    return optimizer, scheduler, total


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to min_ratio at `total` (multiplies each group's lr)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def plan_of(recipe: Recipe, data: list[Encoded], rows: int, seed: int, keep: int = 1) -> Plan:
    """The epoch plan of `data` in global micro-batches of `rows`, a pure function of (seed, epoch) memoised for
    the last `keep` epochs asked for."""
    cfg, lengths = recipe.train, [len(e.ids) for e in data]
    return functools.lru_cache(maxsize=keep)(
        lambda epoch: epoch_plan(lengths, rows, seed, epoch, cfg.packing, cfg.seq_len)
    )


def _batched(recipe: Recipe, tokenizer: Any, data: list[Encoded], device: torch.device) -> list[Batch]:
    cfg = recipe.train
    rows = sorted(range(len(data)), key=lambda i: len(data[i].ids))  # little padding
    return [
        collate(rows[j : j + cfg.batch_size], data, cfg, tokenizer.pad_token_id, None).to(device)
        for j in range(0, len(rows), cfg.batch_size)
    ]


def _build_model(recipe: Recipe, tokenizer: Any, source: Path | None) -> MTPModel:
    dtype = getattr(torch, recipe.model.dtype)
    if source is None and recipe.model.meta_checkpoint:
        return load_meta_mtp(recipe.model.meta_checkpoint, recipe.n_heads, dtype)
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


def _grpo_data(
    algo: GRPOConfig, tokenizer: Any, examples: list[Example], encoded: list[Encoded], val: list[Encoded]
) -> Data:
    """grpo: the training problems' groups; the LM trains on every completion of a group with signal (correct and
    incorrect alike, weighted by A), validates on the held-out problems' correct ones like every algorithm."""
    groups = grpo.offline_groups(examples)
    train = grpo.with_advantages(encoded, grpo.group_advantages_of(examples, algo.eps))
    if not train and algo.refresh_steps == 0:
        raise StudioError(
            "grpo-wmtp needs groups with mixed rewards: completions of the same prompt labelled is_correct 1 and 0 "
            "(set data.generated.incorrect_fraction > 0, label candidates with `wmtp label --model RUN --n G`, or "
            "set algorithm.refresh_steps to sample groups from the model)"
        )
    if algo.refresh_steps and not groups.pool:
        raise StudioError("grpo-wmtp refresh needs training examples with tests to judge the samples against")
    return Data(tokenizer, train, [e for e in val if e.reward == 1.0], [], [], [], groups)


def _budget_examples(data: Data) -> int:
    """Examples an epoch counts (`train.epochs`): the LM's training examples; grpo, whose groups change at each
    refresh (or come only from refreshes), counts the training problems' correct completions, as baseline does,
    so that the same recipe gives both the same number of steps."""
    if data.groups is None:
        return len(data.train)
    return sum(e.is_correct == 1 for e in data.groups.examples)


def _load_tok(recipe: Recipe, examples: list[Any], saved: Path | None) -> Any:
    if saved is not None:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(saved)
    return load_tokenizer(recipe, (e.prompt + e.completion for e in examples))
