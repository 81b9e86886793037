"""BERT-style attention (BERT, RoBERTa, ELECTRA): ``self.query/key/value`` and ``output.dense``."""

from __future__ import annotations

from torch import nn

from dynmon.adapters.base import HeadWeights
from dynmon.adapters.layout import bias_heads, head_weights, linear_in_heads, linear_out_heads


def _linears(module: object, names: tuple[str, ...]) -> bool:
    """Whether every one of ``names`` is an ``nn.Linear`` attribute of ``module``."""
    return all(isinstance(getattr(module, n, None), nn.Linear) for n in names)


def match(module: nn.Module) -> bool:
    """A module whose ``self`` has linear query/key/value and whose ``output`` has ``dense``."""
    inner, output = getattr(module, "self", None), getattr(module, "output", None)
    return (
        isinstance(inner, nn.Module)
        and isinstance(getattr(inner, "num_attention_heads", None), int)
        and _linears(inner, ("query", "key", "value"))
        and _linears(output, ("dense",))
    )


def extract(m: nn.Module) -> HeadWeights:
    """Split query/key/value rows and ``output.dense`` columns into heads."""
    s, dense = m.self, m.output.dense
    H = s.num_attention_heads
    return head_weights(
        linear_in_heads(s.query.weight, H),
        linear_in_heads(s.key.weight, H),
        linear_in_heads(s.value.weight, H),
        linear_out_heads(dense.weight, H),
        bias_heads(s.query.bias, H),
        bias_heads(s.key.bias, H),
        bias_heads(s.value.bias, H),
        dense.bias,
    )
