"""grpo-wmtp's groups: the data's own (offline), or sampled by the current model and labelled by the sandbox (refresh).

A group is every completion of one prompt (the key `split_by_problem` uses: a problem never straddles the
train/validation split). `GroupSet` is the groups the loop trains on; its completions' advantages come from
`weights.group_advantages`, and the groups without signal (all rewards equal) never reach a batch: their weight
would be 0 (DAPO's dynamic sampling, arXiv 2503.14476, drops them too). They are counted in the stats.

On-policy refresh (`refresh_steps: N`): after every N optimiser steps, the current model samples G completions
per training prompt with the KV-cache sampler, the sandbox judges them as `wmtp label` does (every process its
share of the prompts, then every process gathers all the samples: grpo_refresh.py), rank 0 writes them to
`grpo/step_<n>.jsonl` in the run directory, and training goes on with those groups from the start of a fresh
epoch plan (seeded with train.seed + n). Resume: the groups in force are
part of each checkpoint (`grpo_groups.json`, the labelled completions themselves), so a resumed run trains on
exactly the groups the uninterrupted one did, whatever the sampler's nondeterminism on a GPU.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from wmtp_studio.errors import StudioError
from wmtp_studio.recipe_algorithms import GRPOConfig
from wmtp_studio.train.data import Encoded, Example, encode
from wmtp_studio.train.grpo_refresh import refresh_prompts, sampled_and_judged
from wmtp_studio.train.weights import group_advantages

if TYPE_CHECKING:
    from wmtp_studio.rundir.checkpoints import TrainerState
    from wmtp_studio.train.setup import Setup

GROUPS_FILE = "grpo_groups.json"
"""In each checkpoint of a grpo-wmtp run: the groups in force and the step of the refresh that made them."""


@dataclass(frozen=True)
class GroupSet:
    """The groups a grpo-wmtp run trains on now."""

    pool: tuple[Example, ...]  # one example per training prompt with tests: what a refresh samples for
    examples: tuple[Example, ...]  # every labelled completion of the current groups (with and without signal)
    made_at: int  # optimiser step of the refresh that sampled them; -1: the data's own groups
    stats: dict[str, float]  # group counts and reward statistics (and the refresh's timings)


def group_advantages_of(examples: list[Example] | tuple[Example, ...], eps: float) -> list[float | None]:
    """A_i of each completion over its prompt's group (`weights.group_advantages`); None where it has no signal."""
    if not examples:
        return []
    ids: dict[str, int] = {}
    group = torch.tensor([ids.setdefault(e.prompt, len(ids)) for e in examples])
    rewards = torch.tensor([float(e.is_correct) for e in examples])
    adv, signal = group_advantages(rewards, group, eps=eps)
    return [float(a) if s else None for a, s in zip(adv.tolist(), signal.tolist(), strict=True)]


def group_stats(examples: list[Example] | tuple[Example, ...]) -> dict[str, float]:
    """Groups, the fraction without signal (zero reward variance), mean reward over completions and the mean over
    groups of the reward's population std."""
    groups: dict[str, list[float]] = {}
    for e in examples:
        groups.setdefault(e.prompt, []).append(float(e.is_correct))
    stds = [float(torch.tensor(r).std(correction=0)) for r in groups.values()]
    n = max(1, len(groups))
    return {
        "groups": float(len(groups)),
        "zero_var_groups": float(sum(s == 0 for s in stds)),
        "zero_var_fraction": sum(s == 0 for s in stds) / n,
        "reward_mean": sum(float(e.is_correct) for e in examples) / max(1, len(examples)),
        "reward_std": sum(stds) / n,
    }


def with_advantages(encoded: list[Encoded], advantages: list[float | None]) -> list[Encoded]:
    """The encoded completions whose group carries signal, each with its A (the others would weigh 0)."""
    return [replace(e, advantage=a) for e, a in zip(encoded, advantages, strict=True) if a is not None]


def offline_groups(examples: list[Example]) -> GroupSet:
    """The data's own groups (the training split's examples, labelled by `is_correct`)."""
    # one example per prompt, in data order; a correct one where there is one (its id is the task's own)
    pool: dict[str, Example] = {}
    for e in examples:
        if e.tests and (e.prompt not in pool or (e.is_correct and not pool[e.prompt].is_correct)):
            pool[e.prompt] = e
    return GroupSet(tuple(pool.values()), tuple(examples), -1, group_stats(examples))


def group_metrics(groups: GroupSet | None) -> dict[str, float]:
    """The train line's grpo scalars: group reward mean/std, zero-variance fraction, last refresh's timings."""
    return {f"grpo/{k}": v for k, v in groups.stats.items()} if groups is not None else {}


def refresh_due(s: Setup, state: TrainerState) -> bool:
    """Whether the loop refreshes the groups before the next step: every `refresh_steps` steps (once per step,
    not at the end), and at step 0 when the data's groups carry no signal."""
    algo, groups = s.recipe.algorithm, s.groups
    if not isinstance(algo, GRPOConfig) or groups is None or algo.refresh_steps == 0:
        return False
    if state.step >= s.total_steps or groups.made_at == state.step:
        return False
    return state.step % algo.refresh_steps == 0 and (state.step > 0 or not s.train_data)


def refresh(s: Setup, state: TrainerState) -> Setup:
    """Sample, judge and switch to new groups (see the module docstring); the data position restarts at epoch 0."""
    algo = s.recipe.algorithm
    assert isinstance(algo, GRPOConfig) and s.groups is not None
    path = s.run_dir / "grpo" / f"step_{state.step}.jsonl"
    prompts = refresh_prompts(s.groups.pool, algo.refresh_prompts, s.recipe.train.seed, state.step)
    examples, gen_s, judge_s = sampled_and_judged(s, prompts, state.step)
    if s.accel.is_main_process:
        _write_jsonl(path, examples)
    stats = group_stats(examples)
    samples = max(1, len(examples))
    timing = {
        "gen_s": gen_s,
        "judge_s": judge_s,
        "samples": float(len(examples)),
        "gen_s_per_sample": gen_s / samples,
        "judge_s_per_sample": judge_s / samples,
    }
    kept = examples
    if stats["zero_var_fraction"] == 1.0:  # nothing to learn from this refresh: keep the groups in force
        if not s.train_data:
            raise StudioError(
                f"grpo-wmtp: no group of the refresh at step {state.step} has mixed rewards (every prompt's "
                f"{algo.group_size} samples all passed or all failed), and there are no earlier groups to train on"
            )
        kept = list(s.groups.examples)
    s.writer.write(
        "event",
        state.step,
        event="grpo_refresh",
        data={
            "path": str(path.relative_to(s.run_dir)),
            "samples": len(examples),
            "processes": s.world,
            "kept_previous": kept is not examples,
        }
        | stats
        | timing,
    )
    state.epoch, state.batch_index = 0, 0
    return with_groups(s, GroupSet(s.groups.pool, tuple(kept), state.step, group_stats(kept) | timing))


def with_groups(s: Setup, groups: GroupSet) -> Setup:
    """`s` training on `groups`: their signal-carrying completions, in a plan seeded by train.seed + made_at."""
    algo, cfg = s.recipe.algorithm, s.recipe.train
    assert isinstance(algo, GRPOConfig)
    from wmtp_studio.train.setup import plan_of

    encoded = encode(list(groups.examples), s.tokenizer, cfg.seq_len if not cfg.packing else None)
    train = with_advantages(encoded, group_advantages_of(groups.examples, algo.eps))
    plan = plan_of(s.recipe, train, cfg.batch_size * s.world, cfg.seed + max(0, groups.made_at))
    return replace(s, train_data=train, train_plan=plan, groups=groups)


def _record(e: Example) -> dict[str, Any]:
    return asdict(e) | {"tests": list(e.tests)}


def _example(rec: dict[str, Any]) -> Example:
    return Example(rec["prompt"], rec["completion"], int(rec["is_correct"]), tuple(rec["tests"]), rec["id"])


def _write_jsonl(path: Path, examples: list[Example]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(_record(e)) + "\n" for e in examples))
    tmp.replace(path)


def save_groups(groups: GroupSet, checkpoint: Path) -> None:
    """The groups in force, in a checkpoint (refreshed ones only: the data's own are rebuilt from the data)."""
    if groups.made_at < 0:
        return
    data = {
        "made_at": groups.made_at,
        "stats": groups.stats,
        "examples": [_record(e) for e in groups.examples],
    }
    (checkpoint / GROUPS_FILE).write_text(json.dumps(data))


def restore_groups(s: Setup, checkpoint: Path) -> Setup:
    """`s` on the groups saved in `checkpoint` (unchanged when it trained on the data's own groups)."""
    path = checkpoint / GROUPS_FILE
    if s.groups is None or not path.is_file():
        return s
    try:
        data = json.loads(path.read_text())
        examples = tuple(_example(r) for r in data["examples"])
        groups = GroupSet(s.groups.pool, examples, int(data["made_at"]), dict(data["stats"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise StudioError(f"{path}: not the groups of a grpo-wmtp checkpoint ({exc})") from None
    return with_groups(s, groups)
