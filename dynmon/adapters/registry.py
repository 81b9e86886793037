"""The adapter registry: which modules are attention layers and how to read their heads.

This ordered list is the one piece of global state dynmon keeps; the first adapter whose
``match`` accepts a module wins, so user adapters go in front of the built-ins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from dynmon.adapters.base import HeadWeights

Match = type | Callable[[nn.Module], bool]
Extract = Callable[[nn.Module], HeadWeights]


@dataclass(frozen=True)
class Adapter:
    """One way to recognise an attention module and read its per-head weights."""

    name: str
    match: Callable[[nn.Module], bool]
    extract: Extract
    builtin: bool = False


_ADAPTERS: list[Adapter] = []


def register_adapter(
    match: Match, extract: Extract, *, name: str | None = None, first: bool = True
) -> Adapter:
    """Teach ``heads`` a new attention module; ``first`` tries it before every other adapter.

    ``match`` is an ``nn.Module`` subclass or a predicate on a module; ``extract(module)``
    returns a ``HeadWeights`` (build it with ``dynmon.adapters.head_weights``; ``heads`` fills
    ``name`` and ``layer``). An adapter registered under an existing name replaces it.
    """
    if isinstance(match, type):
        if not issubclass(match, nn.Module):
            raise TypeError(f"match must be an nn.Module subclass or a predicate, got {match!r}")
        cls = match

        def predicate(module: nn.Module) -> bool:
            return isinstance(module, cls)

        default = cls.__qualname__
    elif callable(match):
        predicate = match
        default = getattr(match, "__qualname__", repr(match))
    else:
        raise TypeError(f"match must be an nn.Module subclass or a predicate, got {match!r}")
    if not callable(extract):
        raise TypeError(f"extract must be callable, got {extract!r}")
    adapter = Adapter(name=name or default, match=predicate, extract=extract)
    _insert(adapter, first)
    return adapter


def register_builtin(name: str, match: Callable[[nn.Module], bool], extract: Extract) -> None:
    """Append one of dynmon's own adapters (tried after every user adapter)."""
    _insert(Adapter(name=name, match=match, extract=extract, builtin=True), first=False)


def unregister_adapter(adapter: Adapter | str) -> None:
    """Remove an adapter, given the record ``register_adapter`` returned or its name."""
    name = adapter if isinstance(adapter, str) else adapter.name
    if not any(a.name == name for a in _ADAPTERS):
        raise KeyError(f"no adapter named {name!r}; registered: {[a.name for a in _ADAPTERS]}")
    _ADAPTERS[:] = [a for a in _ADAPTERS if a.name != name]


def registered_adapters() -> list[Adapter]:
    """The adapters in the order ``heads`` tries them (a copy)."""
    return list(_ADAPTERS)


def find_adapter(module: nn.Module) -> Adapter | None:
    """The first adapter that accepts ``module``, or None."""
    return next((a for a in _ADAPTERS if a.match(module)), None)


def _insert(adapter: Adapter, first: bool) -> None:
    _ADAPTERS[:] = [a for a in _ADAPTERS if a.name != adapter.name]
    if first:
        _ADAPTERS.insert(0, adapter)
    else:
        _ADAPTERS.append(adapter)
