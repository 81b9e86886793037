"""Attention patterns taken from the model's own forward (dynmon.adapters.patterns) equal patterns
recomputed by hand: HF GPT-2, LLaMA-style (rotary, grouped-query), nn.TransformerEncoder and
nanoGPT-style models; modules with positions inside are refused, never scored wrongly."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TinyLM
from torch import nn

import dynmon
from dynmon.adapters import patterns as P
from dynmon.adapters import reference as ref

transformers = pytest.importorskip("transformers")

V, T, B = 40, 10, 3


def _tokens(seed: int = 0) -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def _inputs(modules: dict[str, nn.Module], run) -> dict[str, dict]:
    """Each module's call arguments in one forward (``run()``), by a plain pre-hook."""
    seen: dict[str, dict] = {}
    handles = [
        m.register_forward_pre_hook(
            lambda _m, a, kw, n=n: seen.__setitem__(n, {"args": a, **kw}), with_kwargs=True
        )
        for n, m in modules.items()
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _causal(A: torch.Tensor) -> torch.Tensor:
    n = A.shape[-1]
    return A.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf).softmax(-1)


# -- Hugging Face GPT-2: eager attention, switched back --
def test_gpt2_patterns_equal_hand_recomputation_and_sdpa_is_restored():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_head=4, n_layer=2, n_positions=16, vocab_size=V)
    model = transformers.GPT2LMHeadModel(cfg).train()
    assert model.config._attn_implementation == "sdpa"
    hs = dynmon.heads(model)
    out, pats = P.forward_with_patterns(model, _tokens(), hs)
    assert pats.shape == (2, B, 4, T, T)
    assert model.config._attn_implementation == "sdpa" and model.training
    assert all(m.training for m in model.modules())
    model.eval()
    seen = _inputs({h.name: model.get_submodule(h.name) for h in hs}, lambda: model(_tokens()))
    for i, h in enumerate(hs):
        x = seen[h.name]["args"][0] if seen[h.name]["args"] else seen[h.name]["hidden_states"]
        torch.testing.assert_close(pats[i], ref.pattern(h, x, causal=True), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.logits, model(_tokens()).logits, rtol=1e-5, atol=1e-5)


# -- LLaMA-style: rotary positions and grouped-query attention, the model's own path --
def test_llama_gqa_rotary_patterns_equal_hand_recomputation():
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    torch.manual_seed(0)
    D, H = 32, 4
    cfg = transformers.LlamaConfig(
        hidden_size=D,
        num_attention_heads=H,
        num_key_value_heads=2,
        head_dim=D // H,
        intermediate_size=64,
        num_hidden_layers=2,
        vocab_size=V,
    )
    model = transformers.LlamaForCausalLM(cfg)
    before = model.config._attn_implementation
    hs = dynmon.heads(model)
    _, pats = P.forward_with_patterns(model, _tokens(1), hs)
    assert model.config._attn_implementation == before != "eager"
    mods = {h.name: model.get_submodule(h.name) for h in hs}
    seen = _inputs(mods, lambda: model(_tokens(1)))
    for i, h in enumerate(hs):
        x = seen[h.name]["hidden_states"]
        cos, sin = seen[h.name]["position_embeddings"]
        q = torch.einsum("btd,hde->bhte", x, h.W_Q)  # [B, H, T, dh]
        k = torch.einsum("btd,hde->bhte", x, h.W_K)  # [B, H, T, dh] (K heads expanded)
        q, k = apply_rotary_pos_emb(q, k, cos, sin)
        want = _causal(q @ k.transpose(-1, -2) / math.sqrt(D // H))  # [B, H, T, T]
        torch.testing.assert_close(pats[i], want, rtol=1e-5, atol=1e-6)


# -- nn.TransformerEncoder: recomputed, equal to torch's own per-head weights --
def test_transformer_encoder_patterns_equal_torchs_own_weights():
    torch.manual_seed(0)
    model = TinyLM(vocab=V).train()  # dropout 0.1: the capture runs in eval mode
    hs = dynmon.heads(model)
    _, pats = P.forward_with_patterns(model, _tokens(2), hs)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    mods = {h.name: model.get_submodule(h.name) for h in hs}
    seen = _inputs(mods, lambda: model(_tokens(2)))
    for i, h in enumerate(hs):
        a = seen[h.name]
        x = a["args"][0]
        mha = mods[h.name]
        with torch.no_grad():
            _, w = mha(
                x, x, x, attn_mask=a["attn_mask"], need_weights=True, average_attn_weights=False
            )
        torch.testing.assert_close(pats[i], w, rtol=1e-5, atol=1e-6)


# -- nanoGPT-style: flash attention never forms the pattern; recomputed and checked --
class CausalSelfAttention(nn.Module):
    """nanoGPT's attention (fused c_attn, SDPA flash path); ``rotary`` rotates q and k inside."""

    def __init__(self, n_embd: int, n_head: int, rotary: bool = False) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.n_embd, self.rotary = n_head, n_embd, rotary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        if self.rotary:  # (B, nh, T, hs): rotate pairs of channels by position
            q, k = _rotate(q), _rotate(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))  # (B, T, C)


def _rotate(x: torch.Tensor) -> torch.Tensor:
    t, half = x.shape[-2], x.shape[-1] // 2
    ang = torch.arange(t)[:, None] * (10000 ** (-torch.arange(half) / half))[None]  # [T, hs/2]
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * ang.cos() - x2 * ang.sin(), x1 * ang.sin() + x2 * ang.cos()], -1)


class NanoGPT(nn.Module):
    def __init__(self, n_embd: int = 32, n_head: int = 4, rotary: bool = False) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, n_embd), nn.Embedding(T, n_embd)
        self.attn = nn.ModuleList(CausalSelfAttention(n_embd, n_head, rotary) for _ in range(2))
        self.ln = nn.ModuleList(nn.LayerNorm(n_embd) for _ in range(2))
        self.lm_head = nn.Linear(n_embd, V, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))  # [B, T, C]
        for ln, attn in zip(self.ln, self.attn, strict=True):
            x = x + attn(ln(x))
        return self.lm_head(x)  # [B, T, V]


def test_nanogpt_patterns_equal_hand_recomputation():
    torch.manual_seed(0)
    model = NanoGPT()
    hs = dynmon.heads(model)
    _, pats = P.forward_with_patterns(model, _tokens(3), hs)
    seen = _inputs({h.name: model.get_submodule(h.name) for h in hs}, lambda: model(_tokens(3)))
    for i, h in enumerate(hs):
        x = seen[h.name]["args"][0]
        attn = model.get_submodule(h.name)
        q, k, _ = attn.c_attn(x).split(32, dim=2)  # straight from the module's own linear
        q, k = (z.view(B, T, 4, 8).transpose(1, 2) for z in (q, k))  # (B, nh, T, hs)
        want = _causal(q @ k.transpose(-1, -2) / math.sqrt(8))
        torch.testing.assert_close(pats[i], want, rtol=1e-5, atol=1e-6)


def test_a_module_with_rotary_inside_is_refused_not_recomputed():
    torch.manual_seed(0)
    model = NanoGPT(rotary=True)
    with pytest.raises(P.PatternError, match="rotary"):
        P.forward_with_patterns(model, _tokens(), dynmon.heads(model))


class RopeAttention(nn.Module):
    """A LLaMA-style module outside Hugging Face: q/k/v/o projections with rotary inside."""

    def __init__(self, d: int = 32, h: int = 4) -> None:
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d) for _ in range(4))
        self.num_heads, self.head_dim = h, d // h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.num_heads, -1).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        y = F.scaled_dot_product_attention(_rotate(q), _rotate(k), v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, d))


def test_a_custom_rotary_model_has_no_pattern_source_and_says_what_to_do():
    model = nn.Sequential(nn.Embedding(V, 32), RopeAttention())
    with pytest.raises(P.PatternError, match="roles_patterns"):
        P.forward_with_patterns(model, _tokens(), dynmon.heads(model))


def test_hooks_and_modes_are_restored_even_when_the_forward_fails():
    model = NanoGPT()

    def broken(m, tokens):
        raise RuntimeError("boom")

    hs = dynmon.heads(model)
    with pytest.raises(RuntimeError, match="boom"):
        P.forward_with_patterns(model, _tokens(), hs, forward=broken)
    assert model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
