"""Recipes: what to train, as a typed pydantic model loaded from YAML.

`load_recipe(path, overrides)` substitutes `${VAR}` / `${VAR:-default}` from the environment, reads the YAML
(strict_yaml.py: bounded size and depth, no duplicate keys), applies dotted overrides (`optim.lr=3e-4`) and
validates. Unknown keys are errors at every level; numbers are strict (counts are integers that fit 32 bits, not
`true` or `2.0`; reals are finite; switches are booleans). Any problem raises one `RecipeError` naming the file and
the dotted path of the field.

Secrets: a variable whose name looks secret (recipe_text.py) must be set, but its value never reaches YAML, the
validation or a message: it stays a `${VAR}` reference in the recipe (canonical JSON, hash, database, recipe.json,
MLflow), so it only fits text fields; the trainer resolves it from its own environment
(`recipe_from_json(..., resolve_secrets=True)`), redacting it from any error there.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from wmtp_studio import strict_yaml
from wmtp_studio.errors import RecipeError
from wmtp_studio.recipe_text import apply_override, redact, resolve_secret_refs, restore_refs, substitute_env

Algorithm = Literal["ntp", "baseline-mtp", "critic-wmtp", "rho1-wmtp", "grad-wmtp", "grpo-wmtp"]
ALGORITHMS: tuple[Algorithm, ...] = (
    "ntp",
    "baseline-mtp",
    "critic-wmtp",
    "rho1-wmtp",
    "grad-wmtp",
    "grpo-wmtp",
)
INT_MAX = 2**31 - 1
"""Largest count or seed: what every consumer holds (numpy seeds, torch sizes, 32-bit SQL integer columns)."""
MAX_ERRORS = 20
"""Validation errors listed in one message; the rest are counted."""


def _not_bool(value: Any) -> Any:
    # pydantic's lax float turns `true` into 1.0; a boolean where a number belongs is a typo, not a number
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "Input should be a number, not a boolean")
    return value


Int = Annotated[int, Field(strict=True, le=INT_MAX)]
"""A count or seed: an integer (`true`, `2.0` and `"2"` are refused) of at most INT_MAX."""
Real = Annotated[float, BeforeValidator(_not_bool), Field(allow_inf_nan=False)]
"""A real number: finite (`.inf`, `.nan` are refused), not a boolean; YAML's `3e-4` (a string to YAML) is read."""
Flag = Annotated[bool, Field(strict=True)]
"""A switch: `true` or `false` (1 and "yes" in quotes are refused)."""
Beta = Annotated[Real, Field(ge=0, lt=1)]


class Section(BaseModel):
    """Base of every recipe section: unknown keys are errors, field docstrings are the documentation."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class TinyModel(Section):
    """A small causal LM built locally from a config (no download), for tests, CPU runs and the quickstart."""

    arch: Literal["llama", "gpt2"] = "llama"
    """Architecture family of the transformers config to build."""
    hidden_size: Int = Field(128, ge=8)
    """Width of the residual stream."""
    num_layers: Int = Field(2, ge=1)
    """Decoder layers in total (with transformer heads the trunk has num_layers - 1 of them)."""
    num_attention_heads: Int = Field(4, ge=1)
    """Attention heads per layer; must divide hidden_size."""
    intermediate_size: Int | None = Field(None, ge=1)
    """MLP width; defaults to 4 x hidden_size."""
    max_position_embeddings: Int = Field(512, ge=16)
    """Longest sequence the model can read."""

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TinyModel:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("num_attention_heads must divide hidden_size")
        return self


class ModelSection(Section):
    """The network: a base causal LM plus n output heads."""

    name_or_path: str | None = None
    """Hugging Face model id, a local HF model directory, or a WMTP checkpoint (`runs/<id>/model`). Exclusive
    with `tiny` and `meta_checkpoint`."""
    tiny: TinyModel | None = None
    """Build a small model from this config instead of loading one."""
    meta_checkpoint: str | None = None
    """A local directory holding one of Meta's multi-token-prediction checkpoints (`params.json` and
    `consolidated.pth`, as in `facebook/multi-token-prediction`), loaded into transformer heads: the trunk and
    head 0 become a HF Llama, Meta's extra heads the extra heads. Set `tokenizer.path` to the Llama 2 tokenizer."""
    n_heads: Int = Field(4, ge=1, le=16)
    """Number of output heads n; head k predicts the token k+1 steps ahead. The `ntp` algorithm always uses 1
    (an ntp recipe is stored with 1, and head_coefficients cut to head 0's)."""
    heads: Literal["transformer", "linear"] = "transformer"
    """`transformer`: each head is one decoder layer (Gloeckle et al. 2024); `linear`: a residual block on the
    final hidden state (Medusa-like)."""
    head_coefficients: list[Real] | None = None
    """Loss coefficient c_k per head (default 1.0 each); e.g. [1, 0.5, 0.25, 0.125] down-weights far heads."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the weights are loaded in (mixed precision is `train.mixed_precision`)."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelSection:
        sources = (self.name_or_path, self.tiny, self.meta_checkpoint)
        if sum(s is not None for s in sources) != 1:
            raise ValueError("give exactly one of name_or_path, tiny and meta_checkpoint")
        if self.meta_checkpoint is not None and self.heads != "transformer":
            raise ValueError("meta_checkpoint holds transformer heads: set heads: transformer")
        if self.meta_checkpoint is not None and self.meta_checkpoint.startswith("run:"):
            raise ValueError("a studio run's model is not a Meta checkpoint: give it as name_or_path: run:N")
        if self.head_coefficients is not None and len(self.head_coefficients) != self.n_heads:
            raise ValueError(
                f"head_coefficients has {len(self.head_coefficients)} entries, n_heads is {self.n_heads}"
            )
        if self.head_coefficients is not None and any(c < 0 for c in self.head_coefficients):
            raise ValueError("head_coefficients must be >= 0")
        return self


class TokenizerSection(Section):
    """Where token ids come from."""

    kind: Literal["model", "bpe"] = "model"
    """`model`: the base model's own HF tokenizer (or `path`); `bpe`: a byte-level BPE trained locally on the
    training data and cached."""
    path: str | None = None
    """HF tokenizer id or directory (kind `model`); defaults to model.name_or_path."""
    vocab_size: Int = Field(512, ge=260)
    """Vocabulary size of a locally trained BPE (kind `bpe`)."""
    cache_dir: str | None = None
    """Where trained BPE tokenizers are cached; defaults to `$WMTP_HOME/tokenizers` (~/.wmtp/tokenizers)."""


class GeneratedData(Section):
    """Procedurally generated single-function Python problems with asserts (see wmtp_studio.gentask)."""

    family: Literal["basic", "compose"] = "basic"
    """Template family: `basic` (one operation) or `compose` (two chained operations, harder)."""
    num_train: Int = Field(4000, ge=1)
    """Problems in the training split."""
    num_test: Int = Field(200, ge=1)
    """Problems in the held-out test split (disjoint from train)."""
    incorrect_fraction: Real = Field(0.0, ge=0.0, le=1.0)
    """Fraction of training problems that also get an incorrect solution labelled is_correct = 0."""
    seed: Int = Field(0, ge=0)
    """Generator seed (independent of the training seed)."""


class DataSection(Section):
    """Training data."""

    source: Literal["generated", "mbpp", "jsonl", "code_dir"] = "generated"
    """`generated` task, MBPP (standard fields), generic JSONL (prompt, completion, is_correct?, tests?), or a
    directory of code files for packed pre-training."""
    path: str | None = None
    """MBPP JSON/JSONL file or HF dataset id, JSONL file, or code directory."""
    split: str = "train"
    """MBPP split: `train` (task ids 601-974), `validation` (511-600), `test` (11-510) or `prompt` (1-10), chosen by
    task id from a file or an HF dataset alike."""
    generated: GeneratedData = GeneratedData()
    """Settings of the generated task (source `generated`)."""
    extensions: list[str] = [".py"]
    """File suffixes read from a code directory."""
    max_examples: Int | None = Field(None, ge=1)
    """Use at most this many examples (a sample drawn with train.seed, kept in source order)."""

    @model_validator(mode="after")
    def _path_when_needed(self) -> DataSection:
        if self.source in ("mbpp", "jsonl", "code_dir") and not self.path:
            raise ValueError(f"data.path is required for source {self.source!r}")
        return self


class TrainSection(Section):
    """The optimisation budget and batching."""

    steps: Int | None = Field(None, ge=1)
    """Optimiser steps (exclusive with epochs; one of them is required)."""
    epochs: Real | None = Field(None, gt=0, le=10_000)
    """Passes over the data (converted to steps; at most 10,000)."""
    batch_size: Int = Field(8, ge=1)
    """Sequences per micro-batch per process. Global batch = batch_size x grad_accum x processes."""
    grad_accum: Int = Field(1, ge=1)
    """Micro-batches accumulated per optimiser step."""
    seq_len: Int = Field(256, ge=8)
    """Maximum tokens per sequence; longer examples are truncated (or cut into seq_len chunks when packing)."""
    packing: Flag = False
    """Pack examples into rows of seq_len tokens; each attends only to itself (block-diagonal attention, positions
    from 0), so a packed row trains like its examples alone, and the loss mask never crosses an example boundary."""
    loss_on: Literal["completion", "all"] = "completion"
    """Train on completion tokens only (SFT) or on every token (pre-training on raw code)."""
    seed: Int = Field(0, ge=0)
    """Seed of every RNG (python, numpy, torch) and of the data order."""
    grad_clip: Real = Field(1.0, gt=0)
    """Clip the global gradient norm to this value (every algorithm)."""
    mixed_precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 autocast on GPU, fp32 on CPU; `fp32` or `bf16` to force one."""
    parallel: Literal["ddp", "fsdp"] = "ddp"
    """Several processes: `ddp` keeps a whole model on each and sums the gradients; `fsdp` shards parameters,
    gradients and optimiser state over them (FSDP2: each decoder layer and each head its own unit; with bf16 the
    parameters compute in bf16 and gradients are reduced in fp32) and checkpoints them with torch distributed
    checkpoint, for models whose AdamW state does not fit one device. One process: the same either way."""
    naive_loss: Flag = False
    """Materialise all heads' logits at once (tests and memory benchmarks); default is per-head backward."""
    freeze: Literal["none", "trunk"] = "none"
    """`trunk`: train the heads only. The trunk (embedding and every decoder layer below the head layers; with
    linear heads the whole base model) keeps its weights and gets no backward; head 0's layer, the extra heads,
    and the final norm and unembedding (unless tied to the frozen input embedding) train."""
    ce_chunk: Int | None = Field(None, ge=0)
    """Compute each head's unembedding and cross-entropy over this many sequence positions at a time, so that a
    head's (batch, seq_len, vocab) logits never exist at once, in the backward too; also the rho1 reference's.
    Weights that do not read the CE (ntp, baseline-mtp, critic-wmtp, grpo-wmtp, rho1 select over several
    micro-batches or processes, chosen before the pass) or read only each entry's own gradient score (grad-wmtp)
    get each chunk's gradients in the pass that computes its CE; with weights read from the whole batch's CE (rho1
    weighted, rho1 select on one micro-batch of one process) the chunk's logits are recomputed in the backward: one
    extra unembedding forward per head. 0 or null: off. Worth it with large vocabularies (32k+), where the logits
    outweigh the trunk's activations."""
    max_nonfinite: Int = Field(5, ge=1)
    """Abort after this many consecutive steps with a non-finite loss or gradient."""
    log_every: Int = Field(10, ge=1)
    """Write a metrics line every this many steps."""
    hist_every: Int = Field(50, ge=1)
    """Write per-head weight histograms every this many steps."""
    top_tokens_every: Int = Field(200, ge=1)
    """Record the top-weighted tokens of one batch every this many steps."""
    checkpoint_every: Int = Field(500, ge=1)
    """Publish a checkpoint every this many steps (and at the end, and on SIGTERM)."""
    keep_checkpoints: Int = Field(2, ge=1)
    """Complete checkpoints kept on disk."""
    num_threads: Annotated[Int, Field(ge=1, le=1024)] | Literal["auto"] | None = "auto"
    """torch CPU threads: `auto` (default) uses the cores free when the run starts (affinity minus the other
    processes' load), a number (at most 1024) fixes it (with a warning when it oversubscribes), null keeps torch's
    choice."""

    @model_validator(mode="after")
    def _budget(self) -> TrainSection:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps and epochs")
        return self


class OptimSection(Section):
    """AdamW with a cosine schedule and linear warm-up."""

    lr: Real = Field(3e-4, gt=0, le=1e30)
    """Peak learning rate (at most 1e30, which already diverges: its non-finite steps are what
    `train.max_nonfinite` guards against; 1e38 and beyond overflow float32 arithmetic and are refused)."""
    weight_decay: Real = Field(0.0, ge=0, le=1)
    """AdamW decoupled weight decay (not applied to biases and norms); at most 1, so that lr x weight_decay,
    the fraction of each weight decayed per step, stays at most 1."""
    betas: tuple[Beta, Beta] = (0.9, 0.95)
    """AdamW betas, each in [0, 1) (torch refuses others when training starts)."""
    eps: Real = Field(1e-8, gt=0, le=1)
    """AdamW epsilon."""
    warmup_steps: Int = Field(0, ge=0)
    """Linear warm-up from 0 to lr over this many steps."""
    min_lr_ratio: Real = Field(0.1, ge=0, le=1)
    """The cosine decays to lr x min_lr_ratio at the last step."""


class NTPConfig(Section):
    """Next-token prediction control: n = 1 head, w = 1."""

    name: Literal["ntp"] = "ntp"
    """Algorithm name."""


class BaselineMTPConfig(Section):
    """Uniform-weight multi-token prediction: w = 1 for every head and token."""

    name: Literal["baseline-mtp"] = "baseline-mtp"
    """Algorithm name."""


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


class CriticConfig(Section):
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

    @model_validator(mode="after")
    def _clip_range(self) -> CriticConfig:
        if self.w_min > self.w_max:
            raise ValueError(f"w_min ({self.w_min}) must be at most w_max ({self.w_max})")
        return self


class Rho1Config(Section):
    """rho1-wmtp: excess loss against a frozen reference model selects or weights tokens (Rho-1)."""

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

    @model_validator(mode="after")
    def _clip_range(self) -> Rho1Config:
        if self.eps > self.w_max:
            raise ValueError(f"eps ({self.eps}) must be at most w_max ({self.w_max})")
        return self


class GradConfig(Section):
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

    @model_validator(mode="after")
    def _clip_range(self) -> GradConfig:
        if self.w_min > self.w_max:
            raise ValueError(f"w_min ({self.w_min}) must be at most w_max ({self.w_max})")
        return self


class GRPOConfig(Section):
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

    @model_validator(mode="after")
    def _clip_range(self) -> GRPOConfig:
        if self.w_min > self.w_max:
            raise ValueError(f"w_min ({self.w_min}) must be at most w_max ({self.w_max})")
        return self


AlgorithmConfig = Annotated[
    NTPConfig | BaselineMTPConfig | CriticConfig | Rho1Config | GradConfig | GRPOConfig,
    Field(discriminator="name"),
]


class EvalSection(Section):
    """Held-out measurements during training and the evaluations run after it."""

    val_fraction: Real = Field(0.05, ge=0, lt=1)
    """Slice of the training examples held out for per-head validation CE and accuracy."""
    val_every: Int = Field(100, ge=1)
    """Validate every this many steps (and at the end)."""
    val_batches: Int = Field(4, ge=1)
    """Micro-batches per validation."""
    benchmarks: list[str] = []
    """Evaluations after training (e.g. `generated`, `humaneval`, `mbpp:PATH`), run by the evaluation engine."""
    n_samples: Int = Field(1, ge=1)
    """Samples per problem for pass@k."""
    k: list[Annotated[Int, Field(ge=1)]] = [1]
    """k values reported."""
    temperature: Real = Field(0.0, ge=0)
    """Sampling temperature (0 = greedy)."""
    top_p: Real = Field(0.95, gt=0, le=1)
    """Nucleus sampling threshold."""
    max_new_tokens: Int = Field(128, ge=1)
    """Generation budget per sample."""
    timeout_s: Real | None = Field(None, gt=0, le=86_400)
    """Sandbox wall-clock limit per program; none: each benchmark's published protocol (humaneval, mbpp: 3 s)."""
    memory_mb: Int | None = Field(None, ge=64)
    """Sandbox address-space limit per program, MiB; none: the sandbox's default (1024)."""


class TrackingSection(Section):
    """MLflow logging (optional)."""

    mlflow_uri: str | None = None
    """Tracking URI, e.g. `sqlite:///mlruns.db` or `http://127.0.0.1:5000`; none disables MLflow."""
    experiment: str = "wmtp"
    """MLflow experiment name."""
    run_name: str | None = None
    """MLflow run name (default: the run directory's name)."""


class Recipe(Section):
    """One experiment: model, tokenizer, data, budget, optimiser, algorithm, evaluation, tracking."""

    name: str = "recipe"
    """Human-readable name."""
    model: ModelSection
    """The network."""
    tokenizer: TokenizerSection = TokenizerSection()
    """Token ids."""
    data: DataSection = DataSection()
    """Training data."""
    train: TrainSection
    """Budget and batching."""
    optim: OptimSection = OptimSection()
    """Optimiser and schedule."""
    algorithm: AlgorithmConfig
    """Which weighting algorithm; one section per algorithm."""
    eval: EvalSection = EvalSection()
    """Validation and post-training evaluation."""
    tracking: TrackingSection = TrackingSection()
    """MLflow."""

    @model_validator(mode="after")
    def _ntp_has_one_head(self) -> Recipe:
        """The NTP control trains one head: its stored recipe says so (model.n_heads 1, head 0's coefficient),
        so the frozen recipe, the database and MLflow show what runs, whatever the base recipe it came from."""
        if self.algorithm.name == "ntp" and self.model.n_heads != 1:
            coefs = self.model.head_coefficients
            self.model = self.model.model_copy(
                update={"n_heads": 1, "head_coefficients": coefs and coefs[:1]}
            )
        return self

    @property
    def n_heads(self) -> int:
        """Heads actually trained: the NTP control always has one."""
        return 1 if self.algorithm.name == "ntp" else self.model.n_heads

    @property
    def head_coefficients(self) -> list[float]:
        """c_k for the heads actually trained."""
        coefs = self.model.head_coefficients or [1.0] * self.model.n_heads
        return coefs[: self.n_heads]

    def canonical_json(self) -> str:
        """Stable JSON of the full recipe (defaults included): what is frozen in a run directory and hashed."""
        return json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))

    def sha256(self) -> str:
        """Content hash of the canonical JSON."""
        return hashlib.sha256(self.canonical_json().encode()).hexdigest()


def _field_path(loc: tuple[int | str, ...]) -> str:
    # pydantic puts the discriminator tag after `algorithm` (algorithm.critic-wmtp.beta): drop it there only, so
    # that a key named like an algorithm elsewhere (train.ntp) keeps its path.
    parts = [str(p) for p in loc]
    if len(parts) > 1 and parts[0] == "algorithm" and parts[1] in ALGORITHMS:
        del parts[1]
    return ".".join(parts) or "(top level)"


def _clip(text: str, width: int = 200) -> str:
    """One error line at most `width` characters: a huge key or value is named, not printed."""
    return text if len(text) <= width else text[: width - 3] + "..."


def parse_recipe(data: Any, source: str) -> Recipe:
    """Validate a parsed mapping; raise one RecipeError naming `source` and every failing dotted field path."""
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
    try:
        return Recipe.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        lines = [_clip(f"{_field_path(err['loc'])}: {err['msg']}") for err in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            lines.append(f"... and {len(errors) - MAX_ERRORS} more")
        raise RecipeError(f"{source}: invalid recipe\n  " + "\n  ".join(lines)) from None


def load_recipe(
    path: str | Path, overrides: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Recipe:
    """Load, substitute, override and validate a YAML recipe file."""
    return load_recipe_text(strict_yaml.read_text(Path(path)), str(path), overrides, env)


def load_recipe_text(
    text: str, source: str, overrides: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Recipe:
    """Substitute, override and validate recipe YAML text (e.g. from an editor); errors name `source`. YAML sees
    placeholders for secret-looking variables (their values could break it, and its errors quote the text)."""
    kept: dict[str, str] = {}
    literal = substitute_env(text, source, env, kept)
    try:
        data = _yaml_data(literal, source, overrides)
    except RecipeError as exc:
        raise RecipeError(restore_refs(str(exc), kept)) from None
    try:
        return parse_recipe(restore_refs(data, kept), source)
    except RecipeError as exc:
        hint = (
            f"\n  (secret-looking variables stay ${{VAR}} references, so they only fit text fields: "
            f"{', '.join(sorted(set(kept.values())))})"
        )
        raise RecipeError(restore_refs(str(exc), kept) + (hint if kept else "")) from None


def _yaml_data(text: str, source: str, overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    data = strict_yaml.parse(text, source)
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe must be a mapping of sections, got {type(data).__name__}")
    for assignment in overrides:
        apply_override(data, assignment, source)
    strict_yaml.check_shape(data, source)
    return data


def recipe_from_json(text: str, source: str, *, resolve_secrets: bool = False) -> Recipe:
    """Load a frozen `recipe.json` (as written by `Recipe.canonical_json`). `resolve_secrets`: substitute the
    secret-looking `${VAR}` references it keeps from the environment (only where the recipe is used: the
    trainer); without it they stay references, as stored."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{source}: not valid JSON ({exc})") from None
    except RecursionError:
        raise RecipeError(f"{source}: nested deeper than {strict_yaml.MAX_DEPTH} levels") from None
    strict_yaml.check_shape(data, source)
    if not resolve_secrets:
        return parse_recipe(data, source)
    values: dict[str, str] = {}
    try:
        return parse_recipe(resolve_secret_refs(data, source, values), source)
    except RecipeError as exc:
        raise RecipeError(redact(str(exc), values)) from None
