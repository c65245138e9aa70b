"""Meta's released multi-token-prediction checkpoints (Gloeckle et al. 2024, `facebook/multi-token-prediction`)
loaded into the studio's `MTPModel` (recipe `model.meta_checkpoint`).

The layout read here is that of the release's reference code (`llama/model.py`, a Llama 2 `Transformer` with
`n_future_tokens`), checked against two independent ports of it:

- `params.json`: `dim`, `n_layers`, `n_heads`, `n_kv_heads` (default `n_heads`), `vocab_size`, `multiple_of`,
  `ffn_dim_multiplier` (default none), `norm_eps`, `rope_theta` (default 10000), `n_future_tokens` (default 1),
  `max_seq_len` (default 2048, Meta's `ModelArgs`); other keys are ignored.
- `consolidated.pth`: one state dict. `n_layers` counts the trunk and every head: `layers.0 ..
  layers.{n_layers - n_future_tokens}` (n_layers - n_future_tokens + 1 blocks) and `extra_heads.0 ..
  extra_heads.{n_future_tokens - 2}`, each block `attention.wq/wk/wv/wo.weight`, `feed_forward.w1/w2/w3.weight`,
  `attention_norm.weight`, `ffn_norm.weight`; plus `tok_embeddings.weight`, `norm.weight`, `output.weight`
  (untied), all without biases.
- Forward: h = tok_embeddings(x); the trunk is `layers[:-1]`; head 0 is `layers[-1]` on the trunk output and head
  j + 1 is `extra_heads[j]` on the same trunk output; every head then goes through the shared `norm` and `output`.

That is the studio's transformer-head layout exactly (METHOD.md, "Model"): the HF `LlamaForCausalLM` gets
`layers` (trunk + head 0, so it alone is Meta's next-token model), and `MTPModel.extra_heads` get `extra_heads`.
Names map as embed_tokens, self_attn.q/k/v/o_proj, mlp.gate_proj (w1) / down_proj (w2) / up_proj (w3),
input_layernorm (attention_norm), post_attention_layernorm (ffn_norm), model.norm, lm_head. Two things differ:
- RoPE: Meta rotates adjacent pairs (x_{2i}, x_{2i+1}) as complex numbers, HF Llama rotates halves
  (x_i, x_{i+d/2}); the rows of wq and wk are permuted per attention head so that both compute the same thing.
- The MLP width is not stored: Llama's FeedForward takes int(2 * 4 * dim / 3), times ffn_dim_multiplier when set,
  rounded up to a multiple of multiple_of.
A recipe with more heads than the checkpoint's n_future_tokens starts the others as copies of head 0 (as
`load_mtp` does); with fewer, the last extra heads are left out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from wmtp_studio.errors import StudioError
from wmtp_studio.train.model import MTPModel

PARAMS = "params.json"
WEIGHTS = "consolidated.pth"
_BLOCK = {  # Meta block name -> HF LlamaDecoderLayer name
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
    "attention_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
}


class MetaParams(BaseModel):
    """params.json of a Meta Llama MTP checkpoint (Meta's `ModelArgs`; its defaults where a key is absent)."""

    model_config = ConfigDict(extra="ignore")

    dim: int = Field(gt=0)
    n_layers: int = Field(gt=0)
    n_heads: int = Field(gt=0)
    n_kv_heads: int | None = Field(None, gt=0)
    vocab_size: int = Field(gt=0)
    multiple_of: int = Field(256, gt=0)
    ffn_dim_multiplier: float | None = Field(None, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    rope_theta: float = Field(10000.0, gt=0)
    n_future_tokens: int = Field(1, ge=1)
    max_seq_len: int = Field(2048, gt=0)

    @property
    def ffn_hidden(self) -> int:
        """Llama's FeedForward width: int(2 * 4 * dim / 3) (x ffn_dim_multiplier), rounded up to multiple_of."""
        hidden = int(2 * (4 * self.dim) / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * math.ceil(hidden / self.multiple_of)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads


def read_params(directory: Path) -> MetaParams:
    """params.json validated; a StudioError naming the file and the problem otherwise."""
    path = directory / PARAMS
    try:
        params = MetaParams.model_validate(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError) as exc:
        raise StudioError(f"{path}: cannot read the Meta checkpoint's parameters ({exc})") from None
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise StudioError(f"{path}: invalid Meta checkpoint parameters: {fields}") from None
    if params.dim % params.n_heads or params.n_heads % params.kv_heads:
        raise StudioError(f"{path}: n_heads must divide dim, and n_kv_heads must divide n_heads")
    if params.n_future_tokens > params.n_layers:
        raise StudioError(f"{path}: n_future_tokens {params.n_future_tokens} > n_layers {params.n_layers}")
    return params


def rope_halves(w: Tensor, heads: int) -> Tensor:
    """wq / wk rows from Meta's adjacent-pair RoPE order to HF Llama's half-split order, per attention head.

    Within a head, Meta's output rows are (re_0, im_0, re_1, im_1, ...); HF's are (re_0, re_1, ..., im_0, im_1, ...).
    w: (heads * head_dim, dim) -> same shape.
    """
    rows, cols = w.shape
    return w.view(heads, rows // heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def _block(state: dict[str, Tensor], prefix: str, params: MetaParams) -> dict[str, Tensor]:
    """One Meta block's tensors under HF names (wq, wk permuted for RoPE)."""
    out = {}
    for meta, hf in _BLOCK.items():
        t = state[f"{prefix}.{meta}"]
        if meta == "attention.wq.weight":
            t = rope_halves(t, params.n_heads)
        elif meta == "attention.wk.weight":
            t = rope_halves(t, params.kv_heads)
        out[hf] = t
    return out


def _expected_keys(params: MetaParams) -> set[str]:
    n_layers = params.n_layers - params.n_future_tokens + 1
    blocks = [f"layers.{i}" for i in range(n_layers)]
    blocks += [f"extra_heads.{j}" for j in range(params.n_future_tokens - 1)]
    keys = {f"{b}.{name}" for b in blocks for name in _BLOCK}
    return keys | {"tok_embeddings.weight", "norm.weight", "output.weight"}


def _read_state(directory: Path, params: MetaParams) -> dict[str, Tensor]:
    path = directory / WEIGHTS
    if not path.is_file():
        raise StudioError(
            f"{directory}: no {WEIGHTS} (a Meta MTP checkpoint holds params.json and {WEIGHTS})"
        )
    try:  # mmap: a 7B checkpoint is not copied into memory before it is converted
        state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except (OSError, RuntimeError, ValueError) as exc:
        raise StudioError(f"{path}: cannot read the weights ({exc})") from None
    if not isinstance(state, dict):
        raise StudioError(f"{path}: expected a state dict, found {type(state).__name__}")
    expected, found = _expected_keys(params), set(state) - {"rope.freqs"}  # Llama's saved RoPE table: unused
    if expected != found:
        missing, extra = sorted(expected - found), sorted(found - expected)
        raise StudioError(
            f"{path}: does not match params.json (n_layers {params.n_layers}, n_future_tokens "
            f"{params.n_future_tokens}): missing {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
            f"unexpected {extra[:4]}{' ...' if len(extra) > 4 else ''}"
        )
    return state


def llama_config(params: MetaParams) -> Any:
    """The HF LlamaConfig of the trunk + head-0 model."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=params.vocab_size,
        hidden_size=params.dim,
        intermediate_size=params.ffn_hidden,
        num_hidden_layers=params.n_layers - params.n_future_tokens + 1,
        num_attention_heads=params.n_heads,
        num_key_value_heads=params.kv_heads,
        hidden_act="silu",
        max_position_embeddings=params.max_seq_len,
        rms_norm_eps=params.norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": params.rope_theta},
        tie_word_embeddings=False,
        attention_bias=False,
        mlp_bias=False,
        bos_token_id=1,  # the Llama 2 tokenizer's <s> and </s>, which Meta's MTP models use
        eos_token_id=2,
    )


def load_meta_mtp(path: str | Path, n_heads: int, dtype: torch.dtype = torch.float32) -> MTPModel:
    """A Meta MTP checkpoint directory as an `MTPModel` with `n_heads` transformer heads (layout: module doc)."""
    from accelerate import init_empty_weights
    from transformers import LlamaForCausalLM

    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise StudioError(f"model.meta_checkpoint {str(path)!r} is not a directory")
    params = read_params(directory)
    state = _read_state(directory, params)
    n_layers = params.n_layers - params.n_future_tokens + 1
    hf_state = {"model.embed_tokens.weight": state["tok_embeddings.weight"]}
    for i in range(n_layers):
        hf_state |= {f"model.layers.{i}.{k}": v for k, v in _block(state, f"layers.{i}", params).items()}
    hf_state |= {"model.norm.weight": state["norm.weight"], "lm_head.weight": state["output.weight"]}
    with init_empty_weights():  # parameters on the meta device, filled by assignment: no 2x memory
        hf = LlamaForCausalLM(llama_config(params))
    if n_layers < 2 and n_heads > 1:
        raise StudioError(f"{directory}: transformer heads need a trunk of at least one layer")
    model = MTPModel(hf, n_heads, "transformer", base_id=f"meta-mtp:{directory.name}")
    heads: dict[str, Tensor] = {}
    for j in range(n_heads - 1):  # the checkpoint's extra heads first, then copies of head 0
        source = f"extra_heads.{j}" if j < params.n_future_tokens - 1 else f"layers.{n_layers - 1}"
        heads |= {f"{j}.{k}": v.clone() for k, v in _block(state, source, params).items()}
    try:
        hf.load_state_dict(hf_state, strict=True, assign=True)
        model.extra_heads.load_state_dict(heads, strict=True, assign=True)
    except RuntimeError as exc:  # shapes that contradict params.json
        raise StudioError(f"{directory / WEIGHTS}: does not match params.json: {exc}") from None
    return model.to(dtype)
