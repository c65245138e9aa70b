"""The sections of a recipe (model, tokenizer, data, budget, optimiser, evaluation, tracking) and the strict
numbers their fields are made of. The algorithm sections are in recipe_algorithms.py; recipe.py joins them into
one `Recipe` and loads it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

INT_MAX = 2**31 - 1
"""Largest count or seed: what every consumer holds (numpy seeds, torch sizes, 32-bit SQL integer columns)."""


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
