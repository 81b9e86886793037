"""Power-law fits of weight eigenvalue densities (esd_alpha): known tails and a plain loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynmon.metrics.esd import ESD_ALPHA, esd_alpha_metric, esd_eigenvalues, powerlaw_fit
from dynmon.metrics.spec import LookContext


def pareto(alpha: float, n: int, seed: int, xmin: float = 1.0) -> np.ndarray:
    """Samples with density ∝ x^(−alpha) on [xmin, ∞) by inverting the CDF."""
    u = np.random.default_rng(seed).random(n)
    return xmin * (1 - u) ** (-1 / (alpha - 1))


def reference_fit(x: np.ndarray) -> tuple[float, float, float]:
    """The Clauset-Shalizi-Newman fit written as a plain loop over candidates: (alpha, xmin, D)."""
    x = np.sort(x[x > 1e-5])
    N = len(x)
    small = N < 20
    best = (math.nan, math.nan, math.inf)
    for i in range(N - 1):
        tail = x[i:]
        n = len(tail)
        alpha = 1 + (n - 1 if small else n) / np.sum(np.log(tail / x[i]))
        if alpha <= 1 or (small and n < 8):
            d = 1.0
        else:
            cdf = 1 - (tail / x[i]) ** (1 - alpha)
            d = np.max(np.abs(cdf - np.arange(n) / n))
        if d < best[2]:
            best = (alpha, x[i], d)
    return best


def matrix_with_spectrum(sigma: np.ndarray, rows: int, seed: int) -> torch.Tensor:
    """A ``[rows, len(sigma)]`` matrix U diag(σ) Vᵀ with random orthonormal U, V."""
    g = torch.Generator().manual_seed(seed)
    n = len(sigma)
    U = torch.linalg.qr(torch.randn(rows, n, generator=g, dtype=torch.float64)).Q
    V = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64)).Q
    return U @ torch.diag(torch.as_tensor(sigma)) @ V.T


@pytest.mark.parametrize("alpha", [2.0, 3.0, 4.5])
def test_recovers_pareto_exponent_of_samples(alpha):
    fit = powerlaw_fit(torch.as_tensor(pareto(alpha, 4000, seed=1)))
    assert fit.alpha == pytest.approx(alpha, abs=0.1)
    assert fit.num_evals == 4000 and 0 < fit.num_tail <= 4000


@pytest.mark.parametrize("alpha", [2.5, 3.5])
def test_recovers_alpha_of_matrix_with_pareto_singular_values(alpha):
    # eigenvalues λ = σ² of WᵀW Pareto with exponent alpha: σ = √λ
    lam = pareto(alpha, 800, seed=2)
    W = matrix_with_spectrum(np.sqrt(lam), rows=1000, seed=3)
    evals = esd_eigenvalues(W.float())
    np.testing.assert_allclose(evals.numpy(), np.sort(lam), rtol=1e-4)
    fit = powerlaw_fit(evals)
    assert fit.alpha == pytest.approx(alpha, abs=0.1)


@pytest.mark.parametrize("n", [12, 19, 64, 300])
def test_matches_plain_loop(n):
    x = pareto(2.7, n, seed=n) * np.random.default_rng(n).uniform(0.5, 2, n)
    alpha, xmin, d = reference_fit(x)
    fit = powerlaw_fit(torch.as_tensor(x), block=7)  # several candidate blocks
    assert fit.alpha == pytest.approx(alpha, rel=1e-12)
    assert fit.xmin == pytest.approx(xmin, rel=1e-12)
    assert fit.ks == pytest.approx(d, rel=1e-12)
    assert fit.num_tail == int(np.sum(x >= xmin))


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(1e-3, 1e3), min_size=3, max_size=60, unique=True),
    st.floats(1e-3, 1e3),
)
def test_scale_invariant(xs, c):
    """A power law has no scale: multiplying every eigenvalue by c moves xmin only."""
    x = torch.tensor(xs, dtype=torch.float64)
    a, b = powerlaw_fit(x), powerlaw_fit(c * x)
    if c * min(xs) <= 1e-5 or min(xs) <= 1e-5:  # the zero floor would cut different samples
        return
    assert b.alpha == pytest.approx(a.alpha, rel=1e-9, abs=1e-9)
    assert b.ks == pytest.approx(a.ks, rel=1e-6, abs=1e-9)
    assert b.xmin == pytest.approx(c * a.xmin, rel=1e-9)


def test_too_few_and_nonfinite():
    assert math.isnan(powerlaw_fit(torch.tensor([1.0])).alpha)
    assert math.isnan(powerlaw_fit(torch.zeros(10)).alpha)
    with pytest.raises(ValueError, match="NaN/Inf"):
        powerlaw_fit(torch.tensor([1.0, float("nan"), 2.0]))
    with pytest.raises(ValueError, match="2-D"):
        esd_eigenvalues(torch.ones(3, 3, 3))


def test_metric_keys_layer_means_and_filters():
    g = torch.Generator().manual_seed(0)
    weights = {
        "h.0.attn.weight": torch.randn(64, 32, generator=g),
        "h.0.mlp.weight": torch.randn(128, 32, generator=g),
        "h.1.attn.weight": torch.randn(64, 32, generator=g),
        "wte.weight": torch.randn(100, 32, generator=g),
        "tiny.weight": torch.randn(4, 3, generator=g),  # fewer than 8 eigenvalues: skipped
    }
    ctx = LookContext(step=0, model=torch.nn.Linear(1, 1), weights=weights)
    out = ESD_ALPHA.compute(ctx)
    fits = {
        n: powerlaw_fit(esd_eigenvalues(w)).alpha for n, w in weights.items() if n != "tiny.weight"
    }
    for n, a in fits.items():
        assert out.scalars[f"dynmon/esd_alpha/{n}"] == pytest.approx(a)
    assert "dynmon/esd_alpha/tiny.weight" not in out.scalars
    l0 = (fits["h.0.attn.weight"] + fits["h.0.mlp.weight"]) / 2
    assert out.scalars["dynmon/esd_alpha/L0"] == pytest.approx(l0)
    assert out.scalars["dynmon/esd_alpha/L1"] == pytest.approx(fits["h.1.attn.weight"])
    assert out.scalars["dynmon/esd_alpha"] == pytest.approx(np.mean(list(fits.values())))
    over = sum(a < 2 for a in fits.values())
    assert out.scalars["dynmon/esd_flags/over_trained"] == over
    ctx.options = {"esd_weights": r"^h\.1\."}
    only = esd_alpha_metric(ctx).scalars
    assert [k for k in only if k.startswith("dynmon/esd_alpha/h.")] == [
        "dynmon/esd_alpha/h.1.attn.weight"
    ]


def test_a_non_finite_weight_gets_nan_and_the_others_their_fit():
    g = torch.Generator().manual_seed(1)
    bad = torch.randn(20, 10, generator=g)
    bad[3, 4] = float("nan")
    good = torch.randn(20, 10, generator=g)
    ctx = LookContext(
        step=0, model=torch.nn.Linear(1, 1), weights={"a.weight": bad, "b.weight": good}
    )
    out = esd_alpha_metric(ctx).scalars
    assert math.isnan(out["dynmon/esd_alpha/a.weight"])
    assert out["dynmon/esd_alpha/b.weight"] == pytest.approx(
        powerlaw_fit(esd_eigenvalues(good)).alpha
    )
    assert out["dynmon/esd_alpha"] == pytest.approx(out["dynmon/esd_alpha/b.weight"])


def test_monitor_runs_esd_alpha_and_training_stays_bitwise(tmp_path):
    """Attaching esd_alpha changes nothing of the run: weights, .grad, modes and the global RNG
    after each look are as they were, and the trained weights equal an unwatched run's."""
    from side_effects import train_tiny_lm

    import dynmon

    run = tmp_path / "run"
    plain = train_tiny_lm(run)
    watched = train_tiny_lm(
        run, {"schedule": dynmon.every(2), "metrics": ["esd_alpha"]}, check_untouched=True
    )
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    rows = [r for r in dynmon.load_run(tmp_path / "run").metrics if "dynmon/esd_alpha" in r]
    assert len(rows) == 2 and all(np.isfinite(r["dynmon/esd_alpha"]) for r in rows)
