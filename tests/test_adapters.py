"""Adapters on plain PyTorch modules: nn.MultiheadAttention, nn.Transformer layers, nanoGPT,
the registry, wrappers, and the no-attention error."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dynmon
from dynmon.adapters import (
    HeadWeights,
    NoAttentionFound,
    grads,
    head_weights,
    heads,
    linear_in_heads,
    linear_out_heads,
    register_adapter,
    registered_adapters,
    unregister_adapter,
    unwrap,
    weights,
)
from dynmon.adapters import reference as ref

D, H, B, T = 16, 4, 2, 5


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


class CausalSelfAttention(nn.Module):
    """A nanoGPT-style attention block written for this test (fused c_attn, flash path)."""

    def __init__(self, n_embd: int, n_head: int, bias: bool = True) -> None:
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        self.n_head, self.n_embd = n_head, n_embd

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (
            z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
            for z in (q, k, v)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(b, t, c))  # (B, T, C)


class MyAttention(nn.Module):
    """A custom attention no built-in adapter knows (q/k/v/o without the _proj suffix)."""

    def __init__(self, d: int, n_heads: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.n_heads = n_heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, self.n_heads, -1).transpose(1, 2)  # [B, H, T, dh]
            for p in (self.q, self.k, self.v)
        )
        z = F.scaled_dot_product_attention(q, k, v)  # [B, H, T, dh]
        return self.o(z.transpose(1, 2).reshape(b, t, d))  # [B, T, D]


class Net(nn.Module):
    """Two MyAttention layers between linears: nothing the built-ins understand."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(D, D)
        self.blocks = nn.ModuleList(MyAttention(D, H) for _ in range(2))
        self.act = nn.ReLU()
        self.out = nn.Linear(D, 3)


def extract_my_attention(m: MyAttention) -> HeadWeights:
    """The user adapter, as the error message suggests writing it."""
    n = m.n_heads
    q, k, v = (linear_in_heads(p.weight, n) for p in (m.q, m.k, m.v))
    return head_weights(
        q,
        k,
        v,
        linear_out_heads(m.o.weight, n),
        m.q.bias.view(n, -1),  # [H, dh]
        m.k.bias.view(n, -1),  # [H, dh]
        m.v.bias.view(n, -1),  # [H, dh]
        m.o.bias,
    )


@pytest.fixture
def registered():
    """Register adapters inside a test and remove them afterwards."""
    added = []

    def add(*args, **kwargs):
        added.append(register_adapter(*args, **kwargs))
        return added[-1]

    yield add
    for a in added:
        if a in registered_adapters():
            unregister_adapter(a)


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


# --- nn.MultiheadAttention -----------------------------------------------------------------


@pytest.mark.parametrize("causal", [False, True])
def test_mha_pattern_and_output_match_module(causal):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(D, H, batch_first=True).double()
    nn.init.normal_(mha.in_proj_bias)
    nn.init.normal_(mha.out_proj.bias)
    x = _x(B, T, D)
    mask = (
        nn.Transformer.generate_square_subsequent_mask(T, dtype=torch.float64) if causal else None
    )
    out, attn = mha(x, x, x, attn_mask=mask, need_weights=True, average_attn_weights=False)
    (hw,) = heads(mha)
    assert (hw.name, hw.layer, hw.n_kv_heads) == ("", 0, None)
    assert hw.W_Q.shape == (H, D, D // H) and hw.W_O.shape == (H, D // H, D)
    assert hw.b_Q.shape == (H, D // H) and hw.b_O.shape == (D,)
    _close(ref.pattern(hw, x, causal=causal), attn)
    _close(ref.output(hw, x, causal=causal), out)


def test_mha_cross_attention_with_kdim_vdim():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(D, H, kdim=8, vdim=12, batch_first=True).double()
    x, k, v = _x(B, T, D), _x(B, 7, 8), _x(B, 7, 12)
    out, attn = mha(x, k, v, need_weights=True, average_attn_weights=False)
    (hw,) = heads(mha)
    assert hw.W_K.shape == (H, 8, D // H) and hw.W_V.shape == (H, 12, D // H)
    _close(ref.pattern(hw, x, x_kv=k), attn)
    _close(ref.output(hw, x, x_kv=k, x_v=v), out)


def test_transformer_layers_are_found_in_module_order():
    model = nn.Transformer(
        D, H, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=32, batch_first=True
    )
    names = [h.name for h in heads(model)]
    assert names == [
        "encoder.layers.0.self_attn",
        "encoder.layers.1.self_attn",
        "decoder.layers.0.self_attn",
        "decoder.layers.0.multihead_attn",
        "decoder.layers.1.self_attn",
        "decoder.layers.1.multihead_attn",
    ]
    assert [h.layer for h in heads(model)] == list(range(6))


def test_decoder_layer_cross_attention_matches_module():
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(D, H, 32, dropout=0.0, batch_first=True).double().eval()
    x, memory = _x(B, T, D), _x(B, 7, D)
    self_hw, cross_hw = heads(layer)
    _, attn = layer.multihead_attn(x, memory, memory, average_attn_weights=False)
    _close(ref.pattern(cross_hw, x, x_kv=memory), attn)
    assert self_hw.name == "self_attn" and cross_hw.name == "multihead_attn"


def test_tiny_lm_fixture_has_two_layers(tiny_lm):
    hs = heads(tiny_lm)
    assert [h.name for h in hs] == ["layers.0.self_attn", "layers.1.self_attn"]


# --- nanoGPT ------------------------------------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_nanogpt_output_matches_module(bias):
    torch.manual_seed(0)
    attn = CausalSelfAttention(D, H, bias=bias).double()
    x = _x(B, T, D)
    (hw,) = heads(attn)
    assert (hw.b_Q is None) == (not bias) and (hw.b_O is None) == (not bias)
    _close(ref.output(hw, x, causal=True), attn(x))


def test_nanogpt_pattern_matches_its_own_queries_and_keys():
    torch.manual_seed(0)
    attn = CausalSelfAttention(D, H).double()
    x = _x(B, T, D)
    q, k, _ = attn.c_attn(x).split(D, dim=2)
    q, k = (z.view(B, T, H, -1).transpose(1, 2) for z in (q, k))  # [B, H, T, dh]
    scores = q @ k.transpose(-1, -2) / math.sqrt(D // H)  # [B, H, T, T]
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    (hw,) = heads(attn)
    _close(ref.pattern(hw, x, causal=True), scores.softmax(-1))


# --- contract: views, detached, dtype/device, no changes to the model -----------------------


def test_heads_are_detached_views_and_leave_the_model_alone():
    torch.manual_seed(0)
    attn = CausalSelfAttention(D, H)
    before = {k: v.clone() for k, v in attn.state_dict().items()}
    (hw,) = heads(attn)
    for f in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O"):
        t = getattr(hw, f)
        assert not t.requires_grad and t.grad_fn is None, f
    assert hw.W_Q.untyped_storage().data_ptr() == attn.c_attn.weight.untyped_storage().data_ptr()
    assert hw.W_O.untyped_storage().data_ptr() == attn.c_proj.weight.untyped_storage().data_ptr()
    assert all(p.requires_grad for p in attn.parameters())
    assert all(torch.equal(before[k], v) for k, v in attn.state_dict().items())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_heads_keep_the_model_dtype(dtype):
    hs = heads(nn.TransformerEncoderLayer(D, H, 32).to(dtype))
    assert all(getattr(h, f).dtype == dtype for h in hs for f in ("W_Q", "W_K", "W_O", "b_O"))


def test_heads_keep_the_model_device():
    layer = nn.TransformerEncoderLayer(D, H, 32, device="meta")
    (hw,) = heads(layer)
    assert hw.W_Q.device.type == "meta" and hw.W_O.shape == (H, D // H, D)


# --- wrappers ---------------------------------------------------------------------------------


class Wrapper(nn.Module):
    """What DDP looks like from outside: the model as the only child ``module``."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_unwrap_strips_ddp_like_dataparallel_and_compile(tiny_lm):
    compiled = torch.compile(Wrapper(tiny_lm))  # wraps only: never run here
    assert unwrap(Wrapper(compiled)) is tiny_lm
    assert unwrap(nn.DataParallel(tiny_lm)) is tiny_lm
    assert unwrap(tiny_lm) is tiny_lm
    expected = [h.name for h in heads(tiny_lm)]
    for wrapped in (Wrapper(tiny_lm), compiled, Wrapper(compiled), nn.DataParallel(tiny_lm)):
        assert [h.name for h in heads(wrapped)] == expected
        assert list(weights(wrapped)) == list(weights(tiny_lm))


def test_a_model_with_a_module_attribute_and_more_is_not_unwrapped():
    class Holder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.module = nn.MultiheadAttention(D, H)
            self.extra = nn.Linear(D, D)

    holder = Holder()
    assert unwrap(holder) is holder
    assert [h.name for h in heads(holder)] == ["module"]


# --- registry ---------------------------------------------------------------------------------


def test_no_attention_error_names_module_types_and_register_adapter():
    with pytest.raises(NoAttentionFound) as info:
        heads(Net())
    msg = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "Net" in msg and "MyAttention x2" in msg and "Linear x10" in msg and "ReLU x1" in msg
    assert "dynmon.register_adapter(MyAttention, extract)" in msg and "head_weights(" in msg


def test_register_adapter_by_class_reads_a_custom_module(registered):
    registered(MyAttention, extract_my_attention)
    model = Net().double()
    hs = heads(model)
    assert [(h.name, h.layer) for h in hs] == [("blocks.0", 0), ("blocks.1", 1)]
    x = _x(B, T, D)
    _close(ref.output(hs[1], x), model.blocks[1](x))


def test_register_adapter_by_predicate_and_top_level_export(registered):
    adapter = registered(
        lambda m: hasattr(m, "q") and hasattr(m, "n_heads"), extract_my_attention, name="mine"
    )
    assert adapter.name == "mine" and registered_adapters()[0] is adapter
    assert dynmon.register_adapter is register_adapter
    assert len(heads(Net())) == 2


def test_user_adapter_takes_precedence_over_builtins(registered):
    def zeros(m: nn.MultiheadAttention) -> HeadWeights:
        z = torch.zeros(1, m.embed_dim, 2)  # [H, D, dh]
        return head_weights(z, z, z, z.transpose(1, 2))

    layer = nn.TransformerEncoderLayer(D, H, 32)
    registered(nn.MultiheadAttention, zeros, name="zeros", first=False)
    assert heads(layer)[0].n_heads == H  # a fallback: the built-in still wins
    registered(nn.MultiheadAttention, zeros, name="zeros")  # same name: replaced, now first
    assert [a.name for a in registered_adapters()].count("zeros") == 1
    assert heads(layer)[0].n_heads == 1
    unregister_adapter("zeros")
    assert heads(layer)[0].n_heads == H


def test_matched_modules_are_not_searched_further(registered):
    class Outer(nn.Module):
        """Attention that delegates to an inner nn.MultiheadAttention."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = nn.MultiheadAttention(D, H)

    model = nn.Sequential(Outer(), Outer())
    assert [h.name for h in heads(model)] == ["0.inner", "1.inner"]
    registered(Outer, lambda m: heads(m.inner)[0])
    assert [h.name for h in heads(model)] == ["0", "1"]


def test_adapter_returning_bad_shapes_gets_a_clear_error(registered):
    def wrong(m: nn.MultiheadAttention) -> HeadWeights:
        z = torch.zeros(H, D, 4)  # [H, D, dh]
        return head_weights(z, z, z, z)  # W_O should be [H, dh, D]

    registered(nn.MultiheadAttention, wrong, name="wrong")
    with pytest.raises(ValueError, match="'wrong' gave W_O of shape"):
        heads(nn.MultiheadAttention(D, H))


def test_register_adapter_rejects_a_non_module_class():
    with pytest.raises(TypeError):
        register_adapter(int, extract_my_attention)


def test_grouped_kv_heads_from_an_adapter_are_expanded(registered):
    def gqa(m: MyAttention) -> HeadWeights:
        hw = extract_my_attention(m)
        return head_weights(hw.W_Q, hw.W_K[:2], hw.W_V[:2], hw.W_O, b_K=hw.b_K[:2])

    registered(MyAttention, gqa)
    hw = heads(Net())[0]
    assert hw.n_kv_heads == 2 and hw.W_K.shape == (H, D, D // H) and hw.b_K.shape == (H, D // H)
    _close(hw.W_K[1].double(), hw.W_K[0].double())  # kv head 0 serves query heads 0 and 1
    _close(hw.W_V[2].double(), hw.W_V[3].double())


# --- weights and grads ----------------------------------------------------------------------


def test_weights_and_grads_cover_every_matrix_once(tiny_lm):
    tokens = torch.randint(0, 32, (2, 6), generator=torch.Generator().manual_seed(0))
    assert grads(tiny_lm) == {}
    tiny_lm(tokens).sum().backward()
    w, g = weights(tiny_lm), grads(tiny_lm)
    expected = [n for n, p in tiny_lm.named_parameters() if p.dim() == 2]
    assert list(w) == expected and list(g) == expected
    assert "embed.weight" in w and "layers.0.self_attn.in_proj_weight" in w
    for n, p in tiny_lm.named_parameters():
        if n in w:
            assert w[n].data_ptr() == p.data_ptr() and not w[n].requires_grad
            assert torch.equal(g[n], p.grad)


def test_weights_list_shared_memory_once_and_keep_the_pieces():
    class Fused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv = nn.Parameter(torch.randn(3 * D, D))
            self.q, self.k, self.v = (nn.Parameter(t) for t in self.qkv.data.split(D))
            self.alias = nn.Parameter(self.q.data)  # the same memory as q, another name
            self.tied = self.q  # the same Parameter: named_parameters lists it once

    w = weights(Fused())
    assert list(w) == ["q", "k", "v"]
    assert sum(t.numel() for t in w.values()) == 3 * D * D


# --- generic q_proj/k_proj/v_proj/o_proj ------------------------------------------------------


class ProjAttention(nn.Module):
    """BART/OPT-style names (``out_proj``) with grouped-query attention, written for this test."""

    def __init__(self, d: int, n_heads: int, n_kv_heads: int, **head_info: int) -> None:
        super().__init__()
        dh = d // n_heads
        self.q_proj = nn.Linear(d, n_heads * dh)
        self.k_proj = nn.Linear(d, n_kv_heads * dh)
        self.v_proj = nn.Linear(d, n_kv_heads * dh)
        self.out_proj = nn.Linear(n_heads * dh, d)
        self.n_rep, self.dh = n_heads // n_kv_heads, dh
        for k, v in head_info.items():
            setattr(self, k, v)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            p(x).view(b, t, -1, self.dh).transpose(1, 2)  # [B, heads, T, dh]
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )
        k, v = (z.repeat_interleave(self.n_rep, dim=1) for z in (k, v))  # [B, H, T, dh]
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # [B, H, T, dh]
        return self.out_proj(z.transpose(1, 2).reshape(b, t, d))  # [B, T, D]


@pytest.mark.parametrize("head_info", [{"head_dim": D // H}, {"num_heads": H}])
def test_qkvo_adapter_with_gqa_and_out_proj(head_info):
    torch.manual_seed(0)
    attn = ProjAttention(D, H, 2, **head_info).double()
    (hw,) = heads(attn)
    assert hw.n_kv_heads == 2 and hw.W_V.shape == (H, D, D // H)
    x = _x(B, T, D)
    _close(ref.output(hw, x, causal=True), attn(x))


def test_qkvo_adapter_without_head_info_says_what_to_do():
    with pytest.raises(ValueError, match="head_dim or num_heads.*register_adapter"):
        heads(ProjAttention(D, H, H))
