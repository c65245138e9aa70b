"""Multi-token prediction model over any Hugging Face causal LM (METHOD.md, "Model").

The wrapped HF model stays intact: with transformer heads, head 0 *is* the model's last decoder layer and the
trunk is the layers before it; heads 1..n-1 are extra decoder layers (copies of the last one at creation). With
linear heads the trunk is the whole model and heads 1..n-1 are residual blocks on its final hidden state (head 0
is the identity). All heads share the final norm and the unembedding, so `n = 1` is exactly the original model.

Saved as a directory: the HF model via `save_pretrained` (loadable by `AutoModelForCausalLM` on its own, i.e. the
head-0 next-token model), `mtp_heads.safetensors` for heads 1..n-1, and `wmtp_config.json` (n, head kind, base id).
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from wmtp_studio.errors import StudioError

WMTP_CONFIG = "wmtp_config.json"
HEADS_FILE = "mtp_heads.safetensors"

_T = TypeVar("_T")


@dataclass
class TrunkOutput:
    """The trunk's hidden state and what the head layers need to run on it."""

    hidden: Tensor  # (B, S, D)
    layer_args: tuple[Any, ...] = ()
    layer_kwargs: dict[str, Any] = field(default_factory=dict)


class _StopForward(Exception):
    """Raised by the capture hook once the trunk output is known, so the head-0 layer is not run twice."""


def decoder_parts(hf: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    """The decoder layer list and the final norm of a HF causal LM (Llama-like and GPT-2-like layouts)."""
    base = getattr(hf, "base_model", hf)
    layers = next((getattr(base, n) for n in ("layers", "h", "blocks") if hasattr(base, n)), None)
    norm = next((getattr(base, n) for n in ("norm", "ln_f", "final_layer_norm") if hasattr(base, n)), None)
    if not isinstance(layers, nn.ModuleList) or norm is None:
        raise StudioError(
            f"unsupported architecture {type(hf).__name__}: cannot find its decoder layers and final norm"
        )
    return layers, norm


@functools.cache
def _forward_parameters(cls: Any) -> frozenset[str]:
    return frozenset(inspect.signature(cls.forward).parameters)


def cache_kwarg(module: nn.Module) -> str:
    """The name under which `module.forward` takes a KV cache: `cache` (transformers >= 5.x), else the older one."""
    cls: Any = type(module)  # classes are hashable; torch's stubs hide it
    return "cache" if "cache" in _forward_parameters(cls) else "past_key_values"


def packed_attention(config: Any, segment_ids: Tensor | None) -> dict[str, Tensor]:
    """Forward kwargs that make every packed example attend only to itself, as if it were alone in its row.

    METHOD.md, Fair comparison: packed examples never attend to each other. segment_ids: (B, S) long, -1 on
    padding. Returns {} when no row holds two examples (right padding never changes earlier positions), else
    per-example `position_ids` (restarting at 0) and, for eager/SDPA attention, a 4-D block-diagonal causal
    mask (B, 1, S, S), which transformers passes to the attention as is: boolean (True = attend) for SDPA,
    additive (0 / dtype min) for eager. Flash and flex attention get the position ids alone, from which
    transformers derives the sequence boundaries itself (varlen kernels).
    """
    if segment_ids is None or segment_ids.shape[1] < 2 or int(segment_ids.max()) <= 0:
        return {}
    b, s = segment_ids.shape
    arange = torch.arange(s, device=segment_ids.device).expand(b, s)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    first = (
        torch.where(starts, arange, torch.zeros_like(arange)).cummax(dim=1).values
    )  # segment's first index
    out = {"position_ids": arange - first}  # (B, S)
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl.startswith("flash") or impl == "flex_attention":
        return out
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, S, S)
    allowed = (same & torch.ones(s, s, dtype=torch.bool, device=same.device).tril())[:, None]  # (B, 1, S, S)
    if impl == "sdpa":
        return out | {"attention_mask": allowed}
    floor = torch.finfo(torch.float32).min
    return out | {
        "attention_mask": torch.zeros(allowed.shape, device=same.device).masked_fill(~allowed, floor)
    }


class ResidualHead(nn.Module):
    """Linear head block: h + W2 GELU(W1 LN(h)); W2 starts at zero so a new head starts equal to head 0."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.up = nn.Linear(dim, dim)
        self.down = nn.Linear(dim, dim)
        nn.init.zeros_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.down(nn.functional.gelu(self.up(self.norm(h))))


class ValueHead(nn.Module):
    """V_phi(h_t): Linear(D, D/2) -> GELU -> Linear(D/2, 1) (METHOD.md, critic-wmtp).

    Choice (METHOD.md is silent): the input is layer-normalised without parameters first. The trunk output is
    the un-normalised residual stream, whose scale drifts while the LM trains; without the normalisation the
    Stage 2 value loss diverged on the tiny recipe (0.06 -> 30 within 40 steps) and its gradient dominated the
    global clipping norm.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim, elementwise_affine=False),
            nn.Linear(dim, dim // 2),
            nn.GELU(),
            nn.Linear(dim // 2, 1),
        )

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h.float()).squeeze(-1)  # (B, S)


class MTPModel(nn.Module):
    """n-head MTP wrapper. `trunk()` once, then `head_logits(k, ...)` per head (memory-efficient path)."""

    def __init__(self, hf: Any, n_heads: int, head_kind: str, base_id: str = "") -> None:
        super().__init__()
        if head_kind not in ("transformer", "linear"):
            raise StudioError(f"unknown head kind {head_kind!r}")
        self.hf = hf
        self.n_heads = n_heads
        self.head_kind = head_kind
        self.base_id = base_id
        layers, self._final_norm = decoder_parts(hf)
        dim = int(hf.config.hidden_size)
        if head_kind == "transformer":
            if len(layers) < 2:
                raise StudioError("transformer heads need a model with at least 2 decoder layers")
            self.extra_heads = nn.ModuleList(copy.deepcopy(layers[-1]) for _ in range(n_heads - 1))
        else:
            self.extra_heads = nn.ModuleList(ResidualHead(dim) for _ in range(n_heads - 1))

    @property
    def hidden_size(self) -> int:
        return int(self.hf.config.hidden_size)

    def trunk(self, input_ids: Tensor, segment_ids: Tensor | None = None) -> TrunkOutput:
        """Run the shared trunk. Transformer heads: the input of the last decoder layer; linear: the final hidden.

        `segment_ids` (B, S): example index inside a packed row (-1 on padding); with several examples in a row
        each one attends only to itself, from position 0 (`packed_attention`). The head layers reuse the mask.
        """
        packed = packed_attention(self.hf.config, segment_ids)
        return self._trunk(input_ids=input_ids, use_cache=False, **packed)

    def trunk_cached(
        self, input_ids: Tensor, cache: Any, position_ids: Tensor, attention_mask: Tensor | None = None
    ) -> TrunkOutput:
        """The trunk over new tokens only, reading and extending a Hugging Face KV `cache` (generation).

        Transformer heads: the trunk layers write `cache` here; the head-0 layer's entry is written by
        `head_hidden(0, ...)`, which must run next (the captured layer kwargs carry `cache`). Linear heads: the whole
        model's cache, complete on return.
        """
        inputs = {cache_kwarg(self.hf.base_model): cache}
        return self._trunk(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            **inputs,
        )

    def _trunk(self, **inputs: Any) -> TrunkOutput:
        if self.head_kind == "linear":
            out = self.hf.base_model(**inputs)
            return TrunkOutput(out.last_hidden_state)
        layers, _ = decoder_parts(self.hf)
        captured: dict[str, Any] = {}

        def capture(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            captured["args"], captured["kwargs"] = args, kwargs
            raise _StopForward

        # prepend: before an FSDP unit's own pre-forward hook, which would all-gather the layer for nothing
        handle = layers[-1].register_forward_pre_hook(capture, with_kwargs=True, prepend=True)
        try:
            self.hf.base_model(**inputs)
        except _StopForward:
            pass
        finally:
            handle.remove()
        args = captured["args"]
        hidden = args[0] if args else captured["kwargs"].pop("hidden_states")
        return TrunkOutput(hidden, tuple(args[1:]), captured["kwargs"])

    def head_hidden(self, k: int, trunk: TrunkOutput, hidden: Tensor | None = None) -> Tensor:
        """Head k's final hidden state (B, S, D), computed from `hidden` (default: trunk.hidden)."""
        h = trunk.hidden if hidden is None else hidden
        if self.head_kind == "linear":
            return h if k == 0 else self.extra_heads[k - 1](h)
        layer = decoder_parts(self.hf)[0][-1] if k == 0 else self.extra_heads[k - 1]
        out = layer(h, *trunk.layer_args, **trunk.layer_kwargs)
        out = out[0] if isinstance(out, tuple) else out
        return self._final_norm(out)

    def trunk_parameters(self) -> list[nn.Parameter]:
        """What `train.freeze: trunk` freezes: with linear heads the whole HF model; with transformer heads every
        HF parameter except head 0's layer, the final norm and an unembedding not tied to the input embedding."""
        if self.head_kind == "linear":
            return list(self.hf.parameters())
        layers, norm = decoder_parts(self.hf)
        heads = {id(p) for m in (layers[-1], norm) for p in m.parameters()}
        inputs = {id(p) for p in self.hf.get_input_embeddings().parameters()}
        heads |= {id(p) for p in self.hf.get_output_embeddings().parameters() if id(p) not in inputs}
        return [p for p in self.hf.parameters() if id(p) not in heads]

    def unembed(self, h: Tensor) -> Tensor:
        """Shared unembedding: (B, S, D) -> (B, S, V)."""
        return self.hf.get_output_embeddings()(h)

    def with_unembedding(self, fn: Callable[..., _T], *args: Any) -> _T:
        """`fn(unembedding module, *args)`, for what reads the unembedding's weight itself (the chunked CE,
        grad-wmtp's hidden score). Under FSDP this is a gathered root method like `unembed` (fsdp.py): `fn` sees the
        whole weight and its gradient is reduce-scattered. Tensors that need gradient go in `args`, where FSDP hooks
        them, not in `fn`'s closure."""
        return fn(self.hf.get_output_embeddings(), *args)

    def head_logits(self, k: int, trunk: TrunkOutput, hidden: Tensor | None = None) -> Tensor:
        """Logits of head k: (B, S, V)."""
        return self.unembed(self.head_hidden(k, trunk, hidden))

    def forward(self, input_ids: Tensor, segment_ids: Tensor | None = None) -> Tensor:
        """All heads materialised at once (the naive path): (B, S, n, V)."""
        trunk = self.trunk(input_ids, segment_ids)
        return torch.stack([self.head_logits(k, trunk) for k in range(self.n_heads)], dim=2)

    def save(self, directory: Path, full_state: dict[str, Tensor] | None = None) -> None:
        """Write the HF model, the extra heads and wmtp_config.json into `directory`.

        `full_state`: this model's whole state dict when its own parameters are shards (FSDP gathers it)."""
        directory.mkdir(parents=True, exist_ok=True)
        hf_state = None if full_state is None else _tied_like(self.hf, _under(full_state, "hf."))
        self.hf.save_pretrained(directory, safe_serialization=True, state_dict=hf_state)
        if self.n_heads > 1:
            heads = (
                self.extra_heads.state_dict() if full_state is None else _under(full_state, "extra_heads.")
            )
            state = {k: v.detach().contiguous().cpu() for k, v in heads.items()}
            save_file(state, str(directory / HEADS_FILE))
        meta = {"n_heads": self.n_heads, "head_kind": self.head_kind, "base_id": self.base_id, "format": 1}
        (directory / WMTP_CONFIG).write_text(json.dumps(meta, indent=2))


def _under(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def _tied_like(module: nn.Module, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """`state` with the entries of parameters `module` shares (tied embeddings) made one tensor again: a
    gathered state dict holds copies, and `save_pretrained` drops a tied weight only when it is the same tensor."""
    first: dict[int, str] = {}
    for name, p in module.named_parameters(remove_duplicate=False):
        owner = first.setdefault(id(p), name)
        if owner != name and owner in state:
            state[name] = state[owner]
    return state


def build_tiny_hf(
    arch: str,
    vocab_size: int,
    hidden: int,
    layers: int,
    heads: int,
    inter: int | None,
    max_pos: int,
    special: dict[str, Any],
) -> nn.Module:
    """A randomly initialised HF causal LM from a config built locally (nothing downloaded)."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    if arch == "gpt2":
        gcfg = GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden,
            n_layer=layers,
            n_head=heads,
            n_inner=inter,
            n_positions=max_pos,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            **special,
        )
        return GPT2LMHeadModel(gcfg)
    lcfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=inter or 4 * hidden,
        max_position_embeddings=max_pos,
        tie_word_embeddings=True,
        **special,
    )
    return LlamaForCausalLM(lcfg)


def is_wmtp_dir(path: str | Path) -> bool:
    """True for a directory written by `MTPModel.save`."""
    return (Path(path) / WMTP_CONFIG).is_file()


def load_hf(name_or_path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """A HF causal LM by id or directory (a WMTP model directory loads as its head-0 model)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise StudioError(f"cannot load model {name_or_path!r}: {exc}") from None


def load_mtp(
    path: str | Path,
    n_heads: int | None = None,
    head_kind: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> MTPModel:
    """Load a WMTP model directory (no recipe needed) or wrap a plain HF model.

    With `n_heads`/`head_kind` different from what was saved, heads present in the directory are reused and new
    ones start as described in the module docstring (e.g. an NTP base fine-tuned with 4 heads).
    """
    path = Path(path)
    saved: dict[str, Any] = json.loads((path / WMTP_CONFIG).read_text()) if is_wmtp_dir(path) else {}
    n = n_heads or int(saved.get("n_heads", 1))
    kind = head_kind or str(saved.get("head_kind", "transformer"))
    base_id = str(saved.get("base_id") or path)
    model = MTPModel(load_hf(str(path), dtype), n, kind, base_id)
    heads_file = path / HEADS_FILE
    if saved and kind == saved.get("head_kind") and heads_file.is_file():
        state = load_file(str(heads_file))
        own = model.extra_heads.state_dict()
        model.extra_heads.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    return model.to(dtype)


def quiet_transformers() -> None:
    """No progress bars or advisory warnings from transformers in logs and tests."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def generation_budget(model: MTPModel, requested: int) -> int:
    """New tokens that fit beside a prompt: at most half of the model's positions (its max_position_embeddings)."""
    room = getattr(model.hf.config, "max_position_embeddings", None)
    return min(requested, room // 2) if isinstance(room, int) else requested


def load_for_generation(model_dir: Path, max_new_tokens: int) -> tuple[MTPModel, Any, int]:
    """What the evaluator samples with: the model in eval mode, its tokenizer (transformers' warnings quiet) and
    `max_new_tokens` capped by `generation_budget`."""
    from transformers import AutoTokenizer

    quiet_transformers()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = load_mtp(model_dir).eval()
    return model, tokenizer, generation_budget(model, max_new_tokens)
