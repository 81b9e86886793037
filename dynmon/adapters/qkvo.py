"""Separate q/k/v/o linear projections (LLaMA, Mistral, Qwen2, OPT, BART), GQA included."""

from __future__ import annotations

from torch import nn

from dynmon.adapters.base import HeadWeights
from dynmon.adapters.layout import bias_heads, head_weights, linear_in_heads, linear_out_heads

_HEAD_DIM = ("head_dim", "head_size", "d_head", "attention_head_size")
_N_HEADS = ("num_heads", "num_attention_heads", "n_heads", "n_head")


def _linear(module: nn.Module, name: str) -> nn.Module | None:
    """The submodule ``name`` when it holds a 2-D ``weight`` stored ``[out, in]``."""
    proj = getattr(module, name, None)
    weight = getattr(proj, "weight", None)
    return proj if isinstance(proj, nn.Module) and getattr(weight, "ndim", 0) == 2 else None


def _out_proj(module: nn.Module) -> nn.Module | None:
    """``o_proj`` (LLaMA family) or ``out_proj`` (BART, OPT)."""
    o = _linear(module, "o_proj")
    return o if o is not None else _linear(module, "out_proj")


def match(module: nn.Module) -> bool:
    """A module with linear ``q_proj``, ``k_proj``, ``v_proj`` and ``o_proj``/``out_proj``."""
    projections = [_linear(module, n) for n in ("q_proj", "k_proj", "v_proj")]
    return all(p is not None for p in projections) and _out_proj(module) is not None


def _int_attr(obj: object, names: tuple[str, ...]) -> int | None:
    """The first of ``names`` that ``obj`` has as a positive int."""
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def _head_dim(m: nn.Module) -> int:
    """Head width from the module, else from its ``config``; checked against ``q_proj``."""
    q_out = m.q_proj.weight.shape[0]
    config = getattr(m, "config", None)
    dh = _int_attr(m, _HEAD_DIM) or _int_attr(config, ("head_dim",))
    H = _int_attr(m, _N_HEADS) or _int_attr(config, _N_HEADS)
    if dh is None and H is not None:
        dh = q_out // H
    if dh is None or q_out % dh or (H is not None and H * dh != q_out):
        raise ValueError(
            f"{type(m).__name__}: cannot split q_proj ({q_out} outputs) into heads "
            f"(head_dim={dh}, num_heads={H}); give the module a head_dim or num_heads attribute "
            "or register an adapter with dynmon.register_adapter"
        )
    return dh


def extract(m: nn.Module) -> HeadWeights:
    """Split each projection into heads; K/V keep their ``H_kv`` heads (``heads`` expands them)."""
    dh = _head_dim(m)
    o = _out_proj(m)
    H = m.q_proj.weight.shape[0] // dh
    H_kv = m.k_proj.weight.shape[0] // dh
    return head_weights(
        linear_in_heads(m.q_proj.weight, H),
        linear_in_heads(m.k_proj.weight, H_kv),
        linear_in_heads(m.v_proj.weight, H_kv),
        linear_out_heads(o.weight, H),
        bias_heads(getattr(m.q_proj, "bias", None), H),
        bias_heads(getattr(m.k_proj, "bias", None), H_kv),
        bias_heads(getattr(m.v_proj, "bias", None), H_kv),
        getattr(o, "bias", None),
        n_kv_heads=H_kv if H_kv != H else None,
    )
