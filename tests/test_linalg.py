"""Eigenvalue, trace and density estimators against dense references (numpy, exact spectra)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from dynmon import linalg
from dynmon.linalg import (
    ConvergenceWarning,
    DenseOperator,
    gaussian_density,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_eigenvalues,
    power_iteration,
    slq_density,
)

F64 = torch.float64


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _symmetric(n: int, seed: int) -> torch.Tensor:
    """A dense random symmetric matrix with eigenvalues of both signs."""
    X = torch.randn(n, n, generator=_gen(seed), dtype=F64)
    return (X + X.T) / 2


def _with_spectrum(eigs, seed: int = 0) -> torch.Tensor:
    """``U diag(eigs) Uᵀ`` for a random orthogonal ``U``."""
    eigs = torch.as_tensor(eigs, dtype=F64)
    n = eigs.numel()
    U = torch.linalg.qr(torch.randn(n, n, generator=_gen(seed), dtype=F64)).Q
    return U @ torch.diag(eigs) @ U.T


def test_dense_operator_contract():
    A = _symmetric(5, 0)
    op = DenseOperator(A)
    assert op.shape == (5, 5) and op.dtype == F64 and op.device == A.device
    assert isinstance(op, linalg.LinearOperator)
    v = torch.arange(5, dtype=F64)
    torch.testing.assert_close(op.matvec(v), A @ v)
    assert linalg.as_operator(op) is op
    with pytest.raises(ValueError, match="square"):
        DenseOperator(torch.zeros(3, 4))
    with pytest.raises(TypeError, match="matvec"):
        linalg.as_operator(object())


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("which", ["LA", "LM", "SA"])
def test_lanczos_matches_eigvalsh(seed, which):
    A = _symmetric(120, seed)
    ref = np.linalg.eigvalsh(A.numpy())
    order = {
        "LA": ref[::-1],
        "SA": ref,
        "LM": ref[np.argsort(-np.abs(ref), kind="stable")],
    }[which]
    res = lanczos_eigenvalues(A, 3, which=which, tol=1e-10, max_iter=120, generator=_gen(seed))
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues.numpy(), order[:3], rtol=1e-8)
    assert res.num_matvecs == res.history.shape[0] <= 120
    torch.testing.assert_close(res.history[-1], res.eigenvalues)


def test_lanczos_la_and_lm_differ_when_the_negative_end_dominates():
    A = _with_spectrum([-10.0, 4.0, 3.0, *np.linspace(-1, 1, 47)])
    assert lanczos_eigenvalues(A, which="LA", tol=1e-8).eigenvalues.item() == pytest.approx(4.0)
    assert lanczos_eigenvalues(A, which="LM", tol=1e-8).eigenvalues.item() == pytest.approx(-10)
    assert lanczos_eigenvalues(A, which="SA", tol=1e-8).eigenvalues.item() == pytest.approx(-10)


def test_lanczos_default_tolerance_bounds_the_error():
    eigs = np.concatenate([[10.0, 9.0, 6.0], np.geomspace(1e-4, 2.0, 397)])
    A = _with_spectrum(eigs, seed=3)
    res = lanczos_eigenvalues(A, 2)  # tol=1e-3 on the Ritz residual
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues.numpy(), [10.0, 9.0], rtol=1e-3)
    assert (res.residuals <= 1e-3).all()
    assert res.num_matvecs < 60


def test_lanczos_eigenvectors_and_operator_input():
    A = _symmetric(60, 4)
    res = lanczos_eigenvalues(
        DenseOperator(A), 2, tol=1e-10, return_eigenvectors=True, generator=_gen(1)
    )
    V = res.eigenvectors
    assert V.shape == (60, 2)
    torch.testing.assert_close(A @ V, V * res.eigenvalues, atol=1e-7, rtol=0)
    torch.testing.assert_close(V.T @ V, torch.eye(2, dtype=F64), atol=1e-10, rtol=0)
    same = lanczos_eigenvalues(A, 2, tol=1e-10, generator=_gen(1))
    torch.testing.assert_close(same.eigenvalues, res.eigenvalues, atol=0, rtol=0)


def test_lanczos_finds_repeated_eigenvalues_of_a_low_rank_matrix():
    n = 80
    U = torch.linalg.qr(torch.randn(n, 5, generator=_gen(2), dtype=F64)).Q
    A = U @ torch.diag(torch.tensor([5.0, 5.0, 3.0, 2.0, 1.0], dtype=F64)) @ U.T
    res = lanczos_eigenvalues(A, 4, tol=1e-8)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues.numpy(), [5, 5, 3, 2], rtol=1e-8)
    zero = lanczos_eigenvalues(torch.zeros(10, 10, dtype=F64), 2)
    assert zero.converged and zero.eigenvalues.abs().max() == 0


def test_lanczos_without_reorthogonalisation_gets_the_top_eigenvalue():
    A = _with_spectrum([7.0, 5.0, *np.linspace(0, 1, 98)], seed=5)
    res = lanczos_eigenvalues(A, 1, tol=1e-8, reorth="none")
    assert res.eigenvalues.item() == pytest.approx(7.0, rel=1e-8)
    with pytest.raises(ValueError, match="reorth='full'"):
        lanczos_eigenvalues(A, 1, reorth="none", return_eigenvectors=True)


def test_lanczos_warns_with_its_tolerance_when_not_converged():
    A = _symmetric(200, 6)
    with pytest.warns(ConvergenceWarning, match=r"tol=1e-12.*matvecs|matvecs.*tol=1e-12"):
        res = lanczos_eigenvalues(A, 1, tol=1e-12, max_iter=8)
    assert not res.converged and res.num_matvecs == 8
    assert res.residuals.item() > 1e-12


def test_lanczos_small_space_and_bad_arguments():
    A = torch.diag(torch.tensor([3.0, -1.0, 2.0], dtype=F64))
    res = lanczos_eigenvalues(A, 3, tol=0.0)  # spans the whole space: exact, no warning
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues.numpy(), [3, 2, -1], atol=1e-12)
    with pytest.raises(ValueError, match="k must be"):
        lanczos_eigenvalues(A, 4)
    with pytest.raises(ValueError, match="which"):
        lanczos_eigenvalues(A, which="BE")


def test_estimators_leave_the_global_rng_alone():
    A = _symmetric(30, 7)
    state = torch.get_rng_state()
    lanczos_eigenvalues(A, 2)
    power_iteration(A, tol=1e-2)
    hutchinson_trace(A, 5)
    hutchpp_trace(A, 9)
    slq_density(A, 2, 5)
    assert torch.equal(state, torch.get_rng_state())
    a = hutchinson_trace(A, 5)[0]
    b = hutchinson_trace(A, 5)[0]  # generator=None means seed 0: reproducible
    assert a == b


def test_power_iteration_with_deflation():
    A = _with_spectrum([6.0, -4.0, 2.0, *np.linspace(-0.5, 0.5, 37)], seed=8)
    res = power_iteration(A, 2, tol=1e-10, max_iter=500, return_eigenvectors=True)
    assert res.converged
    np.testing.assert_allclose(res.eigenvalues.numpy(), [6.0, -4.0], rtol=1e-6)
    V = res.eigenvectors
    torch.testing.assert_close(A @ V, V * res.eigenvalues, atol=1e-4, rtol=0)
    assert res.history.shape == (res.num_matvecs, 2)
    assert math.isnan(res.history[0, 1]) and res.history[-1, 0] == res.eigenvalues[0]
    with pytest.warns(ConvergenceWarning, match="tol=1e-12"):
        assert not power_iteration(A, tol=1e-12, max_iter=5).converged


def test_hutchinson_is_unbiased_with_a_sensible_stderr():
    A = _symmetric(100, 9) + 3 * torch.eye(100, dtype=F64)
    N = 400
    est, se = hutchinson_trace(A, N, generator=_gen(1))
    assert abs(est - A.trace()) < 3 * se
    theory = math.sqrt(2 * (A.square().sum() - A.diag().square().sum()) / N)
    assert 0.8 < se / theory < 1.25
    assert est.dtype == F64 and est.dim() == 0
    one = hutchinson_trace(A, 1)
    assert math.isnan(one[1])


def test_hutchpp_beats_hutchinson_on_low_rank_plus_noise():
    n = 300
    U = torch.linalg.qr(torch.randn(n, 8, generator=_gen(3), dtype=F64)).Q
    A = U @ torch.diag(torch.linspace(50, 20, 8, dtype=F64)) @ U.T + 0.05 * _symmetric(n, 4)
    trace = A.trace().item()
    hutch = torch.stack([hutchinson_trace(A, 30, generator=_gen(s))[0] for s in range(40)])
    hpp = torch.stack([hutchpp_trace(A, 30, generator=_gen(s))[0] for s in range(40)])
    assert ((hpp - trace).square().mean()) < ((hutch - trace).square().mean()) / 10
    est, se = hutchpp_trace(A, 30, generator=_gen(99))
    assert abs(est - trace) < 4 * se
    exact = U @ torch.diag(torch.arange(1.0, 9.0, dtype=F64)) @ U.T  # rank 8 < 30 / 3
    assert hutchpp_trace(exact, 30)[0].item() == pytest.approx(36.0, rel=1e-10)
    with pytest.raises(ValueError, match=">= 3"):
        hutchpp_trace(A, 2)


def test_slq_density_integrates_to_one_and_has_the_right_mean():
    eigs = torch.cat([torch.tensor([9.0, 7.0]), torch.linspace(-1, 2, 198)]).to(F64)
    A = _with_spectrum(eigs, seed=10)
    n = A.shape[0]
    nodes, weights = slq_density(A, num_probes=8, num_steps=30, generator=_gen(2))
    assert nodes.shape == weights.shape == (8, 30)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-12)
    mean = (nodes * weights).sum()
    hutch, se = hutchinson_trace(A, 8, generator=_gen(2))  # the same probes
    assert mean.item() == pytest.approx(hutch.item() / n, rel=1e-10)
    assert abs(mean - eigs.mean()) < 3 * se / n
    assert nodes.max().item() == pytest.approx(9.0, rel=1e-8)  # extreme nodes converge
    grid, density = gaussian_density(nodes, weights)
    assert torch.trapezoid(density, grid).item() == pytest.approx(1.0, abs=1e-3)
    assert density.min() >= 0
    grid2, density2 = gaussian_density(nodes, weights, grid=torch.linspace(-5, 15, 4001), sigma=0.1)
    assert torch.trapezoid(density2, grid2).item() == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="sigma"):
        gaussian_density(nodes, weights, sigma=0.0)


def test_slq_stops_early_on_a_small_space():
    A = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=F64))
    nodes, weights = slq_density(A, num_probes=2, num_steps=10)
    assert weights.sum().item() == pytest.approx(1.0)
    assert (weights[:, 3:] == 0).all()  # a 3-dim space: three nodes per probe
    torch.testing.assert_close(nodes[0, :3], torch.tensor([1.0, 2.0, 4.0], dtype=F64))


def test_float32_operator():
    A = _with_spectrum([5.0, 1.0, *np.linspace(0, 0.5, 48)], seed=11).float()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = lanczos_eigenvalues(A, 1)
    assert res.eigenvalues.dtype == F64
    assert res.eigenvalues.item() == pytest.approx(5.0, rel=1e-3)
    est, se = hutchinson_trace(A, 20)
    assert abs(est - A.double().trace()) < 4 * se


# --------------------------------------------------------------------------------------------
# blocks of products (matmat)


class _MatvecOnly:
    """An operator with ``matvec`` alone: the estimators must fall back to one product per row."""

    def __init__(self, A: torch.Tensor) -> None:
        self.A, self.shape, self.dtype, self.device = A, tuple(A.shape), A.dtype, A.device
        self.calls = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.A @ v


class _Counting(_MatvecOnly):
    """The same with ``matmat``, counting the block calls and their widths."""

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__(A)
        self.widths: list[int] = []

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        self.widths.append(V.shape[1])
        return self.A @ V


def test_dense_matmat_is_a_block_of_matvecs():
    A = _symmetric(30, 4)
    V = torch.randn(30, 5, generator=_gen(1), dtype=F64)
    torch.testing.assert_close(DenseOperator(A).matmat(V), torch.stack([A @ v for v in V.T], 1))


@pytest.mark.parametrize("block_size", [1, 7, None])
def test_trace_estimators_give_the_same_answer_in_blocks(block_size):
    """Probes are drawn as one stream: blocking changes how they are applied, not which."""
    A = _with_spectrum(np.linspace(-2, 5, 40), seed=2)
    loop = _MatvecOnly(A)
    ref = hutchinson_trace(loop, 20, generator=_gen(3))
    assert loop.calls == 20
    op = _Counting(A)
    got = hutchinson_trace(op, 20, generator=_gen(3), block_size=block_size)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)
    want_widths = {1: [], 7: [7, 7, 6], None: [20]}[block_size]  # width-1 blocks use matvec
    assert op.widths == want_widths
    ref_pp = hutchpp_trace(_MatvecOnly(A), 30, generator=_gen(4))
    got_pp = hutchpp_trace(_Counting(A), 30, generator=_gen(4), block_size=block_size)
    torch.testing.assert_close(got_pp, ref_pp, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("block_size", [1, 2, None])
def test_slq_block_lanczos_matches_one_probe_at_a_time(block_size):
    A = _with_spectrum(np.r_[np.linspace(0, 1, 57), 4.0, 6.0, 9.0], seed=5)
    n1, w1 = slq_density(_MatvecOnly(A), 5, 25, generator=_gen(6))
    n2, w2 = slq_density(_Counting(A), 5, 25, generator=_gen(6), block_size=block_size)
    torch.testing.assert_close(n2, n1, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(w2, w1, rtol=1e-9, atol=1e-12)
    # probes that run out of Krylov space (n = 12 < 20 steps) stop alone; weights still sum to 1
    B = _with_spectrum(np.linspace(-1, 1, 12), seed=7)
    nodes, weights = slq_density(_Counting(B), 3, 20, block_size=block_size)
    assert weights.sum().item() == pytest.approx(1.0)
    np.testing.assert_allclose(
        np.sort(nodes[0, :12].numpy()), np.linspace(-1, 1, 12), rtol=0, atol=1e-8
    )


def test_block_size_must_be_positive():
    with pytest.raises(ValueError, match="block_size"):
        hutchinson_trace(_symmetric(5, 0), 4, block_size=0)


def test_default_density_budget_beats_one_probe_of_100_steps():
    """The default SLQ budget (4 x 100) against PyHessian's default (1 x 100) on a Hessian-like
    spectrum (a bulk near 0 and a few outliers), by the 1-Wasserstein distance to the exact
    eigenvalues averaged over seeds."""
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(0)
    eigs = np.r_[rng.normal(0, 0.01, 590), rng.uniform(0.2, 1.0, 8), 3.0, 5.0]
    A = _with_spectrum(eigs, seed=8)

    def w1(num_probes, num_steps, seed):
        args = () if num_probes is None else (num_probes, num_steps)
        nodes, weights = slq_density(A, *args, generator=_gen(seed))
        x, w = nodes.reshape(-1).numpy(), weights.reshape(-1).numpy()
        return wasserstein_distance(x[w > 0], eigs, w[w > 0])

    default = np.mean([w1(None, None, s) for s in range(6)])
    pyhessian = np.mean([w1(1, 100, s) for s in range(6)])
    assert default < pyhessian
