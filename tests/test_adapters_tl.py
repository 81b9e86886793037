"""Adapters on TransformerLens 4 bridges: a native model (with GQA) and a wrapped HF GPT-2."""

from __future__ import annotations

import pytest
import torch

from dynmon.adapters import grads, heads, weights
from dynmon.adapters import reference as ref

pytest.importorskip("transformer_lens")
transformers = pytest.importorskip("transformers")

from transformer_lens.config import TransformerBridgeConfig  # noqa: E402
from transformer_lens.model_bridge import TransformerBridge  # noqa: E402

D, H, B, T, V = 32, 4, 2, 6, 40


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def _tokens() -> torch.Tensor:
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(0))


def _check_against_cache(bridge) -> None:
    """Pattern and output of every layer, recomputed from heads, against the bridge's hooks."""
    hs = heads(bridge)
    with torch.no_grad():
        _, cache = bridge.run_with_cache(_tokens())
    for i, hw in enumerate(hs):
        x = cache[f"blocks.{i}.attn.hook_in"]
        _close(ref.pattern(hw, x, causal=True), cache[f"blocks.{i}.attn.hook_pattern"])
        _close(ref.output(hw, x, causal=True), cache[f"blocks.{i}.attn.hook_out"])


@pytest.fixture(scope="module")
def native():
    cfg = TransformerBridgeConfig(
        d_model=D,
        d_head=D // H,
        n_heads=H,
        n_key_value_heads=2,
        n_layers=2,
        n_ctx=16,
        d_vocab=V,
        attn_only=True,
        normalization_type=None,
        seed=0,
        device="cpu",
    )
    return TransformerBridge.boot_native(cfg, dtype=torch.float64)


def test_native_bridge_heads_match_hooks_with_gqa(native):
    hs = heads(native)
    assert [h.name for h in hs] == [f"blocks.{i}._original_component.attn" for i in range(2)]
    for hw in hs:
        assert hw.n_kv_heads == 2 and hw.W_K.shape == (H, D, D // H)
        assert hw.b_Q.shape == hw.b_K.shape == (H, D // H) and hw.b_O.shape == (D,)
        _close(hw.W_K[0], hw.W_K[1])
    _check_against_cache(native)


def test_native_bridge_heads_are_detached_live_views(native):
    hw = heads(native)[0]
    attn = native.blocks[0].attn
    assert not hw.W_Q.requires_grad and hw.W_Q.grad_fn is None
    assert hw.W_Q.dtype == torch.float64
    assert hw.W_Q.untyped_storage().data_ptr() == attn.q.weight.untyped_storage().data_ptr()


def _tokenizer():
    """A word-level tokenizer built offline that the bridge accepts."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {f"t{i}": i for i in range(V - 1)} | {"<unk>": V - 1}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    special = dict(unk_token="<unk>", bos_token="<unk>", eos_token="<unk>", pad_token="<unk>")
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=tk, **special)
    tok.init_kwargs["name_or_path"] = "tiny-wordlevel"
    tok.init_kwargs["add_bos_token"] = True  # else the bridge reloads it from the Hub
    return tok


def _gpt2_config():
    return transformers.GPT2Config(
        n_embd=D, n_head=H, n_layer=2, n_positions=16, vocab_size=V, attn_implementation="eager"
    )


@pytest.fixture(scope="module")
def gpt2_bridge():
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(_gpt2_config()).double().eval()
    return TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=_tokenizer())


def test_gpt2_bridge_heads_match_hooks(gpt2_bridge):
    hs = heads(gpt2_bridge)
    assert [h.name for h in hs] == [f"blocks.{i}._original_component.attn" for i in range(2)]
    assert all(h.b_Q is not None and h.b_O is not None and h.n_kv_heads is None for h in hs)
    _check_against_cache(gpt2_bridge)


def test_gpt2_bridge_heads_equal_the_plain_hf_split():
    """The bridge splits c_attn; its heads equal those dynmon reads from the unwrapped GPT-2."""
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(_gpt2_config()).eval()
    plain = [
        {f: getattr(h, f).clone() for f in ("W_Q", "W_K", "W_V", "W_O", "b_V")} for h in heads(hf)
    ]
    bridge = TransformerBridge.boot_transformers("gpt2", hf_model=hf, tokenizer=_tokenizer())
    for expected, got in zip(plain, heads(bridge), strict=True):
        for f, t in expected.items():
            torch.testing.assert_close(getattr(got, f), t, rtol=0, atol=0)


def test_gpt2_bridge_weights_dedup_and_grads(gpt2_bridge):
    w = weights(gpt2_bridge)
    names = [n for n, p in gpt2_bridge.named_parameters() if p.dim() == 2]
    assert len(names) > len(w)  # the split q/k/v alias the fused qkv
    attn0 = "transformer.h.0._original_component.attn."
    assert all(f"{attn0}{p}._original_component.weight" in w for p in "qkvo")
    assert f"{attn0}qkv._original_component.weight" not in w
    # every element once: as many numbers as a fresh GPT-2's own 2-D parameters
    fresh = transformers.GPT2LMHeadModel(_gpt2_config())
    n_fresh = sum(p.numel() for p in fresh.parameters() if p.dim() == 2)
    assert sum(t.numel() for t in w.values()) == n_fresh
    ptrs = {(t.untyped_storage().data_ptr(), t.storage_offset()) for t in w.values()}
    assert len(ptrs) == len(w)

    gpt2_bridge.zero_grad(set_to_none=True)
    gpt2_bridge(_tokens()).sum().backward()
    g = grads(gpt2_bridge)
    assert set(g) == set(w)  # the pieces the forward pass used carry the gradients
    assert all(g[n].shape == w[n].shape and not g[n].requires_grad for n in g)
    gpt2_bridge.zero_grad(set_to_none=True)
