"""Norms of weights, gradients and updates: the cheap scalars that track scale during training.

Pure functions. Matrix norms reduce the last two dims (batched over leading ones); a 1-D tensor
is one vector and a 0-D one a scalar. Half precision is upcast to float32 before reducing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

from dynmon.metrics.spectral import _upcast, svdvals

__all__ = ["frobenius_norm", "spectral_norm", "global_norm", "named_norms", "update_ratio"]


def _matrix_dims(x: Tensor) -> tuple[int, ...]:
    """The dims a matrix norm reduces: the last two, or all of a 0-D/1-D tensor."""
    return (-2, -1) if x.dim() >= 2 else tuple(range(x.dim()))


_ONE_PASS = 1 << 16  # squares one float32 reduction sums accurately (4e-7 relative measured)
_ROW = 1 << 12  # row length when a long 1-D run of squares is cut into rows


def _vector_norm(x: Tensor, dim: tuple[int, ...] | None = None) -> Tensor:
    """2-norm over ``dim`` (all dims if None, else the last one or two), at least float32.

    One float32 reduction over millions of squares (``torch.linalg.vector_norm``) drifts:
    measured 2.7e-3 relative on GPT-2's 50257 x 768 embedding, 6.5e-4 on a 4096² weight. So
    above ``_ONE_PASS`` squares the rows (last dim) are summed in float32 and the row sums
    combined in float64 (1e-10 measured); smaller tensors keep the one reduction.
    """
    x = x.detach()
    if x.dtype == torch.float64 or not x.is_floating_point():
        return torch.linalg.vector_norm(_upcast(x), dim=dim)
    half = {"dtype": torch.float32} if x.dtype != torch.float32 else {}  # cast in the reduction
    whole = dim is None or len(dim) == x.dim()
    reduced = x.numel() if whole else x.shape[-1] * (x.shape[-2] if len(dim) == 2 else 1)
    if reduced <= _ONE_PASS:
        return torch.linalg.vector_norm(x, dim=dim, **half)
    if whole:  # one batch: rows of the last dim, or of _ROW elements for a long 1-D run
        x = x.reshape(-1, x.shape[-1]) if x.dim() >= 2 and x.shape[-1] <= _ONE_PASS else x
        if x.dim() < 2:
            flat = x.reshape(-1)
            x = torch.nn.functional.pad(flat, (0, -flat.numel() % _ROW)).view(-1, _ROW)
        rows = _row_norms(x)  # [m] float32
        return torch.linalg.vector_norm(rows.double()).to(torch.float32)
    rows = torch.linalg.vector_norm(x, dim=-1, **half)  # [..., m] (matrix norms: dims -2, -1)
    if len(dim) == 1:
        return rows
    return torch.linalg.vector_norm(rows.double(), dim=-1).to(torch.float32)


def _row_norms(x: Tensor) -> Tensor:
    """float32 2-norms of the rows of ``x [m, n]``. Half precision goes through one float32
    buffer of ``_ONE_PASS``-element blocks: 3x faster than casting inside the reduction."""
    if x.dtype == torch.float32:
        return torch.linalg.vector_norm(x, dim=-1)
    block = max(1, _ONE_PASS // x.shape[-1])  # rows per block
    buf = torch.empty(min(block, x.shape[0]), x.shape[-1], dtype=torch.float32, device=x.device)
    parts = [torch.linalg.vector_norm(buf[: b.shape[0]].copy_(b), dim=-1) for b in x.split(block)]
    return torch.cat(parts)


def tensor_key(t: Tensor) -> tuple:
    """Identity of a tensor's values for reusing its norm within one look (memory and view)."""
    return (t.data_ptr(), t.dtype, t.device, tuple(t.shape), t.stride())


def frobenius_norm(M: Tensor) -> Tensor:
    """Frobenius norm ``‖M‖_F`` of ``[..., m, n] -> [...]`` (weight or gradient scale)."""
    return _vector_norm(M, _matrix_dims(M))


def spectral_norm(M: Tensor) -> Tensor:
    """Spectral norm ``σ₁(M)`` of ``[..., m, n] -> [...]`` (largest gain; exact, via the SVD)."""
    s = svdvals(M.detach())  # [..., min(m, n)], descending; NaN where M is non-finite
    if s.shape[-1] == 0:
        return s.new_zeros(s.shape[:-1])
    return s[..., 0]


def global_norm(
    tensors: Iterable[Tensor | None], known: dict[tuple, Tensor] | None = None
) -> Tensor:
    """``√Σ‖t‖²`` over all tensors (e.g. the gradient norm, the total weight norm); None skipped.

    Returned as a 0-D tensor on the first tensor's device, float64 if any input is, else float32;
    0 for no tensors. ``known`` maps ``tensor_key`` to norms already taken in this look.

    >>> float(global_norm([torch.tensor([3.0]), None, torch.tensor([[4.0]])]))
    5.0
    """
    norms = [_norm_of(t, known) for t in tensors if t is not None]  # 0-D, on their devices
    if not norms:
        return torch.zeros(())
    dtype = torch.float64 if any(n.dtype == torch.float64 for n in norms) else torch.float32
    device = norms[0].device
    stacked = torch.stack([n.to(device=device, dtype=dtype) for n in norms])  # [T]
    return torch.linalg.vector_norm(stacked)  # NaN/Inf in any tensor shows here


def named_norms(
    named: Mapping[str, Tensor], tensors: Iterable[Tensor | None]
) -> tuple[dict[str, Tensor], Tensor]:
    """The Frobenius norm of each named matrix and the global norm of ``tensors``; a large
    named matrix that is also among ``tensors`` is reduced once (``tensor_key``)."""
    each = {name: frobenius_norm(t) for name, t in named.items()}
    known = {tensor_key(t): each[name] for name, t in named.items()}
    return each, global_norm(tensors, known)


def _norm_of(t: Tensor, known: dict[tuple, Tensor] | None) -> Tensor:
    """``t``'s norm, taken from ``known`` (by ``tensor_key``) for a large 2-D tensor whose
    ``frobenius_norm`` is already there (the same computation), else computed."""
    if known and t.dim() == 2 and t.numel() > _ONE_PASS:
        hit = known.get(tensor_key(t))
        if hit is not None:
            return hit
    return _vector_norm(t)


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
