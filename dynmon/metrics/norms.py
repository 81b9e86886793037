"""Norms of weights, gradients and updates: the cheap scalars that track scale during training.

Pure functions. Matrix norms reduce the last two dims (batched over leading ones); a 1-D tensor
is one vector and a 0-D one a scalar. Half precision is upcast to float32 before reducing.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from dynmon.metrics.spectral import _upcast, svdvals

__all__ = ["frobenius_norm", "spectral_norm", "global_norm", "update_ratio"]


def _matrix_dims(x: Tensor) -> tuple[int, ...]:
    """The dims a matrix norm reduces: the last two, or all of a 0-D/1-D tensor."""
    return (-2, -1) if x.dim() >= 2 else tuple(range(x.dim()))


def frobenius_norm(M: Tensor) -> Tensor:
    """Frobenius norm ``‖M‖_F`` of ``[..., m, n] -> [...]`` (weight or gradient scale)."""
    M = _upcast(M.detach())
    return torch.linalg.vector_norm(M, dim=_matrix_dims(M))


def spectral_norm(M: Tensor) -> Tensor:
    """Spectral norm ``σ₁(M)`` of ``[..., m, n] -> [...]`` (largest gain; exact, via the SVD)."""
    s = svdvals(M.detach())  # [..., min(m, n)], descending; NaN where M is non-finite
    if s.shape[-1] == 0:
        return s.new_zeros(s.shape[:-1])
    return s[..., 0]


def global_norm(tensors: Iterable[Tensor | None]) -> Tensor:
    """``√Σ‖t‖²`` over all tensors (e.g. the gradient norm, the total weight norm); None skipped.

    Returned as a 0-D tensor on the first tensor's device, float64 if any input is, else float32;
    0 for no tensors.

    >>> float(global_norm([torch.tensor([3.0]), None, torch.tensor([[4.0]])]))
    5.0
    """
    norms = [
        torch.linalg.vector_norm(_upcast(t.detach())) for t in tensors if t is not None
    ]  # each 0-D, on its own device
    if not norms:
        return torch.zeros(())
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    device = norms[0].device
    stacked = torch.stack([n.to(device=device, dtype=dtype) for n in norms])  # [T]
    return torch.linalg.vector_norm(stacked)  # NaN/Inf in any tensor shows here


def update_ratio(new: Tensor, old: Tensor) -> Tensor:
    """Relative update size ``‖new − old‖_F / ‖old‖_F`` (per matrix, batched) ``[...]``.

    Tells how far one step (or one monitor interval) moved a weight relative to its scale;
    NaN where ``old`` is zero, since the ratio is undefined there.

    >>> float(update_ratio(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 4.0]])))  # 3 / 4
    0.75
    """
    new, old = _upcast(new.detach()), _upcast(old.detach())
    dtype = torch.promote_types(new.dtype, old.dtype)
    new, old = new.to(dtype), old.to(dtype)
    dims = _matrix_dims(old)
    num = torch.linalg.vector_norm(new - old, dim=dims)
    den = torch.linalg.vector_norm(old, dim=dims)
    return num / torch.where(den == 0, torch.full_like(den, float("nan")), den)
