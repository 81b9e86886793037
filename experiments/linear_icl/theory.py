"""Closed-form and reduced-ODE theory of linear attention on in-context regression.

Notation: eigenvalues λ_1 ≥ … ≥ λ_D of Λ, T = tr Λ, β = (1/N) Σ_j y_j x_j. A model whose task
part is ``ŷ = βᵀ Γ x_q`` has population loss (mean squared error, no ½, as the code trains)

    L(Γ) = tr(Γ Λ Γᵀ B) − 2 tr(Λ Γᵀ Λ) + T,   B = E[ββᵀ] = (1 + 1/N) Λ² + (T/N) Λ,

(Gaussian fourth moments), minimised by Γ* = B⁻¹Λ. In the eigenbasis a mode α with
Γ_α = a has ``L_α = λ(λ s∞ a² − 2λ a + 1)``, ``s∞ = ((N+1)λ + T)/N``, so a∞ = 1/s∞: this is
the a^∞ of docs/packs.md#exact-linear-transformer with no cross-mode term (derived here; checked
by simulation in the tests).

Time maps (derived for the code's conventions: attention sums without 1/N, mean loss, no ½):

- ATTN_M, Λ = λI: Γ = N Σ_h v_h,y W_h^xx; along Γ = σI the two-layer dynamics reduce to
  ``dσ̃/d(t/τ) = 2√D σ̃ (1 − c σ̃)``, σ̃ = λσ, c = 1 + (1+D)/N, with
  ``t/τ = 2ηNλ² · step`` (growth 4ηN√Dλ² per step). For discrete GD the linear phase grows by
  ``(1 + 2ηNλ²√D)`` per step, so we use ``t/τ = step · ln(1 + 2ηNλ²√D)/√D``.
  The initial σ̃₀ is the growing mode's share of the initialisation (``attn_m_sigma0``).
- ATTN_S plateau ODE: a head aligned with mode m+1 with balanced factors u (v_y = k = q = u)
  has ``du/dstep = 2ηNλ²u²(1 − N s∞ u³)``; with v = N^{1/3}u this is docs/packs.md#linear-icl's
  ``τ v̇ = λ²v² − λ³(1 + (1 + T/λ)/N) v⁵`` at ``t/τ = 2ηN^{2/3} · step``.
- Linear transformer: Γ = p Q (p = W^P[D, D], Q = W^Q[:D, :D]) follows gradient flow on L(Γ):
  ``dp = −η⟨∂L/∂Γ, Q⟩``, ``dQ = −η p ∂L/∂Γ``, ``∂L/∂Γ = 2(BΓΛ − Λ²)`` (``lt_trajectory``,
  integrated with scipy). One p is shared by all modes, so the per-mode logistic ``a_α(t)`` of
  docs/packs.md#exact-linear-transformer (``lt_mode_closed_form``) is exact when each mode has
  its own balanced pair (D = 1 here), with ``τ_α = 1/(2η s_α²)`` steps (the paper's (ηP s²)⁻¹
  is for a summed, ½ loss).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor


def s_inf(lam: Tensor, N: int) -> Tensor:
    """``s∞_α = ((N+1) λ_α + tr Λ) / N``: a∞_α = 1/s∞_α."""
    return ((N + 1) * lam + lam.sum()) / N


def plateau_losses(lam: Tensor, N: int) -> Tensor:
    """``L(M_m)`` for m = 0..D: the loss with the top m modes learned (docs/packs.md#linear-icl)."""
    lam = torch.sort(lam, descending=True).values
    gain = lam / (1 + (1 + lam.sum() / lam) / N)  # [D]
    return lam.sum() - torch.cat([gain.new_zeros(1), gain.cumsum(0)])


def second_moment(cov: Tensor, N: int) -> Tensor:
    """``B = E[ββᵀ] = (1 + 1/N) Λ² + (tr Λ / N) Λ``."""
    return (1 + 1 / N) * cov @ cov + cov.trace() / N * cov


def optimal_gamma(cov: Tensor, N: int) -> Tensor:
    """The fixed point ``Γ* = B⁻¹Λ`` of every model (the Bayes-optimal linear read-out of β)."""
    return torch.linalg.solve(second_moment(cov, N), cov)


def population_loss(Gamma: Tensor, cov: Tensor, N: int) -> Tensor:
    """``L(Γ)`` for ``ŷ = βᵀΓx_q`` (module doc)."""
    B = second_moment(cov, N)
    return (Gamma @ cov @ Gamma.mT @ B).trace() - 2 * (cov @ Gamma.mT @ cov).trace() + cov.trace()


# -- ATTN_M ---------------------------------------------------------------------------------


def attn_m_c(D: int, N: int) -> float:
    """``c = 1 + (1 + D)/N``: σ̃ → 1/c."""
    return 1 + (1 + D) / N


def attn_m_time(steps: np.ndarray, lr: float, N: int, lam: float, D: int) -> np.ndarray:
    """t/τ of each step for ATTN_M with Λ = λI (module doc; discrete-GD corrected)."""
    k = 2 * lr * N * lam**2 * math.sqrt(D)
    return np.asarray(steps, dtype=float) * math.log1p(k) / math.sqrt(D)


def attn_m_sigma(t_over_tau: np.ndarray, D: int, N: int, sigma0: float) -> np.ndarray:
    """``σ̃(t) = e^{2√D t/τ} / (c (e^{2√D t/τ} − 1) + 1/σ̃₀)``: the σ(t) of
    docs/packs.md#linear-icl with ``√D / w_init² = 1/σ̃₀``."""
    e = np.exp(2 * math.sqrt(D) * np.asarray(t_over_tau, dtype=float))
    return e / (attn_m_c(D, N) * (e - 1) + 1 / sigma0)


def attn_m_sigma0(V: Tensor, W: Tensor, N: int, lam: float) -> float:
    """σ̃₀ of the growing mode: in the linear phase v_h,y and m_h = tr(W_h^xx)/√D grow as
    ``(v_h + m_h)/2 · e^{kt}``, so σ̃ ≈ λ (N/√D) Σ_h ((v_h + m_h)/2)² e^{2kt}."""
    D = W.shape[-1] - 1
    v = V[:, D]
    m = torch.diagonal(W[:, :D, :D], dim1=-2, dim2=-1).sum(-1) / math.sqrt(D)
    return float(lam * N / math.sqrt(D) * ((v + m) / 2).square().sum())


def attn_m_loss(sigma: np.ndarray, D: int, N: int, trace: float) -> np.ndarray:
    """Population loss along Γ = σI (Λ = λI): ``tr Λ (c σ̃² − 2σ̃ + 1)``."""
    return trace * (attn_m_c(D, N) * np.square(sigma) - 2 * np.asarray(sigma) + 1)


# -- ATTN_S ---------------------------------------------------------------------------------


def plateau_ode(v0: float, lam: float, trace: float, N: int, t_max: float, num: int = 200):
    """Integrate ``τ v̇ = λ² v² − λ³ (1 + (1 + tr Λ/λ)/N) v⁵`` from v0 over [0, t_max] (scipy).

    Returns ``(t, v)``; v → (λ K)^{-1/3} = s∞^{-1/3}. The plateau lasts about ``1/(λ² v0)``."""
    from scipy.integrate import solve_ivp

    K = 1 + (1 + trace / lam) / N
    sol = solve_ivp(
        lambda t, v: lam**2 * v**2 - lam**3 * K * v**5,
        (0.0, t_max),
        [v0],
        t_eval=np.linspace(0.0, t_max, num),
        method="LSODA",
        rtol=1e-10,
        atol=1e-14,
    )
    return sol.t, sol.y[0]


def attn_s_time(steps: np.ndarray, lr: float, N: int) -> np.ndarray:
    """t/τ of each step for the plateau ODE (module doc)."""
    return 2 * lr * N ** (2 / 3) * np.asarray(steps, dtype=float)


# -- the linear transformer -----------------------------------------------------------------


def lt_trajectory(p0: float, Q0: Tensor, cov: Tensor, N: int, lr: float, steps: np.ndarray):
    """Gradient flow of Γ = p Q on the population loss, at the given steps (scipy LSODA).

    Returns ``(p [T], Q [T, D, D], loss [T])``."""
    from scipy.integrate import solve_ivp

    cov_ = cov.numpy()
    B = second_moment(cov, N).numpy()
    D = cov_.shape[0]

    def rhs(_t: float, y: np.ndarray) -> np.ndarray:
        p, Q = y[0], y[1:].reshape(D, D)
        grad = 2 * (B @ (p * Q) @ cov_ - cov_ @ cov_)  # ∂L/∂Γ
        return np.concatenate([[-lr * np.sum(grad * Q)], (-lr * p * grad).ravel()])

    steps = np.asarray(steps, dtype=float)
    y0 = np.concatenate([[p0], Q0.numpy().ravel()])
    sol = solve_ivp(rhs, (0.0, steps[-1]), y0, t_eval=steps, method="LSODA", rtol=1e-9, atol=1e-13)
    p, Q = sol.y[0], sol.y[1:].T.reshape(-1, D, D)
    Gam = torch.from_numpy(p[:, None, None] * Q)
    loss = np.array([float(population_loss(G, cov, N)) for G in Gam])
    return p, Q, loss


def lt_mode_closed_form(t_over_tau: np.ndarray, a0: float, s: float, trace: float, N: int):
    """``a(t) = a∞a⁰ / (a⁰ + (a∞ − a⁰) e^{−2t/τ})``, a∞ = N/((N+1)s + tr Λ)
    (docs/packs.md#exact-linear-transformer)."""
    a_inf = N / ((N + 1) * s + trace)
    return a_inf * a0 / (a0 + (a_inf - a0) * np.exp(-2 * np.asarray(t_over_tau, dtype=float)))
