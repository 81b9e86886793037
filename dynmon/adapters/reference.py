"""Recompute attention from ``HeadWeights``, to check an adapter against its module."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dynmon.adapters.base import HeadWeights


def _project(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """``x @ W[h] + b[h]`` for every head: ``[B, T, D]`` -> ``[B, H, T, dh]``."""
    y = torch.einsum("btd,hde->bhte", x, W)  # [B, H, T, dh]
    return y if b is None else y + b[None, :, None, :]


def pattern(
    hw: HeadWeights, x: Tensor, *, x_kv: Tensor | None = None, causal: bool = False
) -> Tensor:
    """Softmax attention ``[B, H, T, S]`` of queries from ``x`` over keys from ``x_kv`` (or x)."""
    x_kv = x if x_kv is None else x_kv
    q = _project(x, hw.W_Q, hw.b_Q)  # [B, H, T, dh]
    k = _project(x_kv, hw.W_K, hw.b_K)  # [B, H, S, dh]
    scores = q @ k.transpose(-1, -2) / math.sqrt(hw.d_head)  # [B, H, T, S]
    if causal:
        T, S = scores.shape[-2:]
        future = torch.ones(T, S, dtype=torch.bool, device=x.device).triu(S - T + 1)
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(-1)


def output(
    hw: HeadWeights,
    x: Tensor,
    *,
    x_kv: Tensor | None = None,
    x_v: Tensor | None = None,
    causal: bool = False,
) -> Tensor:
    """The layer's output ``[B, T, D]``: ``sum_h pattern_h (x_v W_V[h] + b_V[h]) W_O[h] + b_O``.

    Keys come from ``x_kv`` (default ``x``), values from ``x_v`` (default ``x_kv``).
    """
    x_kv = x if x_kv is None else x_kv
    x_v = x_kv if x_v is None else x_v
    p = pattern(hw, x, x_kv=x_kv, causal=causal)  # [B, H, T, S]
    z = p @ _project(x_v, hw.W_V, hw.b_V)  # [B, H, T, dh]
    out = torch.einsum("bhte,hed->btd", z, hw.W_O)  # [B, T, D]
    return out if hw.b_O is None else out + hw.b_O
