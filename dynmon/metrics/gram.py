"""Circuit spectra from the Gram matrices of the factors, with a per-matrix QR fallback.

For a circuit ``M = A Bᵀ`` (``A, B: [..., D, dh]``) the nonzero singular values are those of
the ``dh x dh`` core ``R_A R_Bᵀ`` for any ``R`` with ``RᵀR = AᵀA``. Taking ``R`` from the
Cholesky factor of the Gram matrix costs one matmul per factor, where a Householder QR costs
about seven. Rounding ``G = AᵀA`` perturbs ``R`` multiplicatively by about ``eps·κ(A)²``
(docs/metrics.md#circuit-spectra), hence every singular value of ``M`` *relatively* by that much;
a factor whose estimated ``eps·κ²`` exceeds ``GRAM_TOL`` is recomputed by a float64 QR instead.

Pure functions, batched over leading dims; the Gram matrices and cores are float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "GRAM_TOL",
    "CholFactor",
    "finite_gram",
    "gram",
    "cholesky_factor",
    "qr_factor",
    "factor_from_gram",
    "gram_eigvals_svdvals",
]

# Largest accepted ``eps·4κ²``. Measured
# (tests/test_gram.py): the relative error of the circuit singular values is about 0.3·eps·κ²,
# so float32 factors take the Gram path up to κ ≈ 29 (error ≤ 2e-5), float64 up to κ ≈ 1e6.
GRAM_TOL = 2e-4
_KAPPA_MARGIN = 4.0  # power steps underestimate κ²: float32 factors take the Gram path to κ ≈ 29


def working_dtype(*xs: Tensor) -> torch.dtype:
    """float64 if any input is float64, else float32 (half precision computes in float32)."""
    return torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32


def gram(F: Tensor) -> Tensor:
    """``FᵀF`` ``[..., D, dh] -> [..., dh, dh]`` in float64, from a product in working precision."""
    F = F.to(working_dtype(F))
    return (F.mT @ F).to(torch.float64)  # [..., dh, dh]


def finite_gram(G: Tensor) -> tuple[Tensor, Tensor]:
    """``G`` with each matrix that holds NaN/Inf (a non-finite factor shows in its Gram, far
    cheaper to scan) replaced by the identity, so Cholesky and eigenvalues run on the batch;
    and the mask ``[...]`` of those matrices, whose results the caller reports as NaN."""
    bad = ~torch.isfinite(G).all(dim=-1).all(dim=-1)
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    return torch.where(bad[..., None, None], eye, G), bad


@dataclass(frozen=True)
class CholFactor:
    """``R`` upper triangular with ``RᵀR = G``, its inverse, and where it may be trusted."""

    R: Tensor  # [..., dh, dh] float64
    R_inv: Tensor  # [..., dh, dh] float64
    ok: Tensor  # bool [...]: Cholesky succeeded and eps·κ² <= GRAM_TOL


def _max_eig(S: Tensor, iters: int = 10) -> Tensor:
    """Largest eigenvalue ``[...]`` of symmetric PSD ``S`` by power steps (a lower bound)."""
    n = S.shape[-1]
    v = torch.linspace(1.0, 2.0, n, dtype=S.dtype, device=S.device).expand(S.shape[:-1])
    v = v.unsqueeze(-1)  # [..., n, 1]: a fixed start, not orthogonal to a positive vector
    for _ in range(iters):
        w = S @ v
        v = w / torch.linalg.vector_norm(w, dim=-2, keepdim=True).clamp_min(1e-300)
    return (v.mT @ S @ v)[..., 0, 0]  # Rayleigh quotient of the unit vector


def cholesky_factor(G: Tensor, eps: float) -> CholFactor:
    """Cholesky ``R`` of ``G = AᵀA`` and a trust flag from ``eps·κ(A)²`` (``κ² = λmax/λmin``
    of ``G``, from its float64 eigenvalues: one small batched call)."""
    L, info = torch.linalg.cholesky_ex(G)  # G = L Lᵀ
    R = L.mT  # [..., dh, dh] upper, RᵀR = G
    eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device)
    good = info == 0
    R = torch.where(good[..., None, None], R, eye)  # keep the solve finite where it failed
    R_inv = torch.linalg.solve_triangular(R, eye.expand_as(R), upper=True)
    # κ² = λmax(G)·λmax(G⁻¹) by power steps, which approach from below: hence the margin
    lam_max = _max_eig(G)
    lam_inv = _max_eig(R_inv @ R_inv.mT)  # G⁻¹ = R⁻¹R⁻ᵀ
    kappa_sq = _KAPPA_MARGIN * lam_max * lam_inv
    ok = good & torch.isfinite(kappa_sq) & (eps * kappa_sq <= GRAM_TOL)
    return CholFactor(R=R, R_inv=R_inv, ok=ok)


def qr_factor(F: Tensor) -> Tensor:
    """``R`` of a float64 Householder QR of ``F`` ``[..., D, dh] -> [..., r, dh]`` (fallback)."""
    return torch.linalg.qr(F.to(torch.float64), mode="r").R


def factor_from_gram(F: Tensor, G: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """A triangular ``R`` (``RᵀR = FᵀF``) per matrix, float64, and the mask of Gram-path matrices.

    Well-conditioned matrices take the Cholesky factor of ``G`` (computed here if None);
    the others a float64 QR of ``F`` (``# sync point``: which ones is decided on the host).
    """
    if G is None:
        G = gram(F)
    chol = cholesky_factor(G, torch.finfo(working_dtype(F)).eps)
    R = chol.R.clone()
    bad = ~chol.ok
    if F.shape[-2] < F.shape[-1]:  # wide factor: R from QR has fewer rows; pad with zeros
        bad = torch.ones_like(bad)
    if bool(bad.any()):  # sync point
        idx = bad.nonzero(as_tuple=True)
        R_qr = qr_factor(F[idx])  # [n_bad, r, dh]
        full = torch.zeros(R_qr.shape[:-2] + R.shape[-2:], dtype=R.dtype, device=R.device)
        full[..., : R_qr.shape[-2], :] = R_qr
        R[idx] = full
    return R, chol.ok & ~bad


def gram_eigvals_svdvals(W: Tensor) -> Tensor:
    """Singular values of a (batched) matrix from the eigenvalues of its small Gram side.

    ``[..., m, n] -> [..., min(m, n)]`` descending, float64: ``σ = √λ(WᵀW)`` (or ``WWᵀ``),
    with the Gram product in working precision and the eigenvalues in float64. Accurate
    relative to ``σ₁`` (absolute error about ``eps·σ₁²/σ`` on small σ), which is what erank
    and stable rank need; use ``svdvals`` when the small singular values must be exact.
    """
    m, n = W.shape[-2:]
    W = W.to(working_dtype(W))
    small = W.mT @ W if m >= n else W @ W.mT  # [..., min, min]
    small, bad = finite_gram(small.to(torch.float64))  # bad: NaN/Inf input (or overflow)
    lam = torch.linalg.eigvalsh(small)  # ascending
    # rounding the Gram product spreads a zero eigenvalue over ±eps·λmax; the most negative one
    # shows how far, so eigenvalues within twice that are taken for zero (a full-rank Gram
    # keeps all of them: its smallest eigenvalue is positive)
    floor = 2.0 * (-lam[..., :1]).clamp_min(0)
    lam = torch.where(lam > floor, lam, torch.zeros((), dtype=lam.dtype, device=lam.device))
    return lam.sqrt().flip(-1).masked_fill(bad[..., None], float("nan"))
