"""Singular values of weights and of factored circuits, and rank measures of a spectrum.

Every function is pure and batched over arbitrary leading dims (layers, heads). Circuits
``A @ B.mT`` with ``A, B: [..., D, dh]`` are never formed: their nonzero singular values come
from the small ``[..., dh, dh]`` core ``R_A @ R_B.mT`` of the factors' thin QR decompositions.

Conventions:
- half precision (fp16/bf16) is upcast to float32; float32 and float64 are kept.
- a matrix holding NaN/Inf gets NaN outputs (its batch neighbours are unaffected), with one
  ``RuntimeWarning`` per call; the SVD itself never sees a non-finite value.
- rank measures of an all-zero spectrum are 0 (a zero matrix has rank 0), so a zero-initialised
  weight stays visible in plots; NaN is kept to mean "non-finite input".
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from dynmon.metrics.gram import factor_from_gram, finite_gram, gram, gram_eigvals_svdvals

__all__ = [
    "svdvals",
    "gram_svdvals",
    "circuit_svdvals",
    "qk_svdvals",
    "ov_svdvals",
    "circuit_svd",
    "qk_svd",
    "ov_svd",
    "top_singular_vectors",
    "erank",
    "stable_rank",
    "participation_ratio",
    "numerical_rank",
    "marginal_erank",
]

_NAN = float("nan")


# --------------------------------------------------------------------------------------------
# helpers shared with ``subspace`` (non-finite masking, upcasting)


def _upcast(x: Tensor) -> Tensor:
    """Half and integer tensors to float32, so the LAPACK kernels accept and resolve them."""
    if x.dtype in (torch.float32, torch.float64):
        return x
    return x.to(torch.float32)


def _common_dtype(*xs: Tensor) -> tuple[Tensor, ...]:
    """Upcast each tensor and bring them all to the widest float dtype among them."""
    xs = tuple(_upcast(x) for x in xs)
    dtype = torch.float64 if any(x.dtype == torch.float64 for x in xs) else torch.float32
    return tuple(x.to(dtype) for x in xs)


def _nonfinite(*mats: Tensor) -> Tensor:
    """Bool ``[...]`` (broadcast batch): True where any of the matrices holds a NaN/Inf."""
    bad = [~torch.isfinite(m).all(dim=-1).all(dim=-1) for m in mats]  # each [...]
    out = bad[0]
    for b in bad[1:]:
        out = out | b
    return out


def _zero_bad(m: Tensor, bad: Tensor) -> Tensor:
    """Replace every matrix flagged in ``bad`` by zeros, so an SVD can run on the batch."""
    return torch.where(bad[..., None, None], torch.zeros((), dtype=m.dtype, device=m.device), m)


def _nan_bad(x: Tensor, bad: Tensor, trailing: int) -> Tensor:
    """Set the outputs of flagged matrices to NaN; ``trailing`` is the number of per-matrix dims."""
    return x.masked_fill(bad.reshape(bad.shape + (1,) * trailing), _NAN)


def _warn_nonfinite(bad: Tensor, where: str) -> None:
    """One RuntimeWarning per call when any matrix in the batch was non-finite."""
    n = int(bad.sum()) if bad.numel() else 0  # sync point: the one host read of a call
    if n:
        warnings.warn(
            f"dynmon.{where}: {n} of {bad.numel()} matrices hold NaN/Inf; their values are NaN",
            RuntimeWarning,
            stacklevel=3,
        )


def _svdvals(M: Tensor) -> tuple[Tensor, Tensor]:
    """Singular values ``[..., min(m, n)]`` with non-finite matrices masked, and the mask."""
    M = _upcast(M)
    bad = _nonfinite(M)
    s = torch.linalg.svdvals(_zero_bad(M, bad))
    return _nan_bad(s, bad, 1), bad


def _circuit_core(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Thin-QR bases and the small core of ``A @ B.mT``: ``Q_A, Q_B, R_A @ R_B.mT, bad``."""
    A, B = _common_dtype(A, B)
    bad_A, bad_B = _nonfinite(A), _nonfinite(B)  # each factor's own batch: no broadcast copies
    Q_A, R_A = torch.linalg.qr(_zero_bad(A, bad_A))  # [..., D, r_a], [..., r_a, dh]
    Q_B, R_B = torch.linalg.qr(_zero_bad(B, bad_B))  # [..., D, r_b], [..., r_b, dh]
    return Q_A, Q_B, R_A @ R_B.mT, bad_A | bad_B  # core [..., r_a, r_b]


def _circuit_svdvals(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """Nonzero singular values of ``A @ B.mT`` from the factors, and the non-finite mask.

    The triangular factors come from the Gram matrices (``gram.factor_from_gram``: one matmul
    per factor, float64 QR for the ill-conditioned ones), the core's SVD is float64.
    """
    A, B = _common_dtype(A, B)
    R, bad = [], []
    for F in (A, B):
        G, nonfinite = finite_gram(gram(F))  # [..., dh, dh], [...]
        R.append(factor_from_gram(F, G)[0])
        bad.append(nonfinite)
    bad_A, bad_B = bad
    core = R[0] @ R[1].mT  # [..., dh, dh] float64
    # σ² = eigenvalues of core coreᵀ: in float64 exact to 1e-10 relative for σ ≥ 1e-3·σ₁, and
    # about half the cost of an SVD of the core
    lam = torch.linalg.eigvalsh(core @ core.mT).flip(-1)
    s = lam.clamp_min(0).sqrt().to(A.dtype)  # [..., dh] descending
    if A.shape[-2] < A.shape[-1] or B.shape[-2] < B.shape[-1]:
        s = s[..., : min(A.shape[-2], B.shape[-2], A.shape[-1])]
    return _nan_bad(s, bad_A | bad_B, 1), bad_A | bad_B


def _circuit_svd(A: Tensor, B: Tensor, k: int | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Top-k ``U, S, V`` of ``A @ B.mT`` from the factors, and the non-finite mask."""
    Q_A, Q_B, core, bad = _circuit_core(A, B)
    u, s, vh = torch.linalg.svd(core, full_matrices=False)  # [..., r_a, r], [..., r], [..., r, r_b]
    k = s.shape[-1] if k is None else min(k, s.shape[-1])
    U = Q_A @ u[..., :k]  # [..., D, k]
    V = Q_B @ vh[..., :k, :].mT  # [..., D, k]
    return _nan_bad(U, bad, 2), _nan_bad(s[..., :k], bad, 1), _nan_bad(V, bad, 2), bad


# --------------------------------------------------------------------------------------------
# spectra


def svdvals(M: Tensor) -> Tensor:
    """Singular values ``[..., m, n] -> [..., min(m, n)]``, descending; NaN for non-finite input."""
    s, bad = _svdvals(M)
    _warn_nonfinite(bad, "svdvals")
    return s


def gram_svdvals(M: Tensor) -> Tensor:
    """Singular values ``[..., m, n] -> [..., min(m, n)]`` from the eigenvalues of the small Gram
    side (float64 eigenvalues of a working-precision product): 2-3x faster than ``svdvals``
    on tall weights, with erank and stable rank equal to 1e-4 (``gram.gram_eigvals_svdvals``).
    NaN for non-finite input, as ``svdvals``."""
    s = gram_eigvals_svdvals(_upcast(M))  # NaN/Inf in M reach its Gram matrix, hence s
    bad = ~torch.isfinite(s).all(dim=-1)
    _warn_nonfinite(bad, "gram_svdvals")
    return _nan_bad(s.nan_to_num(), bad, 1)


def circuit_svdvals(A: Tensor, B: Tensor) -> Tensor:
    """Nonzero singular values of ``A @ B.mT`` (``A, B: [..., D, dh]``) without forming it.

    Returns ``[..., min(D, dh)]`` descending: the SVD of the ``dh x dh`` core ``R_A R_Bᵀ`` of
    triangular factors with ``RᵀR = FᵀF`` (from the Gram matrices, float64 QR where they are
    ill-conditioned), since ``σ(Q_A R_A R_Bᵀ Q_Bᵀ) = σ(R_A R_Bᵀ)``
    (docs/metrics.md#circuit-spectra). Leading dims broadcast.

    >>> A = torch.tensor([[3.0, 0.0], [0.0, 0.0], [0.0, 4.0]])  # [D=3, dh=2]
    >>> B = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    >>> [round(x, 4) for x in circuit_svdvals(A, B).tolist()]
    [4.0, 3.0]
    >>> torch.allclose(circuit_svdvals(A, B), torch.linalg.svdvals(A @ B.T)[:2])
    True
    """
    s, bad = _circuit_svdvals(A, B)
    _warn_nonfinite(bad, "circuit_svdvals")
    return s


def qk_svdvals(W_Q: Tensor, W_K: Tensor) -> Tensor:
    """Singular values of each head's QK circuit ``W_Q W_Kᵀ`` (``W_Q, W_K: [..., D, dh]``)."""
    s, bad = _circuit_svdvals(W_Q, W_K)
    _warn_nonfinite(bad, "qk_svdvals")
    return s


def ov_svdvals(W_V: Tensor, W_O: Tensor) -> Tensor:
    """Singular values of each head's OV circuit ``W_V W_O`` (``W_V: [..., D, dh]``,
    ``W_O: [..., dh, D]``)."""
    s, bad = _circuit_svdvals(W_V, W_O.mT)
    _warn_nonfinite(bad, "ov_svdvals")
    return s


def circuit_svd(A: Tensor, B: Tensor, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k singular triplets of ``A @ B.mT`` from its factors, for subspace tracking.

    Returns ``U: [..., D, k]``, ``S: [..., k]`` (descending), ``V: [..., D, k]`` with
    ``A @ B.mT ≈ U diag(S) V.mT`` (exact when k is the full ``min(D, dh)``). ``k=None`` keeps all.
    Singular vectors are defined up to sign (and rotation within repeated values): compare
    subspaces, not vectors.
    """
    U, S, V, bad = _circuit_svd(A, B, k)
    _warn_nonfinite(bad, "circuit_svd")
    return U, S, V


def qk_svd(W_Q: Tensor, W_K: Tensor, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k ``U, S, V`` of each head's QK circuit ``W_Q W_Kᵀ`` (queries read U, keys read V)."""
    U, S, V, bad = _circuit_svd(W_Q, W_K, k)
    _warn_nonfinite(bad, "qk_svd")
    return U, S, V


def ov_svd(W_V: Tensor, W_O: Tensor, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k ``U, S, V`` of each head's OV circuit ``W_V W_O`` (U reads, V writes the stream)."""
    U, S, V, bad = _circuit_svd(W_V, W_O.mT, k)
    _warn_nonfinite(bad, "ov_svd")
    return U, S, V


def top_singular_vectors(M: Tensor, k: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k ``U: [..., m, k]``, ``S: [..., k]``, ``V: [..., n, k]`` of a plain (batched) matrix."""
    M = _upcast(M)
    bad = _nonfinite(M)
    u, s, vh = torch.linalg.svd(_zero_bad(M, bad), full_matrices=False)
    k = s.shape[-1] if k is None else min(k, s.shape[-1])
    _warn_nonfinite(bad, "top_singular_vectors")
    U = u[..., :k]  # [..., m, k]
    V = vh[..., :k, :].mT  # [..., n, k]
    return _nan_bad(U, bad, 2), _nan_bad(s[..., :k], bad, 1), _nan_bad(V, bad, 2)


# --------------------------------------------------------------------------------------------
# rank measures of a spectrum s: [..., r] (nonnegative; any order) -> [...]


def _finish(value: Tensor, s: Tensor, zero: Tensor) -> Tensor:
    """Apply the conventions: 0 for an all-zero (or empty) spectrum, NaN for any NaN/Inf."""
    value = torch.where(zero, torch.zeros((), dtype=value.dtype, device=value.device), value)
    return value.masked_fill(~torch.isfinite(s).all(dim=-1), _NAN)


def _scaled(s: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``s / max(s)`` (scale-free, no overflow in powers), the input as float, the zero mask."""
    s = _upcast(s)
    top = s.amax(dim=-1, keepdim=True) if s.shape[-1] else s.new_zeros(s.shape[:-1] + (1,))
    zero = top[..., 0] == 0
    x = s / torch.where(top == 0, torch.ones_like(top), top)  # [..., r], max 1
    return x, s, zero


def erank(s: Tensor) -> Tensor:
    """Roy–Vetterli effective rank ``exp(H(σ/Σσ))``: a smooth rank in ``[1, rank]`` (0 if s = 0).

    Of the singular values themselves, not their squares (docs/metrics.md#erank).

    >>> round(float(erank(torch.tensor([1.0, 1.0, 1.0, 1.0]))), 4)  # four equal directions
    4.0
    >>> round(float(erank(torch.tensor([2.0, 0.0, 0.0]))), 4)  # rank one
    1.0
    >>> erank(torch.tensor([[1.0, 1.0], [0.0, 0.0]]))  # batched; a zero spectrum gives 0
    tensor([2., 0.])
    """
    x, s, zero = _scaled(s)
    p = x / torch.where(zero, 1.0, x.sum(dim=-1)).unsqueeze(-1)  # [..., r], sums to 1
    entropy = -torch.xlogy(p, p).sum(dim=-1)  # 0 log 0 = 0
    return _finish(entropy.exp(), s, zero)


def stable_rank(s: Tensor) -> Tensor:
    """Stable rank ``Σσ² / σ₁² = ‖M‖_F² / ‖M‖₂²``: a rank in ``[1, rank]`` (0 if s = 0).

    docs/metrics.md#stable_rank.

    >>> float(stable_rank(torch.tensor([2.0, 1.0, 1.0])))  # (4 + 1 + 1) / 4
    1.5
    """
    x, s, zero = _scaled(s)
    return _finish(x.square().sum(dim=-1), s, zero)


def participation_ratio(s: Tensor) -> Tensor:
    """Participation ratio ``(Σσ²)² / Σσ⁴``, in ``[stable_rank, rank]`` (0 if s = 0).

    docs/metrics.md#participation_ratio.

    >>> float(participation_ratio(torch.tensor([2.0, 1.0, 1.0])))  # 6² / (16 + 1 + 1)
    2.0
    """
    x, s, zero = _scaled(s)
    x2 = x.square()
    pr = x2.sum(dim=-1).square() / torch.where(zero, 1.0, x2.square().sum(dim=-1))
    return _finish(pr, s, zero)


def numerical_rank(s: Tensor, tol: float = 1e-3) -> Tensor:
    """Count of ``σ > tol·σ₁`` as an integer-valued float tensor (so it can be averaged).

    docs/metrics.md#numerical_rank.

    >>> numerical_rank(torch.tensor([1.0, 1e-2, 1e-4]))  # 1e-4 is below 1e-3 · σ₁
    tensor(2.)
    """
    x, s, zero = _scaled(s)
    count = (x > tol).sum(dim=-1).to(x.dtype)
    return _finish(count, s, zero)


def marginal_erank(s: Tensor, k: int = 1) -> Tensor:
    """Effective rank of the spectrum with its k leading singular values removed.

    This definition is ours, following Mainali & Teixeira's description of a "marginalised"
    effective rank (docs/metrics.md#marginal_erank, second-hand): ``erank(σ_{k+1}, …, σ_r)``, so
    the spread of the tail shows once a few dominant directions have formed. A tail that is empty
    or all zero gives 0 (the erank convention for a zero spectrum); NaN/Inf anywhere in s gives
    NaN.

    >>> round(float(marginal_erank(torch.tensor([5.0, 1.0, 1.0]))), 4)  # erank of (1, 1)
    2.0
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    s = _upcast(s)
    tail = torch.sort(s, dim=-1, descending=True).values[..., k:]  # [..., max(r - k, 0)]
    out = erank(tail)
    return out.masked_fill(~torch.isfinite(s).all(dim=-1), _NAN)
