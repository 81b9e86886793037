"""The three models, each reduced to one effective tensor G [D+1, D+1, D] (see data.py):
``ŷ = Σ_h v_hᵀ C W_h z_q = Σ_abc C_ab x_q,c G_abc``.

- ``attn_m``  (ATTN_M, merged key-query): ``V [H]``, ``W [H, D, D]``, all ~ N(0, init²).
- ``attn_s``  (ATTN_S, separate rank-R K, Q): ``W_h = K_h Q_hᵀ``, ``K, Q [H, D, R]`` ~
  N(0, init²/(R(D+1))), ``V [H]`` ~ N(0, init²) (the initialisation of the paper's figures).
- Both in the paper's form (Zhang et al. eq. for ATTN_M/ATTN_S): the value reads the y entry of
  the context and W_h acts on x, ``ŷ = Σ_h v_h (Σ_j y_j x_j)ᵀ W_h x_q``. With ``full_tokens`` the
  value and W_h act on whole tokens (``V [H, D+1]``, ``W, K, Q`` on D+1): more routes to the same
  Γ, and they break the rank-R plateau pattern (measured: R=2 then drops one mode at a time).
- ``linear_transformer`` (Mainali & Teixeira): ``f(Z) = Z + W^P (Z_c Z_cᵀ/N) W^Q Z`` over the N
  context tokens Z_c; ŷ is the y entry at the query, so ``G_abc = W^P[D, a] W^Q[b, c] / N``.
  Only the last row of W^P and the first D columns of W^Q receive gradients. Start (the reduced
  initialisation of Zhang, Frei & Bartlett, used by Mainali & Teixeira): all zero except
  p = W^P[D, D] = init and Q = W^Q[:D, :D] ~ N(0, init²/D²), so ‖p‖² ≈ ‖Q‖_F² (near-balanced).

The learned key-query map: writing β = (1/N) Σ_j y_j x_j, the part of ŷ that solves the task is
``βᵀ Γ x_q`` with ``Γ = N (G[D, :D, :] + G[:D, D, :])`` [D, D] (value-y × KQ x-block, plus
value-x × KQ y-row). ``kq_heads`` gives each head's share Γ_h (they sum to Γ).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .config import LinearICLConfig
from .data import features, fold


class LinearICL(nn.Module):
    """One of the three models; parameters in float64."""

    def __init__(self, cfg: LinearICLConfig) -> None:
        super().__init__()
        self.kind, self.D, self.N = cfg.model, cfg.D, cfg.N
        g = torch.Generator().manual_seed(cfg.seed)
        D1, s = cfg.D + 1, cfg.init

        def normal(*shape: int, std: float) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape, generator=g, dtype=torch.float64) * std)

        self.full_tokens = cfg.full_tokens
        Dv = D1 if cfg.full_tokens else cfg.D  # the KQ maps act on whole tokens or on x only
        if self.kind == "attn_m":
            self.V = normal(cfg.H, D1, std=s) if cfg.full_tokens else normal(cfg.H, std=s)
            self.W = normal(cfg.H, Dv, Dv, std=s)
        elif self.kind == "attn_s":
            self.V = normal(cfg.H, D1, std=s) if cfg.full_tokens else normal(cfg.H, std=s)
            kq_std = s / (cfg.R * D1) ** 0.5
            self.K = normal(cfg.H, Dv, cfg.R, std=kq_std)
            self.Q = normal(cfg.H, Dv, cfg.R, std=kq_std)
        else:  # the reduced start: only p = W^P[D, D] and Q = W^Q[:D, :D] nonzero
            self.W_P = nn.Parameter(torch.zeros(D1, D1, dtype=torch.float64))
            self.W_Q = nn.Parameter(torch.zeros(D1, D1, dtype=torch.float64))
            with torch.no_grad():
                self.W_P[-1, -1] = s
                self.W_Q[: cfg.D, : cfg.D] = normal(cfg.D, cfg.D, std=s / cfg.D)

    def head_kq(self) -> Tensor:
        """Each head's key-query matrix ``W_h`` on whole tokens [H, D+1, D+1]."""
        if self.kind == "linear_transformer":
            return self.W_Q[None]
        W = self.W if self.kind == "attn_m" else self.K @ self.Q.mT  # [H, Dv, Dv]
        if self.full_tokens:
            return W
        return nn.functional.pad(W, (0, 1, 0, 1))  # [H, D+1, D+1], zero y row and column

    def head_values(self) -> Tensor:
        """Each head's value read-out ``v_h`` [H, D+1] (scaled by 1/N for the transformer)."""
        if self.kind == "linear_transformer":
            return self.W_P[-1][None] / self.N
        if self.full_tokens:
            return self.V
        return nn.functional.pad(self.V[:, None], (self.D, 0))  # [H, D+1], y entry only

    def head_G(self) -> Tensor:
        """Per-head effective tensors ``v_h[a] W_h[b, c]`` [H, D+1, D+1, D]."""
        return torch.einsum("ha,hbc->habc", self.head_values(), self.head_kq()[..., : self.D])

    def G(self) -> Tensor:
        """The effective tensor [D+1, D+1, D] of the whole model."""
        return torch.einsum("ha,hbc->abc", self.head_values(), self.head_kq()[..., : self.D])

    def folded(self) -> Tensor:
        """G symmetrised over the context statistic's (a, b): ŷ = features · folded."""
        return fold(self.G())

    def kq_heads(self) -> Tensor:
        """Each head's learned map Γ_h [H, D, D] (module doc); they sum to ``kq_sum``."""
        G, D = self.head_G(), self.D
        return self.N * (G[:, D, :D, :] + G[:, :D, D, :])

    def kq_sum(self) -> Tensor:
        """Γ [D, D]: ŷ ⊃ βᵀ Γ x_q, with β = (1/N) Σ_j y_j x_j."""
        G, D = self.G(), self.D
        return self.N * (G[D, :D, :] + G[:D, D, :])

    def forward(self, C: Tensor, x_q: Tensor) -> Tensor:
        """ŷ [n] for context statistics C [n, D+1, D+1] and queries x_q [n, D]."""
        return features(C, x_q) @ self.folded().reshape(-1)

    def direct(self, C: Tensor, x_q: Tensor) -> Tensor:
        """ŷ from the attention formula itself, ``Σ_h v_hᵀ C W_h z_q`` (a check on ``forward``)."""
        z_q = torch.cat([x_q, torch.zeros_like(x_q[:, :1])], dim=1)  # [n, D+1]
        Wz = torch.einsum("hbc,nc->nhb", self.head_kq(), z_q)  # [n, H, D+1]
        CWz = torch.einsum("nab,nhb->nha", C, Wz)  # [n, H, D+1]
        return torch.einsum("ha,nha->n", self.head_values(), CWz)

    def conserved(self) -> Tensor:
        """‖W^P[D]‖² − ‖W^Q[:, :D]‖_F² (linear transformer): exactly conserved by gradient flow,
        since ŷ is bilinear in (W^P[D], W^Q[:, :D]). NaN for the attention models."""
        if self.kind != "linear_transformer":
            return torch.tensor(float("nan"), dtype=torch.float64)
        with torch.no_grad():
            return self.W_P[-1].square().sum() - self.W_Q[:, : self.D].square().sum()
