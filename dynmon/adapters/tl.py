"""TransformerLens 4 ``TransformerBridge`` attention, read through the bridge's own live views."""

from __future__ import annotations

import sys

from torch import nn

from dynmon.adapters.base import HeadWeights
from dynmon.adapters.layout import head_weights

_MODULE = "transformer_lens.model_bridge.generalized_components.attention"


def match(module: nn.Module) -> bool:
    """Any ``AttentionBridge`` (never imports transformer_lens)."""
    attention = sys.modules.get(_MODULE)
    return attention is not None and isinstance(module, attention.AttentionBridge)


def extract(m: nn.Module) -> HeadWeights:
    """``W_Q`` etc. as the bridge gives them (``[H, D, dh]``; K/V with ``n_kv_heads`` under GQA)."""
    return head_weights(m.W_Q, m.W_K, m.W_V, m.W_O, m.b_Q, m.b_K, m.b_V, m.b_O)
