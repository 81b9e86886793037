"""Adapters on tiny Hugging Face models built from configs: GPT-2, LLaMA (GQA), BERT."""

from __future__ import annotations

import pytest
import torch

from dynmon.adapters import heads, weights
from dynmon.adapters import reference as ref

transformers = pytest.importorskip("transformers")

D, H, B, T, V = 32, 4, 2, 6, 50


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def _close_f32_softmax(a: torch.Tensor, b: torch.Tensor) -> None:
    """LLaMA's eager attention takes its softmax in float32 even in a float64 model."""
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _tokens() -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))


class Capture:
    """Record each watched module's ``hidden_states`` input (and any encoder states) and output."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.inputs: dict[str, dict] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles = []
        for name, m in modules.items():
            self.handles.append(m.register_forward_pre_hook(self._pre(name), with_kwargs=True))
            self.handles.append(m.register_forward_hook(self._post(name)))

    def _pre(self, name):
        def hook(module, args, kwargs):
            self.inputs[name] = {"x": args[0] if args else kwargs["hidden_states"], **kwargs}

        return hook

    def _post(self, name):
        def hook(module, args, out):
            self.outputs[name] = out[0]

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_embd=D,
        n_head=H,
        n_layer=2,
        n_positions=16,
        vocab_size=V,
        add_cross_attention=True,
        attn_implementation="eager",
    )
    return transformers.GPT2Model(cfg).double().eval()


def test_gpt2_heads_match_self_and_cross_attention(gpt2):
    hs = heads(gpt2)
    names = ["h.0.attn", "h.0.crossattention", "h.1.attn", "h.1.crossattention"]
    assert [h.name for h in hs] == names
    for h in hs:
        assert h.W_Q.shape == (H, D, D // H) and h.b_V.shape == (H, D // H)
    cap = Capture({n: gpt2.get_submodule(n) for n in names})
    encoder = _x(B, 7, D)
    with torch.no_grad():
        out = gpt2(_tokens(), encoder_hidden_states=encoder, output_attentions=True)
    cap.close()
    for i in range(2):
        self_hw, cross_hw = hs[2 * i], hs[2 * i + 1]
        x = cap.inputs[self_hw.name]["x"]
        _close(ref.pattern(self_hw, x, causal=True), out.attentions[i])
        _close(ref.output(self_hw, x, causal=True), cap.outputs[self_hw.name])
        x = cap.inputs[cross_hw.name]["x"]
        _close(ref.pattern(cross_hw, x, x_kv=encoder), out.cross_attentions[i])
        _close(ref.output(cross_hw, x, x_kv=encoder), cap.outputs[cross_hw.name])


def test_gpt2_heads_are_views_of_conv1d_weights(gpt2):
    hw = heads(gpt2)[0]
    attn = gpt2.h[0].attn
    ptr = attn.c_attn.weight.untyped_storage().data_ptr()
    assert all(getattr(hw, f).untyped_storage().data_ptr() == ptr for f in ("W_Q", "W_K", "W_V"))
    assert hw.W_O.untyped_storage().data_ptr() == attn.c_proj.weight.untyped_storage().data_ptr()
    assert not hw.W_Q.requires_grad


def test_gpt2_weights_include_embeddings_and_conv1d(gpt2):
    w = weights(gpt2)
    assert "wte.weight" in w and "h.0.attn.c_attn.weight" in w
    assert w["h.0.attn.c_attn.weight"].shape == (D, 3 * D)


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=D,
        num_attention_heads=H,
        num_key_value_heads=2,
        head_dim=D // H,
        intermediate_size=64,
        num_hidden_layers=2,
        vocab_size=V,
        attention_bias=True,
        attn_implementation="eager",
    )
    return transformers.LlamaModel(cfg).double().eval()


def test_llama_gqa_heads_match_module_without_rotation(llama):
    hs = heads(llama)
    assert [h.name for h in hs] == ["layers.0.self_attn", "layers.1.self_attn"]
    attn = llama.layers[1].self_attn
    hw = hs[1]
    assert hw.n_kv_heads == 2 and hw.W_K.shape == (H, D, D // H) and hw.b_K.shape == (H, D // H)
    _close(hw.W_K[0], hw.W_K[1])  # kv head 0 serves query heads 0 and 1 (repeat_kv order)
    _close(hw.W_V[2], hw.W_V[3])
    x = _x(B, T, D)
    cos, sin = torch.ones(B, T, D // H), torch.zeros(B, T, D // H)  # RoPE as the identity
    with torch.no_grad():
        out, attn_weights = attn(x, position_embeddings=(cos.double(), sin.double()))
    _close_f32_softmax(ref.pattern(hw, x), attn_weights)
    _close_f32_softmax(ref.output(hw, x), out)


def test_llama_heads_with_the_models_rope_match_its_causal_pattern(llama):
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    hw = heads(llama)[0]
    cap = Capture({"a": llama.layers[0].self_attn})
    with torch.no_grad():
        out = llama(_tokens(), output_attentions=True)
    cap.close()
    x, (cos, sin) = cap.inputs["a"]["x"], cap.inputs["a"]["position_embeddings"]
    q = torch.einsum("btd,hde->bhte", x, hw.W_Q) + hw.b_Q[:, None]  # [B, H, T, dh]
    k = torch.einsum("btd,hde->bhte", x, hw.W_K) + hw.b_K[:, None]  # [B, H, T, dh]
    q, k = apply_rotary_pos_emb(q, k, cos, sin)
    scores = q @ k.transpose(-1, -2) / (D // H) ** 0.5  # [B, H, T, T]
    scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    _close_f32_softmax(scores.softmax(-1), out.attentions[0])


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=D,
        num_attention_heads=H,
        num_hidden_layers=2,
        intermediate_size=64,
        vocab_size=V,
        attn_implementation="eager",
    )
    return transformers.BertModel(cfg).double().eval()


def test_bert_heads_match_self_attention_and_dense(bert):
    hs = heads(bert)
    assert [h.name for h in hs] == ["encoder.layer.0.attention", "encoder.layer.1.attention"]
    att = bert.encoder.layer[1].attention
    x = _x(B, T, D)
    with torch.no_grad():
        context, attn_weights = att.self(x)
        out = att.output.dense(context)
    _close(ref.pattern(hs[1], x), attn_weights)
    _close(ref.output(hs[1], x), out)


def test_bf16_hf_model_gives_bf16_heads():
    cfg = transformers.LlamaConfig(
        hidden_size=16,
        num_attention_heads=2,
        num_key_value_heads=1,
        intermediate_size=16,
        num_hidden_layers=1,
        vocab_size=V,
    )
    model = transformers.LlamaModel(cfg).to(torch.bfloat16)
    (hw,) = heads(model)
    assert hw.W_Q.dtype == hw.W_K.dtype == hw.W_O.dtype == torch.bfloat16
    assert hw.n_kv_heads == 1 and hw.W_K.shape == (2, 16, 8)
