"""Strip the wrappers training adds around a model (DDP, DataParallel, FSDP, torch.compile)."""

from __future__ import annotations

from torch import nn

_WRAPPED_CHILD = {"module", "_fsdp_wrapped_module"}  # DDP/DataParallel, FSDP1


def unwrap(model: nn.Module) -> nn.Module:
    """The user's model inside any stack of training wrappers, so names match their code."""
    while True:
        inner = _inner(model)
        if inner is None:
            return model
        model = inner


def _inner(model: nn.Module) -> nn.Module | None:
    """The module one wrapper holds, or None when ``model`` is not a wrapper."""
    children = dict(model.named_children())
    if isinstance(children.get("_orig_mod"), nn.Module):  # torch.compile's OptimizedModule
        return children["_orig_mod"]
    if len(children) == 1 and next(iter(children)) in _WRAPPED_CHILD:
        inner = getattr(model, "module", None)  # FSDP1 exposes its wrapped module here too
        if isinstance(inner, nn.Module):
            return inner
    return None
