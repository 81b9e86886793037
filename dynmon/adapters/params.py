"""Every 2-D weight matrix of a model (and its gradient) by parameter name, each storage once."""

from __future__ import annotations

from collections import defaultdict

from torch import Tensor, nn

from dynmon.adapters.unwrap import unwrap


def weights(model: nn.Module) -> dict[str, Tensor]:
    """Detached 2-D parameters by ``named_parameters`` name, aliases of one memory listed once."""
    return {name: p.detach() for name, p in _matrices(model).items()}


def trainable_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters with ``requires_grad``, each memory once (a TransformerLens bridge lists some
    under two names): what an optimizer should be given."""
    seen: set[int] = set()
    out = []
    for p in model.parameters():
        if p.requires_grad and p.data_ptr() not in seen:
            seen.add(p.data_ptr())
            out.append(p)
    return out


def grads(model: nn.Module) -> dict[str, Tensor]:
    """Detached ``.grad`` of the matrices ``weights`` lists, for those that have one."""
    return {name: p.grad.detach() for name, p in _matrices(model).items() if p.grad is not None}


def _matrices(model: nn.Module) -> dict[str, nn.Parameter]:
    """2-D parameters, dropping exact aliases and fused matrices that others are views into.

    A TransformerLens bridge splits a fused ``c_attn`` into q/k/v parameters that view its
    memory; the forward pass and the gradients use the pieces, so the pieces are kept.
    """
    named = [(n, p) for n, p in unwrap(model).named_parameters() if p.dim() == 2]
    by_storage: dict[tuple, list[tuple[str, nn.Parameter]]] = defaultdict(list)
    for n, p in named:
        by_storage[_storage_key(p)].append((n, p))
    drop: set[str] = set()
    for group in by_storage.values():
        if len(group) == 1:
            continue
        spans = [(n, _span(p)) for n, p in group]
        for i, (n, (lo, hi)) in enumerate(spans):
            same_earlier = any((lo, hi) == s for _, s in spans[:i])
            holds_other = any(lo <= a and b <= hi and (a, b) != (lo, hi) for _, (a, b) in spans)
            if same_earlier or holds_other:
                drop.add(n)
    return {n: p for n, p in named if n not in drop}


def _storage_key(p: Tensor) -> tuple:
    """Where ``p``'s memory lives; a key of its own without plain storage (meta, DTensor)."""
    try:
        ptr = p.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError, TypeError):
        ptr = 0
    return (str(p.device), ptr) if ptr else ("own", id(p))


def _span(t: Tensor) -> tuple[int, int]:
    """First and one-past-last element offsets ``t`` touches in its storage."""
    start = t.storage_offset()
    last = start + sum((s - 1) * st for s, st in zip(t.shape, t.stride(), strict=True) if s > 0)
    return start, last + 1
