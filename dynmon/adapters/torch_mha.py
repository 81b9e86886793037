"""``nn.MultiheadAttention``, also as self- and cross-attention inside nn.Transformer layers."""

from __future__ import annotations

from torch import nn

from dynmon.adapters.base import HeadWeights
from dynmon.adapters.layout import bias_heads, head_weights, linear_in_heads, linear_out_heads


def match(module: nn.Module) -> bool:
    """Any ``nn.MultiheadAttention``."""
    return isinstance(module, nn.MultiheadAttention)


def extract(m: nn.MultiheadAttention) -> HeadWeights:
    """Split the packed ``in_proj`` (or separate q/k/v weights when kdim/vdim differ) per head.

    With separate weights ``W_K`` is ``[H, kdim, dh]`` and ``W_V`` is ``[H, vdim, dh]``.
    ``add_bias_kv``'s learned extra key/value and ``add_zero_attn`` are not weights of a head.
    """
    H, D = m.num_heads, m.embed_dim
    if m.in_proj_weight is not None:
        Wq, Wk, Wv = m.in_proj_weight.split(D, 0)  # 3 x [H*dh, D]
    else:
        Wq, Wk, Wv = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    bq = bk = bv = None
    if m.in_proj_bias is not None:
        bq, bk, bv = m.in_proj_bias.split(D)  # 3 x [H*dh]
    out = m.out_proj
    return head_weights(
        linear_in_heads(Wq, H),
        linear_in_heads(Wk, H),
        linear_in_heads(Wv, H),
        linear_out_heads(out.weight, H),
        bias_heads(bq, H),
        bias_heads(bk, H),
        bias_heads(bv, H),
        out.bias,
    )
