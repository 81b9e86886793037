"""Spectra and rank measures against dense SVDs, constructed spectra and closed forms."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynmon.metrics import spectral as sp

F64 = torch.float64


def orthonormal(*shape: int, gen: torch.Generator, dtype=F64) -> torch.Tensor:
    """Random ``[..., n, k]`` with orthonormal columns (Q of a Gaussian matrix)."""
    return torch.linalg.qr(torch.randn(*shape, generator=gen, dtype=F64)).Q.to(dtype)


def with_spectrum(sigma: torch.Tensor, m: int, n: int, gen: torch.Generator) -> torch.Tensor:
    """A ``[..., m, n]`` matrix ``P diag(σ) Qᵀ`` whose singular values are exactly ``σ``."""
    k = sigma.shape[-1]
    P = orthonormal(*sigma.shape[:-1], m, k, gen=gen)
    Q = orthonormal(*sigma.shape[:-1], n, k, gen=gen)
    return P * sigma.unsqueeze(-2) @ Q.mT


def circuit_with_spectrum(sigma: torch.Tensor, D: int, gen: torch.Generator):
    """Factors ``A = P diag(σ) G``, ``B = Q G⁻ᵀ`` (neither orthogonal) with ``σ(A Bᵀ) = σ``."""
    dh = sigma.shape[-1]
    batch = sigma.shape[:-1]
    P = orthonormal(*batch, D, dh, gen=gen)
    Q = orthonormal(*batch, D, dh, gen=gen)
    G = torch.randn(*batch, dh, dh, generator=gen, dtype=F64) + 3 * torch.eye(dh, dtype=F64)
    A = P * sigma.unsqueeze(-2) @ G  # [..., D, dh]
    B = Q @ torch.linalg.inv(G).mT  # [..., D, dh]
    return A, B


def dense_top(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Top ``dh`` singular values of the materialised circuit (the reference)."""
    return torch.linalg.svdvals(A @ B.mT)[..., : A.shape[-1]]


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# ------------------------------------------------------------------------------- svdvals


def test_svdvals_known_spectrum_batched(gen):
    sigma = torch.rand(2, 3, 5, generator=gen, dtype=F64).sort(-1, descending=True).values + 0.1
    M = with_spectrum(sigma, 9, 7, gen)  # [2, 3, 9, 7], rank 5
    s = sp.svdvals(M)
    assert s.shape == (2, 3, 7) and s.dtype == F64
    torch.testing.assert_close(s[..., :5], sigma, rtol=1e-12, atol=1e-12)
    assert s[..., 5:].abs().max() < 1e-12
    s32 = sp.svdvals(M.float())
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32[..., :5].double(), sigma, rtol=1e-5, atol=1e-6)


def test_svdvals_zero_and_descending(gen):
    assert torch.equal(sp.svdvals(torch.zeros(2, 4, 3)), torch.zeros(2, 3))
    s = sp.svdvals(torch.randn(4, 6, 5, generator=gen))
    assert (s[..., :-1] >= s[..., 1:]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_svdvals_half_upcast(gen, dtype):
    M = torch.randn(3, 8, 6, generator=gen).to(dtype)
    s = sp.svdvals(M)
    assert s.dtype == torch.float32
    ref = torch.linalg.svdvals(M.double())  # same rounded entries, exact arithmetic
    torch.testing.assert_close(s.double(), ref, rtol=1e-5, atol=1e-5)


def test_svdvals_nonfinite_one_warning_neighbours_fine(gen):
    M = torch.randn(2, 3, 6, 4, generator=gen, dtype=F64)
    clean = sp.svdvals(M)
    M[0, 1, 2, 3] = float("nan")
    M[1, 2, 0, 0] = float("inf")
    M[1, 0, 5, 1] = float("-inf")
    with pytest.warns(RuntimeWarning, match="3 of 6") as record:
        s = sp.svdvals(M)
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    bad = torch.zeros(2, 3, dtype=torch.bool)
    bad[0, 1] = bad[1, 2] = bad[1, 0] = True
    assert s[bad].isnan().all()
    torch.testing.assert_close(s[~bad], clean[~bad], rtol=0, atol=0)


def test_no_warning_for_finite_input(gen):
    A = torch.randn(2, 10, 3, generator=gen)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sp.svdvals(A)
        sp.circuit_svdvals(A, A)
        sp.circuit_svd(A, A)


# ------------------------------------------------------------------------------- circuits


def test_circuit_svdvals_matches_dense_float64(gen):
    A = torch.randn(2, 3, 40, 8, generator=gen, dtype=F64)  # [L, H, D, dh]
    B = torch.randn(2, 3, 40, 8, generator=gen, dtype=F64)
    s = sp.circuit_svdvals(A, B)
    ref = dense_top(A, B)
    assert s.shape == (2, 3, 8) and s.dtype == F64
    scale = ref[..., :1]
    assert ((s - ref).abs() / scale).max() < 1e-10


def test_circuit_svdvals_matches_dense_float32(gen):
    A = torch.randn(2, 3, 64, 16, generator=gen)
    B = torch.randn(2, 3, 64, 16, generator=gen)
    s = sp.circuit_svdvals(A, B)
    assert s.dtype == torch.float32
    ref = dense_top(A.double(), B.double()).float()
    top = ref > 1e-3 * ref[..., :1]
    assert ((s - ref).abs() / ref)[top].max() < 1e-4


def test_circuit_known_spectrum(gen):
    sigma = torch.tensor([[9.0, 4.0, 1.0, 0.25], [3.0, 3.0, 2.0, 1e-3]], dtype=F64)
    A, B = circuit_with_spectrum(sigma, D=30, gen=gen)
    torch.testing.assert_close(sp.circuit_svdvals(A, B), sigma, rtol=1e-10, atol=1e-12)


def test_circuit_rank_deficient_factors(gen):
    D, dh, r = 32, 8, 3
    A = torch.randn(4, D, r, generator=gen, dtype=F64) @ torch.randn(
        4, r, dh, generator=gen, dtype=F64
    )
    B = torch.randn(4, D, dh, generator=gen, dtype=F64)
    s = sp.circuit_svdvals(A, B)
    ref = dense_top(A, B)
    assert ((s - ref).abs() / ref[..., :1]).max() < 1e-10
    assert (s[..., r:] / s[..., :1]).max() < 1e-12  # the true rank shows


def test_circuit_broadcasts_shared_factor(gen):
    A = torch.randn(3, 20, 5, generator=gen, dtype=F64)
    B = torch.randn(1, 20, 5, generator=gen, dtype=F64)  # one key head shared (GQA-like)
    s = sp.circuit_svdvals(A, B)
    assert s.shape == (3, 5)
    torch.testing.assert_close(s, dense_top(A, B), rtol=1e-10, atol=1e-10)
    B[0, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="3 of 3"):
        assert sp.circuit_svdvals(A, B).isnan().all()


def test_circuit_dh_larger_than_D(gen):
    A = torch.randn(2, 4, 6, generator=gen, dtype=F64)  # D=4 < dh=6
    B = torch.randn(2, 4, 6, generator=gen, dtype=F64)
    s = sp.circuit_svdvals(A, B)
    assert s.shape == (2, 4)
    torch.testing.assert_close(s, torch.linalg.svdvals(A @ B.mT), rtol=1e-10, atol=1e-10)


def test_qk_ov_layouts(gen):
    W_Q, W_K, W_V = (torch.randn(2, 4, 24, 6, generator=gen, dtype=F64) for _ in range(3))
    W_O = torch.randn(2, 4, 6, 24, generator=gen, dtype=F64)  # [L, H, dh, D]
    torch.testing.assert_close(sp.qk_svdvals(W_Q, W_K), torch.linalg.svdvals(W_Q @ W_K.mT)[..., :6])
    torch.testing.assert_close(sp.ov_svdvals(W_V, W_O), torch.linalg.svdvals(W_V @ W_O)[..., :6])
    U, S, V = sp.ov_svd(W_V, W_O)
    torch.testing.assert_close(U * S.unsqueeze(-2) @ V.mT, W_V @ W_O)
    U, S, V = sp.qk_svd(W_Q, W_K, k=2)
    assert U.shape == (2, 4, 24, 2) and S.shape == (2, 4, 2)


def test_circuit_zero_and_nonfinite(gen):
    A = torch.randn(5, 16, 4, generator=gen, dtype=F64)
    B = torch.randn(5, 16, 4, generator=gen, dtype=F64)
    A[0] = 0.0
    clean = sp.circuit_svdvals(A, B)
    assert torch.equal(clean[0], torch.zeros(4, dtype=F64))
    B[3, 0, 0] = float("nan")
    A[4, 1, 1] = float("inf")
    with pytest.warns(RuntimeWarning) as record:
        s = sp.circuit_svdvals(A, B)
    assert len(record) == 1
    assert s[3:].isnan().all() and not s[:3].isnan().any()
    torch.testing.assert_close(s[:3], clean[:3], rtol=0, atol=0)
    with pytest.warns(RuntimeWarning) as record:
        U, S, V = sp.circuit_svd(A, B)
    assert len(record) == 1
    assert U[3:].isnan().all() and S[3:].isnan().all() and V[3:].isnan().all()
    assert not (U[:3].isnan().any() or S[:3].isnan().any() or V[:3].isnan().any())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_circuit_half_upcast(gen, dtype):
    A = torch.randn(2, 32, 8, generator=gen).to(dtype)
    B = torch.randn(2, 32, 8, generator=gen).to(dtype)
    s = sp.circuit_svdvals(A, B)
    assert s.dtype == torch.float32
    ref = dense_top(A.double(), B.double())
    assert ((s.double() - ref).abs() / ref[..., :1]).max() < 1e-5


def test_circuit_svd_reconstructs_and_truncates(gen):
    A = torch.randn(2, 3, 30, 6, generator=gen, dtype=F64)
    B = torch.randn(2, 3, 30, 6, generator=gen, dtype=F64)
    M = A @ B.mT
    U, S, V = sp.circuit_svd(A, B)
    assert U.shape == (2, 3, 30, 6) and S.shape == (2, 3, 6) and V.shape == (2, 3, 30, 6)
    torch.testing.assert_close(U * S.unsqueeze(-2) @ V.mT, M, rtol=1e-10, atol=1e-10)
    eye = torch.eye(6, dtype=F64)
    torch.testing.assert_close(U.mT @ U, eye.expand(2, 3, 6, 6), rtol=0, atol=1e-12)
    torch.testing.assert_close(V.mT @ V, eye.expand(2, 3, 6, 6), rtol=0, atol=1e-12)
    # top-k: the best rank-k approximation (Eckart-Young), the same as the dense SVD's
    k = 2
    Uk, Sk, Vk = sp.circuit_svd(A, B, k=k)
    u, s, vh = torch.linalg.svd(M)
    best = u[..., :k] * s[..., None, :k] @ vh[..., :k, :]
    torch.testing.assert_close(Uk * Sk.unsqueeze(-2) @ Vk.mT, best, rtol=1e-9, atol=1e-9)
    err = torch.linalg.matrix_norm(M - Uk * Sk.unsqueeze(-2) @ Vk.mT)
    torch.testing.assert_close(err, s[..., k:].square().sum(-1).sqrt())
    assert sp.circuit_svd(A, B, k=99)[1].shape[-1] == 6


def test_top_singular_vectors(gen):
    M = torch.randn(3, 12, 9, generator=gen, dtype=F64)
    U, S, V = sp.top_singular_vectors(M, 4)
    assert U.shape == (3, 12, 4) and S.shape == (3, 4) and V.shape == (3, 9, 4)
    torch.testing.assert_close(S, torch.linalg.svdvals(M)[..., :4])
    torch.testing.assert_close(M @ V, U * S.unsqueeze(-2))  # M v_i = σ_i u_i
    torch.testing.assert_close(sp.top_singular_vectors(M)[1], torch.linalg.svdvals(M))


# ------------------------------------------------------------------------------- rank measures


@pytest.mark.parametrize(
    "fn", [sp.erank, sp.stable_rank, sp.participation_ratio, sp.numerical_rank]
)
def test_rank_measures_flat_single_zero_nan(fn):
    s = torch.tensor(
        [[1.0, 1, 1, 1, 1], [2.5, 2.5, 2.5, 0, 0], [0, 7, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=F64
    )
    torch.testing.assert_close(fn(s), torch.tensor([5.0, 3, 1, 0], dtype=F64))
    out = fn(torch.tensor([[1.0, float("nan")], [2.0, 1.0], [float("inf"), 1.0]]))
    assert out[0].isnan() and out[2].isnan() and out[1].isfinite()
    assert fn(torch.ones(4, dtype=F64)).shape == ()
    assert fn(torch.ones(2, 3, 4)).shape == (2, 3)


def test_rank_measures_known_values():
    s = torch.tensor([2.0, 1.0, 1.0], dtype=F64)
    # p = (1/2, 1/4, 1/4): H = 1.5 ln 2, erank = 2^1.5; independent check via scipy's entropy
    assert sp.erank(s).item() == pytest.approx(2**1.5, rel=1e-12)
    assert sp.erank(s).item() == pytest.approx(math.exp(scipy.stats.entropy(s.numpy())), rel=1e-12)
    assert sp.stable_rank(s).item() == pytest.approx(6 / 4, rel=1e-12)
    assert sp.participation_ratio(s).item() == pytest.approx(36 / 18, rel=1e-12)
    assert sp.numerical_rank(torch.tensor([1.0, 0.1, 1e-3, 1e-4]), tol=1e-3).item() == 2.0
    assert sp.numerical_rank(torch.tensor([1.0, 0.1, 1e-3, 1e-4]), tol=1e-4).item() == 3.0


def test_stable_rank_is_frobenius_over_spectral(gen):
    M = torch.randn(4, 10, 7, generator=gen, dtype=F64)
    ref = torch.linalg.matrix_norm(M).square() / torch.linalg.matrix_norm(M, ord=2).square()
    torch.testing.assert_close(sp.stable_rank(sp.svdvals(M)), ref)


def test_marginal_erank():
    s = torch.tensor([[10.0, 1, 1, 1], [1, 10, 1, 1], [5, 0, 0, 0]], dtype=F64)
    torch.testing.assert_close(sp.marginal_erank(s), torch.tensor([3.0, 3, 0], dtype=F64))
    torch.testing.assert_close(sp.marginal_erank(s, k=0), sp.erank(s))
    torch.testing.assert_close(sp.marginal_erank(s, k=2)[:2], torch.tensor([2.0, 2], dtype=F64))
    assert (sp.marginal_erank(s, k=4) == 0).all()
    assert (sp.marginal_erank(s, k=9) == 0).all()
    assert sp.marginal_erank(torch.tensor([float("nan"), 1.0, 1.0])).isnan()
    with pytest.raises(ValueError):
        sp.marginal_erank(s, k=-1)


def test_rank_measures_half_input():
    s = torch.tensor([3.0, 2.0, 1.0], dtype=torch.float16)
    ref = torch.tensor([3.0, 2.0, 1.0])
    for fn in (sp.erank, sp.stable_rank, sp.participation_ratio, sp.marginal_erank):
        assert fn(s).dtype == torch.float32
        torch.testing.assert_close(fn(s), fn(ref))


spectra = st.lists(
    st.one_of(st.just(0.0), st.floats(1e-6, 1e6, allow_nan=False)), min_size=1, max_size=12
).filter(lambda xs: any(x > 0 for x in xs))


@settings(max_examples=60, deadline=None)
@given(spectra)
def test_rank_inequalities(xs):
    s = torch.tensor(xs, dtype=F64)
    nnz = int((s > 0).sum())
    tol = 1e-9
    e, sr, pr = sp.erank(s).item(), sp.stable_rank(s).item(), sp.participation_ratio(s).item()
    nr = sp.numerical_rank(s).item()
    assert 1 - tol <= e <= nnz + tol
    assert 1 - tol <= sr <= pr * (1 + tol)  # Σσ⁴ ≤ σ₁² Σσ²
    assert pr <= nnz * (1 + tol)  # Cauchy-Schwarz
    assert 1 <= nr <= nnz and nr == int(nr)
    assert 0 <= sp.marginal_erank(s).item() <= max(nnz - 1, 0) + tol


@settings(max_examples=40, deadline=None)
@given(spectra, st.floats(1e-3, 1e3), st.randoms(use_true_random=False))
def test_rank_scale_and_permutation_invariance(xs, c, rnd):
    s = torch.tensor(xs, dtype=F64)
    perm = list(range(len(xs)))
    rnd.shuffle(perm)
    for fn in (sp.erank, sp.stable_rank, sp.participation_ratio, sp.marginal_erank):
        base = fn(s).item()
        assert fn(c * s).item() == pytest.approx(base, rel=1e-9, abs=1e-12)
        assert fn(s[perm]).item() == pytest.approx(base, rel=1e-9, abs=1e-12)


def test_erank_matches_numpy_formula(gen):
    s = torch.rand(6, 9, generator=gen, dtype=F64)
    p = s.numpy() / s.numpy().sum(-1, keepdims=True)
    ref = np.exp(-(p * np.log(p)).sum(-1))
    np.testing.assert_allclose(sp.erank(s).numpy(), ref, rtol=1e-12)
