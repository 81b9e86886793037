"""Find a model's attention layers and read their per-head weights with the registered adapters."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterator

import torch
from torch import nn

from dynmon.adapters.base import HeadWeights
from dynmon.adapters.layout import expand_kv
from dynmon.adapters.registry import Adapter, find_adapter, registered_adapters
from dynmon.adapters.unwrap import unwrap

_TENSORS = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")


class NoAttentionFound(ValueError):
    """No module of the model matched a registered adapter."""


def heads(model: nn.Module) -> list[HeadWeights]:
    """Per-head weights of every attention layer, in module order, detached views where possible."""
    return list(iter_heads(model))


def iter_heads(model: nn.Module, expand_kv: bool = True) -> Iterator[HeadWeights]:
    """``heads(model)`` one layer at a time, so a look never holds every layer's (expanded) copy.

    ``expand_kv=False`` leaves grouped-query K/V with their ``n_kv_heads`` heads (no copies).
    Raises ``NoAttentionFound`` (before yielding anything) when no module matches an adapter.
    """
    root = unwrap(model)
    found = list(_attention_modules(root))  # modules only: cheap
    if not found:
        raise NoAttentionFound(_no_attention_message(root))
    for i, (name, module, adapter) in enumerate(found):
        with torch.no_grad():
            hw = _checked(adapter.extract(module), adapter, name, expand_kv)
        yield dataclasses.replace(hw, name=name, layer=i)


def _attention_modules(root: nn.Module) -> Iterator[tuple[str, nn.Module, Adapter]]:
    """Pre-order walk (as ``named_modules``) that does not descend into a matched module."""
    seen: set[int] = set()
    stack: list[tuple[str, nn.Module]] = [("", root)]
    while stack:
        name, module = stack.pop()
        if id(module) in seen:
            continue
        seen.add(id(module))
        adapter = find_adapter(module)
        if adapter is not None:
            yield name, module, adapter
            continue
        children = [(f"{name}.{n}" if name else n, m) for n, m in module.named_children()]
        stack.extend(reversed(children))


def _checked(hw: HeadWeights, adapter: Adapter, name: str, expand: bool = True) -> HeadWeights:
    """Detach every tensor, expand grouped K/V heads and check the shapes agree."""
    if not isinstance(hw, HeadWeights):
        raise TypeError(
            f"adapter {adapter.name!r} returned {type(hw).__name__} for {name!r}, not HeadWeights"
        )
    fields = {f: getattr(hw, f) for f in _TENSORS}
    fields = {f: None if t is None else t.detach() for f, t in fields.items()}
    if fields["W_Q"].dim() != 3:
        raise ValueError(
            f"adapter {adapter.name!r} gave W_Q of shape {tuple(fields['W_Q'].shape)} for "
            f"{name!r}; expected [H, D, dh]"
        )
    H, D, dh = fields["W_Q"].shape  # [H, D, dh]
    n_kv = fields["W_K"].shape[0] if fields["W_K"].shape[0] != H else hw.n_kv_heads
    for f in ("W_K", "W_V", "b_K", "b_V"):
        if expand or fields[f] is None or fields[f].shape[0] == H:
            fields[f] = expand_kv(fields[f], H)
        elif H % fields[f].shape[0]:
            raise ValueError(f"{H} query heads cannot share {fields[f].shape[0]} key/value heads")
    H_kv = fields["W_K"].shape[0]  # H once expanded
    expected = {
        "W_K": (H_kv, None, dh),  # keys may live in another space (cross-attention, kdim)
        "W_V": (H_kv, None, dh),
        "W_O": (H, dh, D),
        "b_Q": (H, dh),
        "b_K": (H_kv, dh),
        "b_V": (H_kv, dh),
        "b_O": (D,),
    }
    for f, shape in expected.items():
        t = fields[f]
        if t is not None and (
            t.dim() != len(shape)
            or any(s not in (None, n) for s, n in zip(shape, t.shape, strict=True))
        ):
            raise ValueError(
                f"adapter {adapter.name!r} gave {f} of shape {tuple(t.shape)} for {name!r}; "
                f"expected {tuple('*' if s is None else s for s in shape)} "
                f"with W_Q of shape {(H, D, dh)}"
            )
    return dataclasses.replace(hw, **fields, n_kv_heads=n_kv)


def _no_attention_message(root: nn.Module) -> str:
    """What the model is made of and how to teach dynmon its attention module."""
    counts = Counter(type(m).__name__ for m in root.modules())
    found = ", ".join(f"{cls} x{n}" for cls, n in counts.most_common())
    known = ", ".join(a.name for a in registered_adapters())
    guess = next((c for c in counts if "att" in c.lower()), "MyAttention")
    return (
        f"dynmon found no attention layer it understands in {type(root).__name__}.\n"
        f"Module types found: {found}.\n"
        f"Adapters tried: {known}.\n"
        "Register an adapter for your attention module, e.g.:\n\n"
        "    import dynmon\n"
        "    from dynmon.adapters import head_weights, linear_in_heads, linear_out_heads\n\n"
        "    def extract(m):  # W_Q, W_K, W_V: [H, D, dh]; W_O: [H, dh, D]\n"
        "        H = m.n_heads  # nn.Linear weights are [out, in]\n"
        "        q, k, v = (linear_in_heads(p.weight, H) for p in (m.q, m.k, m.v))\n"
        "        return head_weights(q, k, v, linear_out_heads(m.o.weight, H))\n\n"
        f"    dynmon.register_adapter({guess}, extract)"
    )
