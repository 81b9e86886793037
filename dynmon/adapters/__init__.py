"""Adapters: find any model's attention layers and give their per-head weights in one layout.

``heads(model)`` walks the (unwrapped) model in module order; the first registered adapter
that matches a module reads it and its submodules are not searched further. Built-ins cover
TransformerLens bridges, Hugging Face GPT-2, q/k/v/o-projection models (LLaMA-style, GQA),
BERT-style attention, ``nn.MultiheadAttention`` and nanoGPT; ``register_adapter`` adds more.
"""

from __future__ import annotations

from dynmon.adapters import bert, hf_gpt2, nanogpt, qkvo, tl, torch_mha
from dynmon.adapters.base import HeadWeights
from dynmon.adapters.discover import NoAttentionFound, heads, iter_heads
from dynmon.adapters.layout import (
    bias_heads,
    conv1d_in_heads,
    conv1d_out_heads,
    expand_kv,
    head_weights,
    linear_in_heads,
    linear_out_heads,
)
from dynmon.adapters.params import grads, weights
from dynmon.adapters.registry import (
    Adapter,
    register_adapter,
    register_builtin,
    registered_adapters,
    unregister_adapter,
)
from dynmon.adapters.unwrap import unwrap

# Tried in this order, after any user adapter; a TransformerLens bridge is matched before the
# Hugging Face module it wraps is reached.
register_builtin("transformer_lens", tl.match, tl.extract)
register_builtin("hf_gpt2", hf_gpt2.match, hf_gpt2.extract)
register_builtin("qkvo_proj", qkvo.match, qkvo.extract)
register_builtin("bert", bert.match, bert.extract)
register_builtin("torch_mha", torch_mha.match, torch_mha.extract)
register_builtin("nanogpt", nanogpt.match, nanogpt.extract)

__all__ = [
    "Adapter",
    "HeadWeights",
    "NoAttentionFound",
    "bias_heads",
    "conv1d_in_heads",
    "conv1d_out_heads",
    "expand_kv",
    "grads",
    "head_weights",
    "heads",
    "iter_heads",
    "linear_in_heads",
    "linear_out_heads",
    "register_adapter",
    "registered_adapters",
    "unregister_adapter",
    "unwrap",
    "weights",
]
