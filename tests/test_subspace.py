"""Principal angles, subspace distance and projection residuals against scipy, explicit
constructions and dense formulas."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynmon.metrics import spectral as sp
from dynmon.metrics import subspace as ss

F64 = torch.float64


def orthonormal(*shape: int, gen: torch.Generator, dtype=F64) -> torch.Tensor:
    """Random ``[..., n, k]`` with orthonormal columns."""
    return torch.linalg.qr(torch.randn(*shape, generator=gen, dtype=F64)).Q.to(dtype)


def rotated_pair(thetas: list[float], n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``U = [e_1..e_k]`` and ``V`` with ``v_i = cos θ_i e_i + sin θ_i e_{k+i}``: angles θ."""
    k = len(thetas)
    U = torch.zeros(n, k, dtype=F64)
    V = torch.zeros(n, k, dtype=F64)
    for i, t in enumerate(thetas):
        U[i, i] = 1.0
        V[i, i] = math.cos(t)
        V[k + i, i] = math.sin(t)
    return U, V


def scipy_angles(U: torch.Tensor, V: torch.Tensor) -> np.ndarray:
    """scipy's angles (descending), flipped to ascending, per batch item."""
    U2 = U.reshape(-1, *U.shape[-2:]).numpy()
    V2 = V.reshape(-1, *V.shape[-2:]).numpy()
    out = [scipy.linalg.subspace_angles(u, v)[::-1] for u, v in zip(U2, V2, strict=True)]
    return np.stack(out).reshape(*U.shape[:-2], -1)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(99)


# ------------------------------------------------------------------------------- angles


def test_principal_angles_vs_scipy_batched(gen):
    U = orthonormal(2, 3, 20, 4, gen=gen)  # [L, H, n, k]
    V = orthonormal(2, 3, 20, 4, gen=gen)
    theta = ss.principal_angles(U, V)
    assert theta.shape == (2, 3, 4)
    np.testing.assert_allclose(theta.numpy(), scipy_angles(U, V), rtol=1e-10, atol=1e-12)
    assert (theta[..., 1:] >= theta[..., :-1]).all()


def test_principal_angles_unequal_k_vs_scipy(gen):
    U = orthonormal(3, 15, 5, gen=gen)
    V = orthonormal(3, 15, 2, gen=gen)
    for a, b in ((U, V), (V, U)):
        theta = ss.principal_angles(a, b)
        assert theta.shape == (3, 2)
        np.testing.assert_allclose(theta.numpy(), scipy_angles(a, b), rtol=1e-10, atol=1e-12)


def test_known_angles_including_tiny_ones():
    thetas = [1e-9, 1e-5, 0.3, 1.2, math.pi / 2]
    U, V = rotated_pair(thetas, n=12)
    theta = ss.principal_angles(U, V)
    # acos(cos) could not resolve 1e-9 (cos rounds to 1): the sine path does
    np.testing.assert_allclose(theta.numpy(), thetas, rtol=1e-9, atol=1e-15)
    d = ss.subspace_distance(U, V)
    ref = math.sqrt(sum(math.sin(t) ** 2 for t in thetas) / len(thetas))
    assert d.item() == pytest.approx(ref, rel=1e-12)
    U1, V1 = rotated_pair([1e-9], n=4)
    assert ss.subspace_distance(U1, V1).item() == pytest.approx(1e-9, rel=1e-6)


def test_intersecting_planes_have_an_exact_zero_angle(gen):
    """Two planes in R³ always share a line: the smallest angle is 0 to rounding, not √eps."""
    U = orthonormal(50, 3, 2, gen=gen)
    V = orthonormal(50, 3, 2, gen=gen)
    theta = ss.principal_angles(U, V)
    assert theta[:, 0].abs().max() < 1e-14
    assert (theta[:, 1] > 1e-6).all()


def test_angles_float32_and_half(gen):
    U, V = rotated_pair([0.1, 0.7], n=6)
    assert ss.principal_angles(U.float(), V.float()).dtype == torch.float32
    theta = ss.principal_angles(U.half(), V.half())
    assert theta.dtype == torch.float32
    np.testing.assert_allclose(theta.numpy(), [0.1, 0.7], atol=2e-3)


# ------------------------------------------------------------------------------- distance


def test_distance_same_orthogonal_symmetric(gen):
    U = orthonormal(4, 16, 3, gen=gen)
    assert ss.subspace_distance(U, U).abs().max() < 1e-14
    E = torch.eye(16, dtype=F64)
    assert ss.subspace_distance(E[:, :3], E[:, 3:6]).item() == pytest.approx(1.0, abs=1e-15)
    V = orthonormal(4, 16, 3, gen=gen)
    torch.testing.assert_close(ss.subspace_distance(U, V), ss.subspace_distance(V, U))


def test_distance_matches_dense_projectors_and_angles(gen):
    U = orthonormal(2, 3, 18, 5, gen=gen)
    V = orthonormal(2, 3, 18, 5, gen=gen)
    d = ss.subspace_distance(U, V)
    dense = torch.linalg.matrix_norm(U @ U.mT - V @ V.mT) / math.sqrt(2 * 5)
    torch.testing.assert_close(d, dense, rtol=1e-12, atol=1e-12)
    via_scipy = np.sqrt(np.mean(np.sin(scipy_angles(U, V)) ** 2, axis=-1))
    np.testing.assert_allclose(d.numpy(), via_scipy, rtol=1e-10)


def test_distance_unequal_k_dense(gen):
    U = orthonormal(10, 2, gen=gen)
    V = orthonormal(10, 4, gen=gen)
    dense = torch.linalg.matrix_norm(U @ U.mT - V @ V.mT) / math.sqrt(2 + 4)
    torch.testing.assert_close(ss.subspace_distance(U, V), dense)


def test_distance_invariant_to_rotation_within_subspace(gen):
    U = orthonormal(3, 20, 4, gen=gen)
    W = orthonormal(3, 20, 4, gen=gen)
    Q = orthonormal(3, 4, 4, gen=gen)  # orthogonal 4x4
    UQ = U @ Q
    assert ss.subspace_distance(U, UQ).abs().max() < 1e-14
    torch.testing.assert_close(ss.subspace_distance(UQ, W), ss.subspace_distance(U, W))
    torch.testing.assert_close(ss.principal_angles(UQ, W), ss.principal_angles(U, W))


def test_nonfinite_gives_nan_silently(gen):
    U = orthonormal(3, 10, 2, gen=gen)
    V = orthonormal(3, 10, 2, gen=gen)
    V[1, 0, 0] = float("nan")
    U[2, 3, 1] = float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        theta = ss.principal_angles(U, V)
        d = ss.subspace_distance(U, V)
    assert theta[1:].isnan().all() and d[1:].isnan().all()
    assert theta[0].isfinite().all() and d[0].isfinite()
    np.testing.assert_allclose(theta[0].numpy(), scipy_angles(U[0], V[0]), rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 12), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_distance_properties(n, k, seed):
    k = min(k, n)
    g = torch.Generator().manual_seed(seed)
    U, V, W = (orthonormal(n, k, gen=g) for _ in range(3))
    theta = ss.principal_angles(U, V)
    d_uv, d_vu = ss.subspace_distance(U, V), ss.subspace_distance(V, U)
    assert ((theta >= 0) & (theta <= math.pi / 2 + 1e-12)).all()
    assert (theta[1:] >= theta[:-1] - 1e-12).all()
    # scipy resolves some near-zero angles only to √eps (its arccos branch): compare to 1e-7
    np.testing.assert_allclose(theta.numpy(), scipy_angles(U, V), atol=1e-7)
    assert 0 <= d_uv.item() <= 1
    assert d_uv.item() == pytest.approx(d_vu.item(), abs=1e-12)
    assert d_uv.item() == pytest.approx(theta.sin().square().mean().sqrt().item(), abs=1e-12)
    # a metric on subspaces (chordal distance): the triangle inequality holds
    assert d_uv <= ss.subspace_distance(U, W) + ss.subspace_distance(W, V) + 1e-12


# ------------------------------------------------------------------------------- choose_k


def test_choose_k():
    s = torch.tensor([[[5.0, 1, 1e-4, 0], [2, 0, 0, 0]], [[1, 1, 1, 1e-2], [0, 0, 0, 0]]])
    assert ss.choose_k(s) == 4  # max over the batch
    assert ss.choose_k(s, cap=3) == 3
    assert ss.choose_k(s, tol=0.1) == 3
    assert ss.choose_k(s[0]) == 2
    assert ss.choose_k(torch.zeros(3, 4)) == 1  # at least 1
    nan_row = torch.tensor([[float("nan")] * 4, [1.0, 1, 0, 0]])
    assert ss.choose_k(nan_row) == 2  # NaN spectra are ignored
    assert ss.choose_k(torch.full((2, 4), float("nan"))) == 1
    assert isinstance(ss.choose_k(s), int)


# ------------------------------------------------------------------------------- residual


def dense_residual(M_t: torch.Tensor, M_ref: torch.Tensor) -> torch.Tensor:
    """The formula as written, with the pseudo-inverse."""
    n = M_t.shape[-1]
    P = torch.eye(n, dtype=M_t.dtype) - torch.linalg.pinv(M_t) @ M_t
    return torch.linalg.matrix_norm(M_ref @ P) / torch.linalg.matrix_norm(M_ref)


def test_projection_residual_vs_pinv(gen):
    M_t = torch.randn(2, 3, 12, 4, generator=gen, dtype=F64) @ torch.randn(
        2, 3, 4, 10, generator=gen, dtype=F64
    )  # rank 4 of 10 columns
    M_ref = M_t + 0.3 * torch.randn(2, 3, 12, 10, generator=gen, dtype=F64)
    r = ss.projection_residual(M_t, M_ref)
    assert r.shape == (2, 3)
    torch.testing.assert_close(r, dense_residual(M_t, M_ref), rtol=1e-9, atol=1e-12)
    assert ((r > 0) & (r < 1)).all()


def test_projection_residual_limits(gen):
    E = torch.eye(6, dtype=F64)
    M = torch.randn(5, 6, generator=gen, dtype=F64) @ E[:, :3] @ E[:, :3].T  # rows in e1..e3
    M_orth = torch.randn(5, 6, generator=gen, dtype=F64) @ E[:, 3:] @ E[:, 3:].T
    assert ss.projection_residual(M, 2.0 * M).item() == pytest.approx(0.0, abs=1e-12)
    assert ss.projection_residual(M, M_orth).item() == pytest.approx(1.0, abs=1e-12)
    assert ss.projection_residual(torch.zeros(5, 6, dtype=F64), M).item() == 1.0
    assert ss.projection_residual(M, torch.zeros(5, 6, dtype=F64)).isnan()
    M_bad = M.clone()
    M_bad[0, 0] = float("nan")
    out = ss.projection_residual(torch.stack([M, M_bad]), torch.stack([M_orth, M_orth]))
    assert out[1].isnan() and out[0].item() == pytest.approx(1.0)


def test_projection_residual_factored_vs_dense(gen):
    shape = (2, 3, 24, 4)  # [L, H, D, dh]
    A_t, B_t = (torch.randn(*shape, generator=gen, dtype=F64) for _ in range(2))
    A_ref = A_t + 0.5 * torch.randn(*shape, generator=gen, dtype=F64)
    B_ref = B_t + 0.5 * torch.randn(*shape, generator=gen, dtype=F64)
    r = ss.projection_residual_factored(A_t, B_t, A_ref, B_ref)
    dense = dense_residual(A_t @ B_t.mT, A_ref @ B_ref.mT)
    torch.testing.assert_close(r, dense, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(r, ss.projection_residual(A_t @ B_t.mT, A_ref @ B_ref.mT))
    same = ss.projection_residual_factored(A_t, B_t, 3 * A_t, B_t)
    assert same.abs().max() < 1e-12
    # rank-deficient current circuit: the rank cut drops the null directions as pinv does
    A_low = A_t.clone()
    A_low[..., -1] = 0.0
    torch.testing.assert_close(
        ss.projection_residual_factored(A_low, B_t, A_ref, B_ref),
        dense_residual(A_low @ B_t.mT, A_ref @ B_ref.mT),
        rtol=1e-8,
        atol=1e-10,
    )


def test_circuit_svd_subspaces_feed_distance(gen):
    """End to end: a circuit whose factors are re-mixed by G has the same singular subspaces."""
    A = torch.randn(3, 20, 4, generator=gen, dtype=F64)
    B = torch.randn(3, 20, 4, generator=gen, dtype=F64)
    G = torch.randn(3, 4, 4, generator=gen, dtype=F64) + 4 * torch.eye(4, dtype=F64)
    U1, _, V1 = sp.circuit_svd(A, B)
    U2, _, V2 = sp.circuit_svd(A @ G, B @ torch.linalg.inv(G).mT)  # same product A Bᵀ
    assert ss.subspace_distance(U1, U2).max() < 1e-12
    assert ss.subspace_distance(V1, V2).max() < 1e-12
