"""Linear-ICL pack, unit level: data statistics against direct sums, models against the attention
formula, theory against the computed values of docs/packs.md#linear-icl, a second method or its
own ODE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from dynmon.experiments.linear_icl import data, theory
from dynmon.experiments.linear_icl.config import PRESETS, Config, parse_ranks
from dynmon.experiments.linear_icl.metric import KQ_SPECTRA
from dynmon.experiments.linear_icl.model import LinearICL

from dynmon.config import apply_overrides
from dynmon.metrics.spec import LookContext

F64 = torch.float64


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# -- theory against the computed values of docs/packs.md#linear-icl ------------------------------


def test_plateau_losses_match_reference_table():
    lam4 = torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=F64)
    ref4 = [1, 0.640580, 0.377372, 0.209805, 0.135995]
    assert theory.plateau_losses(lam4, 31).tolist() == pytest.approx(ref4, abs=1e-6)
    lam8 = torch.arange(8, 0, -1, dtype=F64) / 36
    ref8 = [1, 0.811263, 0.648977, 0.513012, 0.403176, 0.319166, 0.260454, 0.226009, 0.213346]
    assert theory.plateau_losses(lam8, 31).tolist() == pytest.approx(ref8, abs=1e-6)


def test_fixed_point_is_the_minimum_and_gives_the_last_plateau():
    task = data.make_task(".4,.3,.2,.1", 4, 31, rotate=True, seed=3)
    G_star = theory.optimal_gamma(task.cov, 31)
    best = float(theory.population_loss(G_star, task.cov, 31))
    assert best == pytest.approx(float(theory.plateau_losses(task.lam, 31)[-1]), rel=1e-12)
    g = _gen(0)
    for _ in range(5):  # a quadratic with its minimum there: every perturbation costs
        dG = 1e-3 * torch.randn(4, 4, generator=g, dtype=F64)
        assert float(theory.population_loss(G_star + dG, task.cov, 31)) > best
    # in the eigenbasis Γ* is diagonal with a∞ = 1/s∞ (no cross-mode term)
    diag = task.O.T @ G_star @ task.O
    assert torch.allclose(diag, torch.diag(1 / theory.s_inf(task.lam, 31)), atol=1e-12)


def test_population_loss_against_fresh_data_estimate():
    """The closed-form L(Γ) against the data module's moment estimate (x_q integrated)."""
    D, N = 3, 7
    task = data.make_task("linear", D, N, rotate=True, seed=1)
    test = data.test_stats(task, 200_000, _gen(2))
    Gam = torch.randn(D, D, generator=_gen(3), dtype=F64) * 0.3
    G = torch.zeros(D + 1, D + 1, D, dtype=F64)
    G[D, :D, :] = Gam / N  # ŷ = Σ C_yx,b x_c G = N βᵀ (Γ/N) x_q
    est = float(test.loss(data.fold(G)))
    assert est == pytest.approx(float(theory.population_loss(Gam, task.cov, N)), rel=0.01)


def test_attn_m_sigma_solves_its_ode():
    D, N, s0 = 4, 31, 1e-6
    t = np.linspace(0, 8, 4001)
    sig = theory.attn_m_sigma(t, D, N, s0)
    c = theory.attn_m_c(D, N)
    dsig = np.gradient(sig, t)
    rhs = 2 * math.sqrt(D) * sig * (1 - c * sig)
    assert np.max(np.abs(dsig - rhs)) < 1e-3 * np.max(rhs)
    assert sig[0] == pytest.approx(s0) and sig[-1] == pytest.approx(1 / c, rel=1e-6)
    # docs/packs.md#linear-icl's form: σ(t) = e / ((1 + (1+D)/N)(e − 1) + √D / w²), σ(0) = w²/√D
    w2 = s0 * math.sqrt(D)
    e = np.exp(2 * math.sqrt(D) * t)
    assert np.allclose(sig, e / ((1 + (1 + D) / N) * (e - 1) + math.sqrt(D) / w2), rtol=1e-12)


def test_attn_m_time_map_matches_reference_growth_rate():
    """docs/packs.md#linear-icl: early growth 4ηN√Dλ² per step (0.0155 for D=4, λ=¼, N=31,
    η=1e-3)."""
    t = theory.attn_m_time(np.array([0.0, 1.0]), 1e-3, 31, 0.25, 4)
    rate = 2 * math.sqrt(4) * (t[1] - t[0])  # d ln σ / d step in the linear phase
    assert rate == pytest.approx(0.0155, rel=0.01)
    assert rate == pytest.approx(4 * 1e-3 * 31 * 2 * 0.25**2, rel=0.01)


def test_linear_transformer_flow_matches_the_per_mode_closed_form_in_one_dimension():
    """D = 1 with p = q: the gradient flow of Γ = pq is the logistic a(t) of
    docs/packs.md#exact-linear-transformer, with
    τ = 1/(2η s²) steps in the code's conventions (mean loss, no ½)."""
    s, N, lr = 0.7, 31, 0.01
    cov = torch.tensor([[s]], dtype=F64)
    steps = np.linspace(0, 3000, 61)
    p, Q, _ = theory.lt_trajectory(0.05, torch.tensor([[0.05]], dtype=F64), cov, N, lr, steps)
    a = p * Q[:, 0, 0]
    closed = theory.lt_mode_closed_form(steps * 2 * lr * s**2, 0.05**2, s, s, N)
    assert np.allclose(a, closed, rtol=1e-5)
    assert np.allclose(p**2 - Q[:, 0, 0] ** 2, 0.0, atol=1e-9)  # conserved (balanced) along it


def test_plateau_ode_early_blowup_and_fixed_point():
    lam, T, N, v0 = 0.3, 1.0, 31, 1e-3
    t, v = theory.plateau_ode(v0, lam, T, N, t_max=0.5 / (lam**2 * v0), num=50)
    # while v⁵ is negligible: 1/v0 − 1/v = λ² t
    assert np.allclose(1 / v0 - 1 / v, lam**2 * t, rtol=1e-4)
    t, v = theory.plateau_ode(v0, lam, T, N, t_max=50 / (lam**2 * v0))
    K = 1 + (1 + T / lam) / N
    assert v[-1] == pytest.approx((lam * K) ** (-1 / 3), rel=1e-6)


# -- data and models ---------------------------------------------------------------------------


def test_parse_spectrum_rules_lists_and_errors():
    assert data.parse_spectrum("linear", 4).tolist() == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert data.parse_spectrum("flat", 4).tolist() == [0.25] * 4
    assert data.parse_spectrum("[.1,.2,.3,.4]", 4).tolist() == [0.4, 0.3, 0.2, 0.1]
    assert data.parse_spectrum(".4, .3,.2,.1", 4).tolist() == [0.4, 0.3, 0.2, 0.1]
    with pytest.raises(ValueError, match="D=4 positive eigenvalues"):
        data.parse_spectrum(".4,.3", 4)
    with pytest.raises(ValueError, match="rule"):
        data.parse_spectrum("cubic", 4)


def test_overrides_take_lists_and_rules_for_the_spectrum():
    cfg = apply_overrides(PRESETS["staircase-quick"], ["spectrum=[.4,.3,.2,.1]", "R=2"])
    assert data.parse_spectrum(cfg.spectrum, cfg.D).tolist() == [0.4, 0.3, 0.2, 0.1]
    cfg = apply_overrides(cfg, ["spectrum=linear", "model=attn_m", "ranks=1,2"])
    assert cfg.spectrum == "linear" and cfg.model == "attn_m" and parse_ranks(cfg.ranks) == [1, 2]
    with pytest.raises(ValueError, match="model must be one of"):
        apply_overrides(cfg, ["model=mlp"])
    with pytest.raises(ValueError, match="even"):
        Config(P=0, batch=7)


def test_sampled_covariance_and_antithetic_pairs():
    task = data.make_task("linear", 3, 5, rotate=True, seed=0)
    C, x_q, y_q, w = task.sample(40_000, _gen(1))
    emp = x_q.T @ x_q / len(x_q)
    assert torch.allclose(emp, task.cov, atol=0.02)
    assert torch.allclose(y_q, (x_q * w).sum(1))
    # the context statistic's y-row is Σ_j y_j x_j = N β; its odd-in-w moments cancel exactly
    assert torch.allclose(C[:, 3, :3].mean(0), torch.zeros(3, dtype=F64), atol=1e-12)


def test_quadratic_form_equals_the_direct_mean_squared_error():
    task = data.make_task("linear", 3, 7, rotate=True, seed=0)
    stats = data.train_stats(task, 300, _gen(5))
    C, x_q, y_q, _ = task.sample(300, _gen(5))  # the same sequences again
    for kind in ("attn_m", "attn_s", "linear_transformer"):
        model = LinearICL(Config(model=kind, D=3, N=7, H=2, R=2, init=0.4, seed=1))
        direct = (model.direct(C, x_q) - y_q).square().mean()
        loss = stats.loss(model.folded()).detach()
        assert float(loss) == pytest.approx(float(direct.detach()), rel=1e-10)


@pytest.mark.parametrize("full_tokens", [False, True])
@pytest.mark.parametrize("kind", ["attn_m", "attn_s", "linear_transformer"])
def test_models_agree_with_the_attention_formula(kind, full_tokens):
    cfg = Config(model=kind, D=3, N=7, H=3, R=2, init=0.5, full_tokens=full_tokens, seed=2)
    model = LinearICL(cfg)
    task = data.make_task("linear", 3, 7, rotate=True, seed=0)
    C, x_q, _, _ = task.sample(64, _gen(1))
    assert torch.allclose(model(C, x_q), model.direct(C, x_q), atol=1e-12)
    dense = torch.einsum("nab,nc,abc->n", C, x_q, model.G())
    assert torch.allclose(model(C, x_q), dense, atol=1e-12)
    assert torch.allclose(model.kq_heads().sum(0), model.kq_sum(), atol=1e-12)
    # the task part: with β = (1/N) Σ y_j x_j, the β-terms of ŷ are βᵀ Γ x_q
    beta = C[:, 3, :3] / 7
    G = model.G()
    part = torch.einsum("nb,nc,bc->n", C[:, 3, :3], x_q, G[3, :3] + G[:3, 3])
    assert torch.allclose(part, torch.einsum("nb,bc,nc->n", beta, model.kq_sum(), x_q))


def test_conserved_quantity_is_exact_under_gradient_flow_direction():
    """d/dt (‖W^P[D]‖² − ‖W^Q[:, :D]‖²) = −2(⟨p, ∇_p⟩ − ⟨Q, ∇_Q⟩) = 0 on any data (bilinear ŷ)."""
    cfg = Config(model="linear_transformer", D=3, N=7, init=0.5)
    model = LinearICL(cfg)
    with torch.no_grad():
        model.W_P.normal_(generator=_gen(1))
        model.W_Q.normal_(generator=_gen(2))
    task = data.make_task("linear", 3, 7, rotate=True, seed=0)
    stats = data.train_stats(task, 500, _gen(3))
    stats.loss(model.folded()).backward()
    rate = (model.W_P[-1] * model.W_P.grad[-1]).sum() - (model.W_Q * model.W_Q.grad).sum()
    scale = model.W_P.grad.norm() * model.W_P.norm()
    assert abs(float(rate.detach())) < 1e-10 * float(scale.detach())


def test_kq_metric_against_dense_ranks_and_scipy_angles():
    cfg = Config(model="attn_s", D=6, N=7, H=3, R=1, init=1.0, seed=4)
    model = LinearICL(cfg)
    ctx = LookContext(step=0, model=model, options={"rank_tol": 1e-6})
    out = KQ_SPECTRA.compute(ctx)
    Gam = model.kq_sum().detach()
    assert out.scalars["dynmon/numerical_rank/KQ"] == torch.linalg.matrix_rank(Gam) == 3
    for h in range(3):  # rank-1 heads: erank 1
        assert float(out.scalars[f"dynmon/erank/KQ.H{h}"]) == pytest.approx(1.0, abs=1e-9)
    s = torch.linalg.svdvals(Gam)
    p = s / s.sum()
    assert float(out.scalars["dynmon/erank/KQ"]) == pytest.approx(
        math.exp(-float((p[p > 0] * p[p > 0].log()).sum())), rel=1e-9
    )
    # move the model and compare the subspace distance with scipy's principal angles
    U0 = torch.linalg.svd(Gam)[0][:, :3].numpy()
    with torch.no_grad():
        model.K.add_(0.3 * torch.randn(model.K.shape, generator=_gen(9), dtype=F64))
    ctx2 = LookContext(step=1, model=model, options={"rank_tol": 1e-6}, snapshot=out.snapshot)
    out2 = KQ_SPECTRA.compute(ctx2)
    G1 = model.kq_sum().detach()
    U1, _, Vh1 = torch.linalg.svd(G1)
    V0 = torch.linalg.svd(Gam)[2][:3].T.numpy()
    d_left = np.sqrt(np.mean(np.sin(scipy.linalg.subspace_angles(U1[:, :3].numpy(), U0)) ** 2))
    d_right = np.sqrt(np.mean(np.sin(scipy.linalg.subspace_angles(Vh1[:3].T.numpy(), V0)) ** 2))
    got = float(out2.scalars["dynmon/subspace_dist/KQ"])
    assert got == pytest.approx(0.5 * (d_left + d_right), rel=1e-6) and got > 0.01
