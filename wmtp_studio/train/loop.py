"""The training loop on accelerate: `train(run_dir)` reads `recipe.json` and writes only files in `run_dir`.

Reads top to bottom: `setup` (setup.py) builds everything once, `train` runs (critic Stage 1, then) steps and
does what `due` says is due after each; `train_step` (step.py) does one optimiser step over `grad_accum`
micro-batches.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from wmtp_studio import rundir
from wmtp_studio.errors import StudioError, TrainingAborted
from wmtp_studio.recipe import Recipe
from wmtp_studio.rundir.checkpoints import TrainerState as State
from wmtp_studio.rundir.checkpoints import read_trainer_state, write_trainer_state
from wmtp_studio.train import checkpoint as ckpt
from wmtp_studio.train import fsdp, grpo, lifecycle
from wmtp_studio.train.critic import heldout_value_stats, stage1
from wmtp_studio.train.data import Batch, collate, epoch_plan
from wmtp_studio.train.loss import HIST_EDGES
from wmtp_studio.train.setup import Setup, setup
from wmtp_studio.train.step import StepResult, head_metrics, reduce_sum, sum_grads, train_step, validate

EXIT_INTERRUPTED = 143  # 128 + SIGTERM: checkpointed, can be resumed
log = logging.getLogger("wmtp.train")  # progress lines for train.log (python -m wmtp_studio.train sets it up)


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
    """Every rank stores its RNG state (and, under FSDP, its shards), rank 0 the rest; published atomically (see
    checkpoint.py)."""
    staging = ckpt.staging_dir(s.run_dir, state.step)
    full = fsdp.full_state(s.model) if s.fsdp else None  # every rank takes part in gathering onto rank 0
    if s.accel.is_main_process:
        named = full.items() if full is not None else s.model.named_parameters()
        ckpt.assert_finite(named, f"step {state.step}")
        if staging.exists():
            import shutil

            shutil.rmtree(staging)
        staging.mkdir(parents=True)
    s.accel.wait_for_everyone()
    torch.save(ckpt.rng_state(), staging / f"rng_{s.accel.process_index}.pt")
    if s.fsdp:
        fsdp.save_sharded(s.model, s.value_head, s.optimizer, staging / fsdp.DCP_DIR)
    s.accel.wait_for_everyone()
    if s.accel.is_main_process:
        s.model.save(staging / "model", full)
        s.tokenizer.save_pretrained(staging / "model")
        if s.value_head is not None:
            save_file(s.value_head.state_dict(), str(staging / "value_head.safetensors"))
        if s.groups is not None:
            grpo.save_groups(s.groups, staging)
        if not s.fsdp:
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


def restore(s: Setup, path: Path) -> None:
    """Load value head, optimiser, scheduler and RNG (the model and tokenizer were built from path/model, and the
    trainer state was read before `setup`, which opens metrics.jsonl where that state left it)."""
    if s.value_head is not None:
        # read on the CPU: safetensors refuses accelerate's "cpu:0" of a multi-process CPU run
        s.value_head.load_state_dict(load_file(str(path / "value_head.safetensors")))
    if (path / fsdp.DCP_DIR).is_dir():  # sharded: model, value head and optimiser state
        fsdp.load_sharded(s.model, s.value_head, s.optimizer, path / fsdp.DCP_DIR)
    elif s.fsdp:
        raise StudioError(
            f"{path.name} was written by one process (optimizer.pt, not sharded): resume it on one process, "
            "or start the FSDP run afresh"
        )
    else:
        s.optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location=s.accel.device, weights_only=True)
        )
    s.scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng = path / f"rng_{s.accel.process_index}.pt"
    if rng.is_file():
        ckpt.set_rng_state(torch.load(rng, weights_only=False))


def export_model(s: Setup) -> None:
    """The final model as `run_dir/model` (HF-loadable head-0 model + heads + tokenizer), published atomically."""
    full = fsdp.full_state(s.model) if s.fsdp else None  # every rank takes part in gathering onto rank 0
    if not s.accel.is_main_process:
        return
    import shutil

    tmp, final = s.run_dir / ".model.tmp", s.run_dir / "model"
    shutil.rmtree(tmp, ignore_errors=True)
    s.model.save(tmp, full)
    s.tokenizer.save_pretrained(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.replace(final)


def _run_stage1(s: Setup, state: State) -> None:
    algo = s.recipe.algorithm
    assert algo.name == "critic-wmtp" and s.value_head is not None
    cfg = s.recipe.train
    train_part = s.stage1_data  # labelled examples of the training problems; held-out problems never straddle

    def stream() -> Iterator[Batch]:  # this process's share of each global batch, as in Stage 2
        epoch, b, rank = 0, cfg.batch_size, s.accel.process_index
        while True:
            for rows in epoch_plan(
                [len(e.ids) for e in train_part],
                b * s.world,
                cfg.seed + 1,
                epoch,
                cfg.packing,
                cfg.seq_len,
            ):
                mine = rows[rank * b : (rank + 1) * b]
                yield collate(mine, train_part, cfg, s.tokenizer.pad_token_id, None).to(s.accel.device)
            epoch += 1

    steps = stage1(
        s.model,
        s.value_head,
        algo.stage1,
        stream(),
        s.value_heldout_batches,
        lambda step, m: s.writer.write("stage1", step, metrics=m),
        cfg.grad_clip,
        reduce=lambda v: reduce_sum(s, v),
        sum_grads=lambda params: sum_grads(params, s.world),
    )
    state.stage1_done = True
    s.writer.write("event", 0, event="stage1_done", data={"steps": steps})
    log.info("critic stage 1 done after %d steps", steps)


def _value_heldout_metrics(s: Setup, state: State) -> dict[str, float]:
    """critic Stage 2: held-out value loss, explained variance (or that it is undefined) and mean V by label."""
    if s.value_head is None:
        return {}
    stats = heldout_value_stats(s.model, s.value_head, s.value_heldout_batches)
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
    metrics |= head_metrics(r.heads) | r.diag.means() | grpo.group_metrics(s.groups)
    if torch.cuda.is_available():
        metrics["gpu_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    s.writer.write("train", state.step, metrics=metrics)
    if s.mlflow:
        s.mlflow.log(metrics, state.step)
    return metrics


@dataclass(frozen=True)
class Due:
    """What is due once step N is done (`train.*_every`, `eval.val_every`); the last step always logs and
    validates. `checkpoint` is the periodic one: the final checkpoint is written after the loop."""

    log: bool
    hist: bool
    top_tokens: bool
    validate: bool
    checkpoint: bool

    @property
    def detail(self) -> bool:
        """The step keeps its weight histograms and weights (costly: only for the steps that log them)."""
        return self.hist or self.top_tokens


def due(recipe: Recipe, step: int, total: int) -> Due:
    """The loop's one schedule: what to do after optimiser step `step` of `total`."""
    cfg, last = recipe.train, step == total
    return Due(
        log=step % cfg.log_every == 0 or last,
        hist=step % cfg.hist_every == 0,
        top_tokens=step % cfg.top_tokens_every == 0,
        validate=step % recipe.eval.val_every == 0 or last,
        checkpoint=step % cfg.checkpoint_every == 0 and step < total,
    )


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
    # Set-up: the trainer state first (where metrics.jsonl resumes), then everything else, frozen in `s`.
    state = read_trainer_state(latest) if latest else State()
    s = setup(run_dir, latest, record=True, seq=state.seq, offset=state.metrics_offset if latest else 0)
    if latest:
        restore(s, latest)
        s = grpo.restore_groups(s, latest)  # grpo: the groups in force at the checkpoint
    main = s.accel.is_main_process
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
    # critic Stage 1: the value head learns V before any LM step (once; a resumed run has done it).
    if s.recipe.algorithm.name == "critic-wmtp" and not state.stage1_done:
        _run_stage1(s, state)
    cfg = s.recipe.train
    tick, tick_tokens = time.perf_counter(), 0
    try:
        if grpo.refresh_due(s, state):  # grpo: groups sampled at step 0, or resumed from before a refresh
            s = grpo.refresh(s, state)
            tick = time.perf_counter()
        while state.step < s.total_steps:
            # One optimiser step; it keeps histograms and weights only when a step that logs them is next.
            todo = due(s.recipe, state.step + 1, s.total_steps)
            stopping = stop["requested"] or lifecycle.supervisor_gone()  # an orphan checkpoints and exits
            r = train_step(s, state, todo.detail, stopping)
            tick_tokens += r.tokens
            # A non-finite step is skipped (not counted); too many in a row abort the run.
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
            # Rank 0 records what is due at this step: the train line, histograms, top tokens, validation.
            if main:
                if todo.log:
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
                if todo.hist and r.heads.hist is not None:
                    s.writer.write(
                        "hist", state.step, data={"edges": list(HIST_EDGES), "heads": r.heads.hist.tolist()}
                    )
                if todo.top_tokens and r.heads.weights:
                    s.writer.write("top_tokens", state.step, data=_top_tokens(s, r))
                if todo.validate:
                    val = (validate(s) if s.val_data else {}) | _value_heldout_metrics(s, state)
                    if val:
                        s.writer.write("val", state.step, metrics=val)
                        if "val_loss" in val:
                            log.info("step %d/%d val_loss %.4f", state.step, s.total_steps, val["val_loss"])
            elif todo.validate and s.fsdp:  # the sharded model's forward is a collective: run it with rank 0
                if s.val_data:
                    validate(s)
                _value_heldout_metrics(s, state)
            # grpo on-policy refresh: new groups before the checkpoint, so that it holds them; not in step time
            if not r.stop and grpo.refresh_due(s, state):
                s = grpo.refresh(s, state)
                tick = time.perf_counter()
            # A stop request (SIGTERM, or the supervising worker gone) checkpoints and exits; else periodic ones.
            if r.stop:
                save_checkpoint(s, state)
                s.writer.write("event", state.step, event="interrupted")
                log.info("interrupted: checkpoint at step %d; the run resumes from it", state.step)
                return EXIT_INTERRUPTED
            if todo.checkpoint:
                save_checkpoint(s, state)
        # Done: the last checkpoint, then the model every evaluation and later run reads.
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
