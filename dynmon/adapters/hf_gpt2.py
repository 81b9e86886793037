"""Hugging Face GPT-2 attention: fused ``Conv1D`` ``c_attn`` ``[D, 3D]`` (in, out), ``c_proj``."""

from __future__ import annotations

import sys

from torch import nn

from dynmon.adapters.base import HeadWeights
from dynmon.adapters.layout import bias_heads, conv1d_in_heads, conv1d_out_heads, head_weights


def _is_conv1d(module: object) -> bool:
    """Whether ``module`` is transformers' ``Conv1D`` (never imports transformers)."""
    utils = sys.modules.get("transformers.pytorch_utils")
    return utils is not None and isinstance(module, utils.Conv1D)


def match(module: nn.Module) -> bool:
    """A module with ``num_heads`` and ``Conv1D`` projections ``c_attn`` and ``c_proj``."""
    return (
        isinstance(getattr(module, "num_heads", None), int)
        and _is_conv1d(getattr(module, "c_attn", None))
        and _is_conv1d(getattr(module, "c_proj", None))
    )


def extract(m: nn.Module) -> HeadWeights:
    """Split ``c_attn`` columns into q, k, v (q from ``q_attn`` in cross-attention) per head."""
    H, D = m.num_heads, m.c_proj.weight.shape[1]
    W, b = m.c_attn.weight, m.c_attn.bias  # [D, 3D], [3D] (self) or [D, 2D], [2D] (cross)
    if getattr(m, "is_cross_attention", False):
        (Wk, Wv), (bk, bv) = W.split(D, 1), b.split(D)
        Wq, bq = m.q_attn.weight, m.q_attn.bias  # [D, D], [D]
    else:
        (Wq, Wk, Wv), (bq, bk, bv) = W.split(D, 1), b.split(D)
    return head_weights(
        conv1d_in_heads(Wq, H),
        conv1d_in_heads(Wk, H),
        conv1d_in_heads(Wv, H),
        conv1d_out_heads(m.c_proj.weight, H),
        bias_heads(bq, H),
        bias_heads(bk, H),
        bias_heads(bv, H),
        m.c_proj.bias,
    )
