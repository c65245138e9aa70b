"""The algorithm sections of a recipe: one per algorithm, told apart by `name`."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import Field, model_validator

from wmtp_studio.recipe_sections import Flag, Int, Real, Section

Algorithm = Literal["ntp", "baseline-mtp", "critic-wmtp", "rho1-wmtp", "grad-wmtp", "grpo-wmtp"]
ALGORITHMS: tuple[Algorithm, ...] = (
    "ntp",
    "baseline-mtp",
    "critic-wmtp",
    "rho1-wmtp",
    "grad-wmtp",
    "grpo-wmtp",
)


class NTPConfig(Section):
    """Next-token prediction control: n = 1 head, w = 1."""

    name: Literal["ntp"] = "ntp"
    """Algorithm name."""


class BaselineMTPConfig(Section):
    """Uniform-weight multi-token prediction: w = 1 for every head and token."""

    name: Literal["baseline-mtp"] = "baseline-mtp"
    """Algorithm name."""


class ClippedWeights(Section):
    """Base of an algorithm whose weights are clipped to the range its `clip_fields` name: it must be ordered."""

    clip_fields: ClassVar[tuple[str, str]] = ("w_min", "w_max")

    @model_validator(mode="after")
    def _clip_range(self) -> Self:
        (low_name, low), (high_name, high) = ((f, getattr(self, f)) for f in self.clip_fields)
        if low > high:
            raise ValueError(f"{low_name} ({low}) must be at most {high_name} ({high})")
        return self


class Stage1Config(Section):
    """Value pre-training with the trunk frozen (critic-wmtp Stage 1)."""

    steps: Int = Field(200, ge=0)
    """Maximum Stage 1 steps (0 skips Stage 1)."""
    lr: Real = Field(1e-3, gt=0, le=1)
    """Learning rate of the value head in Stage 1."""
    heldout_fraction: Real = Field(0.1, gt=0, lt=1)
    """Held-out value problems when `eval.val_fraction` is 0 (else the validation problems are): split by problem."""
    eval_every: Int = Field(25, ge=1)
    """Measure held-out value loss every this many Stage 1 steps."""
    patience: Int = Field(4, ge=1)
    """Stop early after this many held-out measurements without improvement."""


class CriticConfig(ClippedWeights):
    """critic-wmtp: a value head trained on verifiable is-correct rewards; TD errors become token weights."""

    name: Literal["critic-wmtp"] = "critic-wmtp"
    """Algorithm name."""
    gamma: Real = Field(1.0, ge=0, le=1)
    """Discount gamma in delta_j = gamma V(s_j) - V(s_{j-1})."""
    gae_lambda: Real = Field(0.0, ge=0, le=1)
    """GAE lambda; 0 uses the one-step TD error."""
    beta: Real = Field(1.0, gt=0)
    """Temperature in w = exp(norm(delta) / beta)."""
    w_min: Real = Field(0.1, ge=0)
    """Lower clip of the weights."""
    w_max: Real = Field(5.0, gt=0)
    """Upper clip of the weights."""
    norm: Literal["zscore", "none"] = "zscore"
    """Normalisation of delta over the valid entries of the batch before the exponential."""
    mean_one: Flag = True
    """Rescale each head's weights to mean 1 over valid entries."""
    value_coef: Real = Field(0.5, ge=0)
    """c_v in L_total = L + c_v MSE(V, R) (Stage 2 value continual learning)."""
    value_lr: Real = Field(1e-4, gt=0, le=1)
    """Learning rate of the value head in Stage 2."""
    value_trunk_grad: Flag = False
    """Let the value loss train the trunk (default: value head inputs are detached)."""
    train_on: Literal["correct", "all"] = "correct"
    """Stage 2 LM loss on correct examples only (same tokens as baseline) or on all labelled examples."""
    stage1: Stage1Config = Stage1Config()
    """Stage 1 settings."""


class Rho1Config(ClippedWeights):
    """rho1-wmtp: excess loss against a frozen reference model selects or weights tokens (Rho-1)."""

    clip_fields: ClassVar[tuple[str, str]] = ("eps", "w_max")

    name: Literal["rho1-wmtp"] = "rho1-wmtp"
    """Algorithm name."""
    reference: str
    """Reference causal LM: HF id, local HF directory, or a WMTP run's `model` directory."""
    mode: Literal["select", "weighted"] = "select"
    """`select`: keep the top `ratio` tokens per head; `weighted`: softmax weights of the z-scored excess loss."""
    ratio: Real = Field(0.6, gt=0, le=1)
    """Fraction of valid entries kept per head (select)."""
    keep_head0: Flag = True
    """Keep every head-0 entry (select)."""
    temperature: Real = Field(1.0, gt=0)
    """Softmax temperature T (weighted)."""
    eps: Real = Field(0.05, ge=0)
    """Lower clip of the weights (weighted)."""
    w_max: Real = Field(3.0, gt=0)
    """Upper clip of the weights (weighted)."""
    cache: Flag = True
    """Compute the reference CE once per (reference, tokenizer, data, seq_len) and reuse it; else live."""


class GradConfig(ClippedWeights):
    """grad-wmtp: each token's importance is the norm of its CE gradient, normalised by a per-head running EMA."""

    name: Literal["grad-wmtp"] = "grad-wmtp"
    """Algorithm name."""
    score: Literal["logit", "hidden"] = "logit"
    """Gradient whose norm scores an entry: w.r.t. the head's logits, ||softmax(z) - onehot||, or w.r.t. its last
    hidden state (the unembedding's input), ||W_out^T (softmax(z) - onehot)|| (one more unembedding-sized matmul)."""
    momentum: Real = Field(0.99, ge=0, lt=1)
    """EMA momentum of each head's running score mean and variance (mu <- m mu + (1 - m) step mean)."""
    beta: Real = Field(1.0, gt=0)
    """Temperature in w = exp(z / beta), z = (s - mu) / sigma."""
    w_min: Real = Field(0.1, ge=0)
    """Lower clip of the weights."""
    w_max: Real = Field(5.0, gt=0)
    """Upper clip of the weights."""
    norm: Literal["zscore", "none"] = "zscore"
    """`zscore`: z = (s - mu) / sigma with the running EMA statistics; `none`: z = s."""
    mean_one: Flag = True
    """Rescale each head's weights to mean 1 over valid entries."""
    mean_one_over: Literal["step", "micro-batch"] = "step"
    """Where that mean is taken. `step`: over every micro-batch and process, so that grad_accum and the process
    count do not change the weights (as critic's and grpo's): one micro-batch per process all-reduces each head's
    mean in the pass; with grad_accum > 1 the step scores its micro-batches first, one forward without gradients
    each (1.33x the step's matmul FLOPs). `micro-batch`: each micro-batch's own on each process (no extra forward)."""


class GRPOConfig(ClippedWeights):
    """grpo-wmtp: group-relative verifiable rewards (DeepSeekMath GRPO, arXiv 2402.03300) become token weights.

    A group is the completions of one prompt; A_i = (R_i - mean R) / (std R + eps) over the group (population
    std); every token of completion i gets w = clip(exp(A_i / beta), w_min, w_max). Groups whose rewards are all
    equal carry no signal (weight 0). Critic-free, and weighted MTP, not a policy gradient: w >= 0, detached."""

    name: Literal["grpo-wmtp"] = "grpo-wmtp"
    """Algorithm name."""
    group_size: Int = Field(4, ge=2, le=1024)
    """G: completions sampled per prompt at each refresh (offline groups are every completion of a prompt in the
    data, whatever their number)."""
    beta: Real = Field(1.0, gt=0)
    """Temperature in w = exp(A / beta)."""
    eps: Real = Field(1e-4, gt=0, le=1)
    """epsilon in A = (R - mean R) / (std R + eps)."""
    w_min: Real = Field(0.1, ge=0)
    """Lower clip of the weights."""
    w_max: Real = Field(5.0, gt=0)
    """Upper clip of the weights."""
    norm: Literal["none", "zscore"] = "none"
    """Normalisation of the advantages over the valid entries of the batch before the exponential (as critic's;
    default none: A is already normalised within its group)."""
    mean_one: Flag = True
    """Rescale each head's weights to mean 1 over valid entries."""
    refresh_steps: Int = Field(0, ge=0)
    """On-policy refresh: every this many optimiser steps the current model samples G completions per training
    prompt, the sandbox labels them, and training goes on with those groups; 0 trains on the data's groups only."""
    refresh_prompts: Int | None = Field(None, ge=1)
    """Training prompts sampled at each refresh (drawn with train.seed and the step); none: every one."""
    temperature: Real = Field(0.8, gt=0)
    """Sampling temperature of a refresh (above 0: G greedy samples would be one)."""
    top_p: Real = Field(0.95, gt=0, le=1)
    """Nucleus threshold of a refresh."""
    max_new_tokens: Int = Field(128, ge=1)
    """Generation budget per sample of a refresh."""


AlgorithmConfig = Annotated[
    NTPConfig | BaselineMTPConfig | CriticConfig | Rho1Config | GradConfig | GRPOConfig,
    Field(discriminator="name"),
]
