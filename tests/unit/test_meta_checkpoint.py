"""Meta's MTP checkpoint format (`facebook/multi-token-prediction`) loads into the studio's MTPModel: every head's
logits equal a plain-torch rendering of Meta's reference forward on a tiny checkpoint written in that layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from wmtp_studio.errors import StudioError
from wmtp_studio.train import meta_checkpoint
from wmtp_studio.train.meta_checkpoint import load_meta_mtp, read_params
from wmtp_studio.train.model import load_mtp

# GQA (2 kv heads for 4 query heads), an ffn multiplier and a rope theta that are not the defaults, 3 future tokens
PARAMS = {
    "dim": 32,
    "n_layers": 5,
    "n_heads": 4,
    "n_kv_heads": 2,
    "vocab_size": 61,
    "multiple_of": 16,
    "ffn_dim_multiplier": 1.3,
    "norm_eps": 1e-5,
    "rope_theta": 500.0,
    "n_future_tokens": 3,
}
# Llama's FeedForward width: int(2 * 4 * 32 / 3) = 85; int(1.3 * 85) = 110; rounded up to a multiple of 16: 112
FFN = 112
HEAD_DIM = 32 // 4
TOL = 1e-6


def write_checkpoint(directory: Path, params: dict | None = None, seed: int = 0) -> dict[str, Tensor]:
    """A random checkpoint in Meta's layout: layers.0..3 (n_layers - n_future + 1 = 3 blocks: 0, 1, 2) and
    extra_heads.0..1, untied output, norms near 1."""
    p = params or PARAMS
    g = torch.Generator().manual_seed(seed)
    dim, kv = p["dim"], p["n_kv_heads"] * HEAD_DIM

    def rnd(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g) / math.sqrt(shape[-1])

    def block() -> dict[str, Tensor]:
        return {
            "attention.wq.weight": rnd(dim, dim),
            "attention.wk.weight": rnd(kv, dim),
            "attention.wv.weight": rnd(kv, dim),
            "attention.wo.weight": rnd(dim, dim),
            "feed_forward.w1.weight": rnd(FFN, dim),
            "feed_forward.w2.weight": rnd(dim, FFN),
            "feed_forward.w3.weight": rnd(FFN, dim),
            "attention_norm.weight": 1 + 0.1 * torch.randn(dim, generator=g),
            "ffn_norm.weight": 1 + 0.1 * torch.randn(dim, generator=g),
        }

    state = {"tok_embeddings.weight": torch.randn(p["vocab_size"], dim, generator=g)}
    for i in range(p["n_layers"] - p["n_future_tokens"] + 1):
        state |= {f"layers.{i}.{k}": v for k, v in block().items()}
    for j in range(p["n_future_tokens"] - 1):
        state |= {f"extra_heads.{j}.{k}": v for k, v in block().items()}
    state["norm.weight"] = 1 + 0.1 * torch.randn(dim, generator=g)
    state["output.weight"] = rnd(p["vocab_size"], dim)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "params.json").write_text(json.dumps(p))
    torch.save(
        {k: v.to(torch.bfloat16) for k, v in state.items()}, directory / "consolidated.pth"
    )  # as released
    return {k: v.to(torch.bfloat16).double() for k, v in state.items()}


# ------------------------------------------------------------- Meta's forward, written out in plain torch (float64)


# Meta's code runs three things in float32 whatever the model's dtype: RMSNorm (`_norm(x.float())`), RoPE
# (`view_as_complex(xq.float() ...)` with complex64 freqs_cis) and the attention softmax (`softmax(scores.float())`).
# They are float32 here too; HF's Llama does the same for RMSNorm and RoPE's cos/sin, but its SDPA softmax stays
# float64, hence a tolerance of 1e-6 below, where a wrong mapping is off by more than 1e-2.


def rms_norm(x: Tensor, w: Tensor) -> Tensor:
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + PARAMS["norm_eps"])).double() * w


def rotary(x: Tensor) -> Tensor:
    """Meta's RoPE: adjacent pairs (x_{2i}, x_{2i+1}) as complex numbers times e^{i t theta^(-2i/d)}.

    In float32, as Meta's apply_rotary_emb."""
    _, s, _, d = x.shape  # (B, S, H, head_dim)
    freqs = 1.0 / (PARAMS["rope_theta"] ** (torch.arange(0, d, 2).float() / d))  # (d/2,) float32
    angles = torch.outer(torch.arange(s, dtype=torch.float32), freqs)  # (S, d/2)
    rot = torch.polar(torch.ones_like(angles), angles)  # (S, d/2) complex64 e^{i angle}
    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], d // 2, 2).contiguous())  # (B, S, H, d/2)
    return torch.view_as_real(z * rot[None, :, None]).flatten(3).double()


def meta_block(state: dict[str, Tensor], name: str, h: Tensor) -> Tensor:
    w = {k[len(name) + 1 :]: v for k, v in state.items() if k.startswith(name + ".")}
    b, s, _ = h.shape
    x = rms_norm(h, w["attention_norm.weight"])
    q = (x @ w["attention.wq.weight"].T).view(b, s, 4, HEAD_DIM)
    k = (x @ w["attention.wk.weight"].T).view(b, s, 2, HEAD_DIM)
    v = (x @ w["attention.wv.weight"].T).view(b, s, 2, HEAD_DIM)
    q, k = rotary(q), rotary(k)
    k, v = k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2)  # each kv head serves 2 query heads
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(HEAD_DIM)
    scores = scores + torch.full((s, s), float("-inf"), dtype=scores.dtype).triu(1)
    att = torch.einsum("bhqk,bkhd->bqhd", scores.float().softmax(-1).double(), v).reshape(b, s, -1)
    h = h + att @ w["attention.wo.weight"].T
    x = rms_norm(h, w["ffn_norm.weight"])
    ffn = (F.silu(x @ w["feed_forward.w1.weight"].T) * (x @ w["feed_forward.w3.weight"].T)) @ w[
        "feed_forward.w2.weight"
    ].T
    return h + ffn


def meta_forward(state: dict[str, Tensor], tokens: Tensor) -> Tensor:
    """Meta's Transformer.forward(tokens, return_all_heads=True): (B, S) -> (B, S, n_future_tokens, V)."""
    h = state["tok_embeddings.weight"][tokens]
    n_layers = PARAMS["n_layers"] - PARAMS["n_future_tokens"] + 1
    for i in range(n_layers - 1):  # the trunk: layers[:-1]
        h = meta_block(state, f"layers.{i}", h)
    heads = [f"layers.{n_layers - 1}"] + [f"extra_heads.{j}" for j in range(PARAMS["n_future_tokens"] - 1)]
    latents = torch.stack([meta_block(state, name, h) for name in heads], dim=-2)  # (B, S, n, D)
    return rms_norm(latents, state["norm.weight"]) @ state["output.weight"].T


TOKENS = torch.tensor([[3, 17, 42, 5, 60, 0, 9, 33, 12, 7], [1, 1, 2, 3, 5, 8, 13, 21, 34, 55]])


def test_every_head_equals_metas_forward(tmp_path: Path) -> None:
    state = write_checkpoint(tmp_path / "7B_1T_3")
    want = meta_forward(state, TOKENS)  # (2, 10, 3, 61)
    model = load_meta_mtp(tmp_path / "7B_1T_3", n_heads=3, dtype=torch.float64).eval()
    assert len(model.hf.model.layers) == 3 and len(model.extra_heads) == 2  # trunk 2 layers + head 0, 2 extra
    assert model.hf.config.intermediate_size == FFN and not model.hf.config.tie_word_embeddings
    with torch.no_grad():
        got = model(TOKENS)  # (B, S, n, V)
        plain = model.hf(input_ids=TOKENS).logits  # the HF model alone is Meta's next-token model
    assert got.shape == want.shape and want.abs().max() > 1
    torch.testing.assert_close(got[:, :, 0], want[:, :, 0], atol=TOL, rtol=TOL)
    torch.testing.assert_close(plain, want[:, :, 0], atol=TOL, rtol=TOL)
    torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)
    assert not torch.allclose(want[:, :, 1], want[:, :, 2])  # the heads really differ


def test_the_tolerance_tells_a_wrong_mapping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the RoPE row permutation (HF and Meta rotate different pairs) the logits are far off."""
    want = meta_forward(write_checkpoint(tmp_path / "ckpt"), TOKENS)
    monkeypatch.setattr(meta_checkpoint, "rope_halves", lambda w, _heads: w)
    with torch.no_grad():
        wrong = load_meta_mtp(tmp_path / "ckpt", n_heads=3, dtype=torch.float64)(TOKENS)
    assert float((wrong - want).abs().max()) > 1e-2


def test_more_heads_start_as_head_0_and_fewer_drop_the_last(tmp_path: Path) -> None:
    state = write_checkpoint(tmp_path / "ckpt")
    want = meta_forward(state, TOKENS)
    with torch.no_grad():
        five = load_meta_mtp(tmp_path / "ckpt", n_heads=5, dtype=torch.float64)(TOKENS)
        two = load_meta_mtp(tmp_path / "ckpt", n_heads=2, dtype=torch.float64)(TOKENS)
    torch.testing.assert_close(five[:, :, :3], want, atol=TOL, rtol=TOL)
    torch.testing.assert_close(five[:, :, 3], want[:, :, 0], atol=TOL, rtol=TOL)  # copies of head 0
    torch.testing.assert_close(five[:, :, 4], want[:, :, 0], atol=TOL, rtol=TOL)
    torch.testing.assert_close(two, want[:, :, :2], atol=TOL, rtol=TOL)


def test_a_loaded_checkpoint_saves_as_a_studio_model_directory(tmp_path: Path) -> None:
    """What a run exports (and resumes from) is the ordinary WMTP directory: same logits after a reload."""
    write_checkpoint(tmp_path / "ckpt")
    model = load_meta_mtp(tmp_path / "ckpt", n_heads=3, dtype=torch.float64)
    model.save(tmp_path / "saved")
    again = load_mtp(tmp_path / "saved", dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(again(TOKENS), model(TOKENS), atol=0, rtol=0)


def test_defaults_of_metas_model_args_apply(tmp_path: Path) -> None:
    """A params.json without n_kv_heads, ffn_dim_multiplier and rope_theta: Meta's defaults (n_heads, none, 1e4)."""
    params = {k: v for k, v in PARAMS.items() if k not in ("n_kv_heads", "ffn_dim_multiplier", "rope_theta")}
    params["multiple_of"] = 32  # int(2 * 4 * 32 / 3) = 85 -> 96
    write_checkpoint(tmp_path / "ckpt", {**params, "n_kv_heads": 4}, seed=1)  # shapes of 4 kv heads
    (tmp_path / "ckpt" / "params.json").write_text(json.dumps(params))
    with pytest.raises(StudioError, match=r"does not match params\.json"):  # w1 is 112 wide, params say 96
        load_meta_mtp(tmp_path / "ckpt", n_heads=3)
    cfg = read_params(tmp_path / "ckpt")
    assert (cfg.kv_heads, cfg.ffn_hidden, cfg.rope_theta, cfg.max_seq_len) == (4, 96, 10000.0, 2048)


def test_bad_checkpoints_are_named(tmp_path: Path) -> None:
    with pytest.raises(StudioError, match="is not a directory"):
        load_meta_mtp(tmp_path / "nowhere", n_heads=4)
    write_checkpoint(tmp_path / "c")
    (tmp_path / "c" / "params.json").write_text(json.dumps({**PARAMS, "dim": "wide"}))
    with pytest.raises(StudioError, match=r"params.json: invalid Meta checkpoint parameters: dim"):
        load_meta_mtp(tmp_path / "c", n_heads=3)
    (tmp_path / "c" / "params.json").write_text(json.dumps({**PARAMS, "n_future_tokens": 4}))
    with pytest.raises(StudioError, match=r"missing \['extra_heads.2"):  # params say 4 heads, 3 are stored
        load_meta_mtp(tmp_path / "c", n_heads=3)
    (tmp_path / "c" / "consolidated.pth").unlink()
    with pytest.raises(StudioError, match=r"no consolidated\.pth"):
        load_meta_mtp(tmp_path / "c", n_heads=3)
