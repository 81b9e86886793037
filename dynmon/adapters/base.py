"""The one layout every adapter returns: per-head attention weights, TransformerLens-style."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True)
class HeadWeights:
    """Per-head weights of one attention layer, detached, in the model's dtype and device.

    Shapes follow TransformerLens: ``W_Q, W_K, W_V`` are ``[H, D, dh]`` and ``W_O`` is
    ``[H, dh, D]``, so head ``h`` computes ``q = x @ W_Q[h] + b_Q[h]`` and writes
    ``z @ W_O[h]`` to the residual stream. With grouped-query attention, K and V are
    expanded to the ``H`` query heads and ``n_kv_heads`` records how many distinct ones exist.
    """

    name: str  # module path inside the (unwrapped) model
    layer: int  # index among the model's attention layers, in module order
    W_Q: Tensor  # [H, D, dh]
    W_K: Tensor  # [H, D, dh]
    W_V: Tensor  # [H, D, dh]
    W_O: Tensor  # [H, dh, D]
    b_Q: Tensor | None = None  # [H, dh]
    b_K: Tensor | None = None  # [H, dh]
    b_V: Tensor | None = None  # [H, dh]
    b_O: Tensor | None = None  # [D]
    n_kv_heads: int | None = None  # distinct K/V heads under grouped-query attention

    @property
    def n_heads(self) -> int:
        return self.W_Q.shape[0]

    @property
    def d_model(self) -> int:
        return self.W_Q.shape[1]

    @property
    def d_head(self) -> int:
        return self.W_Q.shape[2]
