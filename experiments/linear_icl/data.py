"""In-context linear regression data and the statistics the training loop needs, computed once.

A sequence: w ~ N(0, I_D); context x_j ~ N(0, Λ), y_j = wᵀx_j (j = 1..N); query x_q ~ N(0, Λ),
target y_q = wᵀx_q. Tokens z_j = (x_j, y_j), z_q = (x_q, 0).

Every model here predicts ``ŷ = Σ_{a,b,c} C_ab x_q,c G_abc`` with the context statistic
``C = Σ_j z_j z_jᵀ`` ([D+1, D+1], no 1/N) and an effective weight tensor ``G`` ([D+1, D+1, D],
model.py). C is symmetric, so ``ŷ = φ · g`` with features ``φ = (C_ab x_q,c)_{a≤b, c}`` and ``g``
the symmetrised G (``fold``). The full-batch training loss on P fixed sequences is then the
quadratic form ``gᵀΦg − 2bᵀg + mean y_q²`` with ``Φ = mean φφᵀ``: one pass over the data at the
start, and every step after costs O(F²), F = D(D+1)(D+2)/2, whatever P is.

The test loss on fresh data integrates x_q out exactly: with ``u = Σ_{a≤b} C_ab g_ab,:`` the
error on a sequence is ``(u − w)ᵀ Λ (u − w)``, so it needs only ``E[C_p C_p']``, ``E[C_p w]`` and
``E[wᵀΛw]`` over fresh contexts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import spectrum_values

CHUNK = 8192  # sequences per pass when building statistics


def parse_spectrum(text: str, D: int) -> Tensor:
    """Eigenvalues of Λ, descending, as a float64 tensor (see ``config.spectrum_values``)."""
    return torch.tensor(spectrum_values(text, D), dtype=torch.float64)


def random_orthogonal(D: int, generator: torch.Generator) -> Tensor:
    """A Haar-random orthogonal matrix (QR of a Gaussian with the sign fix)."""
    A = torch.randn(D, D, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(A)
    return Q * torch.sign(torch.diagonal(R)).unsqueeze(0)


@dataclass(frozen=True)
class Task:
    """The input distribution: Λ = O diag(lam) Oᵀ and its square root ``L = O diag(√lam)``."""

    lam: Tensor  # [D] eigenvalues, descending
    O: Tensor  # [D, D] eigenvectors (columns)
    N: int

    @property
    def D(self) -> int:
        return self.lam.shape[0]

    @property
    def cov(self) -> Tensor:
        return (self.O * self.lam) @ self.O.T  # [D, D]

    def sample(
        self, n: int, g: torch.Generator, antithetic: bool = True
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``C [n, D+1, D+1]``, ``x_q [n, D]``, ``y_q [n]``, ``w [n, D]``.

        ``antithetic``: the second half repeats the first with w → −w (y → −y), so every moment
        odd in w vanishes exactly on the sample, as in the population: the gradient flow then
        keeps the invariant manifolds of the theory (e.g. the linear transformer's W^P[D, :D] = 0,
        W^Q[D, :] = 0) instead of leaving them through O(1/√P) sampling terms. n must be even.
        """
        if antithetic:
            if n % 2:
                raise ValueError(f"an antithetic sample needs an even size, got {n}")
            C, x_q, y_q, w = self.sample(n // 2, g, antithetic=False)
            sign = torch.ones(self.D + 1, dtype=C.dtype)
            sign[-1] = -1.0  # (x, y) -> (x, -y) flips the x-y block of C
            C_neg = C * sign[:, None] * sign[None, :]
            return (
                torch.cat([C, C_neg]),
                torch.cat([x_q, x_q]),
                torch.cat([y_q, -y_q]),
                torch.cat([w, -w]),
            )
        D, N = self.D, self.N
        L = self.O * self.lam.sqrt()  # [D, D], x = L ξ
        w = torch.randn(n, D, generator=g, dtype=torch.float64)
        X = torch.randn(n, N + 1, D, generator=g, dtype=torch.float64) @ L.T  # [n, N+1, D]
        y = torch.einsum("snd,sd->sn", X, w)  # [n, N+1]
        Z = torch.cat([X[:, :N], y[:, :N, None]], dim=2)  # [n, N, D+1] context tokens
        C = Z.mT @ Z  # [n, D+1, D+1]
        return C, X[:, N], y[:, N], w


def make_task(spectrum: str, D: int, N: int, rotate: bool, seed: int) -> Task:
    """The task of a config (the rotation drawn from its own generator)."""
    lam = parse_spectrum(spectrum, D)
    g = torch.Generator().manual_seed(seed + 10_007)
    O = random_orthogonal(D, g) if rotate else torch.eye(D, dtype=torch.float64)
    return Task(lam=lam, O=O, N=N)


def pair_index(D: int) -> tuple[Tensor, Tensor]:
    """Rows and columns of the upper triangle (a ≤ b) of a [D+1, D+1] matrix."""
    return torch.triu_indices(D + 1, D + 1)


def fold(G: Tensor) -> Tensor:
    """Symmetrise G [D+1, D+1, D] over (a, b) into g [n_pairs, D]: φ·g = Σ C_ab x_c G_abc."""
    a, b = pair_index(G.shape[-1])
    Gs = G + G.transpose(0, 1)  # [D+1, D+1, D]
    scale = torch.where(a == b, 0.5, 1.0).to(G.dtype)  # the diagonal was doubled
    return Gs[a, b] * scale[:, None]  # [n_pairs, D]


def features(C: Tensor, x_q: Tensor) -> Tensor:
    """φ [n, n_pairs·D]: the upper triangle of each C times x_q."""
    a, b = pair_index(x_q.shape[-1])
    return (C[:, a, b, None] * x_q[:, None, :]).flatten(1)  # [n, n_pairs·D]


@dataclass(frozen=True)
class TrainStats:
    """Full-batch training loss as a quadratic form: ``gᵀ Phi g − 2 bᵀ g + yy``."""

    Phi: Tensor  # [F, F]
    b: Tensor  # [F]
    yy: Tensor  # []
    P: int

    def loss(self, g: Tensor) -> Tensor:
        f = g.reshape(-1)
        return f @ (self.Phi @ f) - 2 * (self.b @ f) + self.yy


def train_stats(task: Task, P: int, g: torch.Generator) -> TrainStats:
    """Φ, b, mean y_q² over P fixed sequences (antithetic pairs), built in chunks (one pass)."""
    P += P % 2
    F = len(pair_index(task.D)[0]) * task.D
    Phi = torch.zeros(F, F, dtype=torch.float64)
    b = torch.zeros(F, dtype=torch.float64)
    yy = torch.zeros((), dtype=torch.float64)
    for start in range(0, P, CHUNK):
        C, x_q, y_q, _ = task.sample(min(CHUNK, P - start), g)
        phi = features(C, x_q)  # [n, F]
        Phi += phi.T @ phi
        b += phi.T @ y_q
        yy += y_q @ y_q
    return TrainStats(Phi / P, b / P, yy / P, P)


def batch_loss(g_folded: Tensor, C: Tensor, x_q: Tensor, y_q: Tensor) -> Tensor:
    """Mean squared error on a batch of sequences, ŷ = φ·g (SGD on fresh batches)."""
    pred = features(C, x_q) @ g_folded.reshape(-1)  # [n]
    return (pred - y_q).square().mean()


@dataclass(frozen=True)
class TestStats:
    """Fresh-data loss with x_q integrated out: ``E[(u − w)ᵀ Λ (u − w)]``, ``u = Σ_p C_p g_p``."""

    CC: Tensor  # [n_pairs, n_pairs]  E[C_p C_p']
    Cw: Tensor  # [n_pairs, D]        E[C_p w]
    wLw: Tensor  # []                  E[wᵀ Λ w]
    cov: Tensor  # [D, D]              Λ

    def loss(self, g: Tensor) -> Tensor:
        quad = torch.einsum("pc,pq,qd,cd->", g, self.CC, g, self.cov)
        lin = torch.einsum("pc,pd,cd->", g, self.Cw, self.cov)
        return quad - 2 * lin + self.wLw


def test_stats(task: Task, P: int, g: torch.Generator) -> TestStats:
    """The moments behind the fresh-data loss, from P fresh sequences (antithetic pairs)."""
    P += P % 2
    a, b = pair_index(task.D)
    n_pairs = len(a)
    CC = torch.zeros(n_pairs, n_pairs, dtype=torch.float64)
    Cw = torch.zeros(n_pairs, task.D, dtype=torch.float64)
    wLw = torch.zeros((), dtype=torch.float64)
    cov = task.cov
    for start in range(0, P, CHUNK):
        C, _, _, w = task.sample(min(CHUNK, P - start), g)
        c = C[:, a, b]  # [n, n_pairs]
        CC += c.T @ c
        Cw += c.T @ w
        wLw += torch.einsum("sc,cd,sd->", w, cov, w)
    return TestStats(CC / P, Cw / P, wLw / P, cov)
