"""How far singular subspaces move: principal angles, projection distance, projection residual.

Pure functions batched over leading dims. Bases are ``[..., n, k]`` with orthonormal columns
(e.g. ``U`` or ``V`` from ``spectral.circuit_svd``); nothing here forms an ``n x n`` projector.
Non-finite inputs give NaN for that item, silently: the spectral call that produced the bases
has already warned once.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dynmon.metrics.spectral import (
    _circuit_core,
    _common_dtype,
    _nan_bad,
    _nonfinite,
    _zero_bad,
    numerical_rank,
)

__all__ = [
    "principal_angles",
    "subspace_distance",
    "choose_k",
    "projection_residual",
    "projection_residual_factored",
]


def principal_angles(U: Tensor, V: Tensor) -> Tensor:
    """Principal angles (radians, ascending) between ``span U`` and ``span V``, ``[..., min(k)]``.

    ``cos θ = σ(Uᵀ V)`` is inaccurate for small angles (cos ≈ 1), so, like
    ``scipy.linalg.subspace_angles``, angles with ``cos² ≥ ½`` come from ``sin θ = σ((I − UUᵀ) V)``
    instead, with the projector applied as ``V − U (Uᵀ V)``. Assumes orthonormal columns.

    >>> diagonal = torch.tensor([[1.0], [1.0]]) / 2**0.5
    >>> round(float(principal_angles(torch.eye(2)[:, :1], diagonal)[0]), 4)  # π/4
    0.7854
    """
    U, V = _common_dtype(U, V)
    if U.shape[-1] < V.shape[-1]:  # the wider basis projects, so (I - UUᵀ)V has k_v sines
        U, V = V, U
    bad = _nonfinite(U, V)
    U, V = _zero_bad(U, bad), _zero_bad(V, bad)
    UtV = U.mT @ V  # [..., k_u, k_v]
    cos = torch.linalg.svdvals(UtV).clamp(0.0, 1.0)  # [..., k_v] descending -> angles ascending
    sin = torch.linalg.svdvals(V - U @ UtV).clamp(0.0, 1.0)  # [..., k_v] descending
    sin = sin.flip(-1)  # ascending, to pair with the descending cosines
    theta = torch.where(cos.square() >= 0.5, torch.asin(sin), torch.acos(cos))
    return _nan_bad(theta, bad, 1)


def subspace_distance(U: Tensor, V: Tensor) -> Tensor:
    """Normalised projection distance ``‖UUᵀ − VVᵀ‖_F / √(k_u + k_v)`` in ``[0, 1]``, ``[...]``.

    For equal k this is ``√(mean sin²θ)`` over the principal angles: 0 for the same subspace,
    1 for orthogonal ones. Computed as ``‖(I − UUᵀ)V‖_F² + ‖(I − VVᵀ)U‖_F²`` from the ``k x k``
    product ``Uᵀ V``: that keeps small distances accurate, where ``2k − 2‖UᵀV‖_F²`` cancels
    (docs/metrics.md#subspace_dist).

    >>> e = torch.eye(3)
    >>> float(subspace_distance(e[:, :1], e[:, :1])), float(subspace_distance(e[:, :1], e[:, 1:2]))
    (0.0, 1.0)
    >>> round(float(subspace_distance(e[:, :2], e[:, 1:3])), 4)  # one shared axis: √(1/2)
    0.7071
    """
    U, V = _common_dtype(U, V)
    UtV = U.mT @ V  # [..., k_u, k_v]
    res_v = V - U @ UtV  # [..., n, k_v], (I - UUᵀ) V
    res_u = U - V @ UtV.mT  # [..., n, k_u], (I - VVᵀ) U
    sq = res_v.square().sum(dim=(-2, -1)) + res_u.square().sum(dim=(-2, -1))  # [...]
    d = (sq / (U.shape[-1] + V.shape[-1])).sqrt().clamp(max=1.0)
    return d.masked_fill(_nonfinite(U, V), float("nan"))


def choose_k(s: Tensor, tol: float = 1e-3, cap: int | None = None) -> int:
    """Default subspace size from a spectrum ``[..., r]``: the numerical rank at ``tol``.

    One k for the whole batch (the max over it) so per-head results stack; at least 1, at most
    ``cap`` and r. NaN spectra are ignored (all NaN gives 1). Record the k used with the result.
    """
    r = s.shape[-1]
    limit = r if cap is None else min(cap, r)
    if s.numel() == 0:
        return max(1, limit) if r == 0 else 1
    ranks = numerical_rank(s.detach(), tol=tol).nan_to_num(nan=0.0)  # [...]
    k = int(ranks.max())  # sync point: k is a shape
    return max(1, min(k, limit))


def _row_basis_mask(s: Tensor, rtol: float) -> Tensor:
    """0/1 weights ``[..., r]`` keeping singular directions with ``σ > rtol·σ₁``."""
    top = s[..., :1]  # descending
    return (s > rtol * top).to(s.dtype)


def projection_residual(M_t: Tensor, M_ref: Tensor, *, rtol: float | None = None) -> Tensor:
    """Seed paper's offline distance ``‖M_ref (I − M_t⁺ M_t)‖_F / ‖M_ref‖_F``, ``[...]``.

    ``= min_A ‖A M_t − M_ref‖_F / ‖M_ref‖_F``: how much of the reference's row space the current
    matrix still misses (0 when contained, 1 when orthogonal or ``M_t = 0``; NaN when
    ``M_ref = 0``). ``M_t⁺ M_t`` is the projector on the row space of ``M_t``, taken from its SVD
    with the rank cut ``σ > rtol·σ₁`` (default ``eps·max(m, n)``, as ``torch.linalg.pinv``).
    Unverified: transcribed from a second-hand summary of the paper
    (docs/metrics.md#subspace_dist_final).
    """
    M_t, M_ref = _common_dtype(M_t, M_ref)
    if rtol is None:
        rtol = torch.finfo(M_t.dtype).eps * max(M_t.shape[-2:])
    bad = _nonfinite(M_t, M_ref)
    M_t, M_ref = _zero_bad(M_t, bad), _zero_bad(M_ref, bad)
    _, s, vh = torch.linalg.svd(M_t, full_matrices=False)  # vh: [..., r, n]
    W = vh.mT * _row_basis_mask(s, rtol).unsqueeze(-2)  # [..., n, r], kept directions only
    resid = M_ref - (M_ref @ W) @ W.mT  # [..., m, n], M_ref (I - P_row)
    ratio = torch.linalg.matrix_norm(resid) / torch.linalg.matrix_norm(M_ref)  # NaN if M_ref = 0
    return _nan_bad(ratio, bad, 0)


def projection_residual_factored(
    A_t: Tensor, B_t: Tensor, A_ref: Tensor, B_ref: Tensor, *, rtol: float | None = None
) -> Tensor:
    """``projection_residual`` of circuits ``M = A @ B.mT`` (``[..., D, dh]`` factors), ``[...]``.

    The row space of ``A_t B_tᵀ`` is spanned by ``V = Q_B v`` from the factored SVD, so the
    residual is ``A_ref Cᵀ`` with ``C = (I − VVᵀ) B_ref``, whose norm is ``‖R Cᵀ‖_F`` for
    ``A_ref = Q R``: no ``D x D`` matrix is formed. Default ``rtol = eps·D`` (as the dense form).
    Unverified: transcribed from a second-hand summary of the paper
    (docs/metrics.md#subspace_dist_final).
    """
    A_t, B_t, A_ref, B_ref = _common_dtype(A_t, B_t, A_ref, B_ref)
    if rtol is None:
        rtol = torch.finfo(A_t.dtype).eps * max(A_t.shape[-2], B_t.shape[-2])
    bad = _nonfinite(A_t, B_t, A_ref, B_ref)  # [...] broadcast batch
    _, Q_B, core, _ = _circuit_core(A_t, B_t)  # non-finite factors zeroed inside
    _, s, vh = torch.linalg.svd(core, full_matrices=False)  # vh: [..., r, r_b]
    V = Q_B @ (vh.mT * _row_basis_mask(s, rtol).unsqueeze(-2))  # [..., D, r], kept directions
    A_ref, B_ref = _zero_bad(A_ref, _nonfinite(A_ref)), _zero_bad(B_ref, _nonfinite(B_ref))
    C = B_ref - V @ (V.mT @ B_ref)  # [..., D, dh], (I - VVᵀ) B_ref
    R_A = torch.linalg.qr(A_ref).R  # [..., r_a, dh]
    R_B = torch.linalg.qr(B_ref).R  # [..., r_b, dh]
    num = torch.linalg.matrix_norm(R_A @ C.mT)  # ‖A_ref Cᵀ‖_F
    den = torch.linalg.matrix_norm(R_A @ R_B.mT)  # ‖A_ref B_refᵀ‖_F, NaN ratio if 0
    return _nan_bad(num / den, bad, 0)
