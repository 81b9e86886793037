"""nanoGPT's ``CausalSelfAttention``: fused ``c_attn`` ``[3D, D]``, ``c_proj``, ``n_head``."""

from __future__ import annotations

from torch import nn

from dynmon.adapters.base import HeadWeights
from dynmon.adapters.layout import bias_heads, head_weights, linear_in_heads, linear_out_heads


def match(module: nn.Module) -> bool:
    """A module with ``n_head`` and linears ``c_attn`` (3 x D outputs) and ``c_proj``."""
    c_attn, c_proj = getattr(module, "c_attn", None), getattr(module, "c_proj", None)
    return (
        isinstance(getattr(module, "n_head", None), int)
        and isinstance(c_attn, nn.Linear)
        and isinstance(c_proj, nn.Linear)
        and c_attn.out_features == 3 * c_proj.out_features
    )


def extract(m: nn.Module) -> HeadWeights:
    """Split ``c_attn`` rows into q, k, v and each into heads."""
    H, D = m.n_head, m.c_proj.out_features
    Wq, Wk, Wv = m.c_attn.weight.split(D, 0)  # 3 x [D, D]
    bq = bk = bv = None
    if m.c_attn.bias is not None:
        bq, bk, bv = m.c_attn.bias.split(D)  # 3 x [D]
    return head_weights(
        linear_in_heads(Wq, H),
        linear_in_heads(Wk, H),
        linear_in_heads(Wv, H),
        linear_out_heads(m.c_proj.weight, H),
        bias_heads(bq, H),
        bias_heads(bk, H),
        bias_heads(bv, H),
        m.c_proj.bias,
    )
