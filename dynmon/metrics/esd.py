"""Heavy-tailed self-regularisation: the power-law exponent of each weight's eigenvalue density.

For a weight ``W`` the empirical spectral density (ESD) is that of the eigenvalues ``λ = σ²`` of
``WᵀW`` (``σ`` the singular values of ``W``, unnormalised, as WeightWatcher takes them). Its
tail is fitted by a continuous power law ``p(λ) ∝ λ^(−α)`` for ``λ ≥ λ_min`` the way
WeightWatcher's default ("ww") fitter does, after Clauset, Shalizi & Newman (2009):

- eigenvalues ``≤ 1e-5`` are dropped; every other one but the largest is a candidate ``λ_min``;
- for each candidate, the maximum-likelihood ``α = 1 + n / Σ_{λ ≥ λ_min} log(λ/λ_min)`` over the
  ``n`` tail eigenvalues, and the Kolmogorov–Smirnov distance
  ``D = max |1 − (λ/λ_min)^(1−α) − F_emp(λ)|`` with ``F_emp = 0, 1/n, …, (n−1)/n``;
- ``λ_min`` is the candidate of least ``D``. With fewer than 20 eigenvalues WeightWatcher uses
  the bias-corrected ``α = 1 + (n−1)/Σ log(λ/λ_min)`` and tails of at least 8 (its fitter then
  still keeps the candidate of least ``D``); so does this module.

WeightWatcher reads ``α`` as: 2–6 typical of a well-trained layer, ``α < 2`` over-trained (very
heavy tail), ``α > 6`` under-trained (close to random). ``num_spikes`` is the size of the fitted
tail (WeightWatcher's ``num_pl_spikes``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import Tensor

from dynmon.keys import key
from dynmon.metrics import spectral
from dynmon.metrics.spec import LookContext, MetricSpec, Output

__all__ = ["PowerLawFit", "powerlaw_fit", "esd_eigenvalues", "esd_alpha_metric", "ESD_ALPHA"]

F64 = torch.float64
EVALS_THRESH = 1e-5  # WeightWatcher's floor below which eigenvalues are treated as zero
SMALL_N = 20  # below this many eigenvalues, the small-sample variant
SMALL_N_MIN_TAIL = 8
OVER_TRAINED, UNDER_TRAINED = 2.0, 6.0  # WeightWatcher's reading of alpha


@dataclass(frozen=True)
class PowerLawFit:
    """A power-law fit of a tail: exponent ``alpha``, its start ``xmin``, KS distance ``ks``,
    the tail size ``num_tail`` and the number of eigenvalues fitted ``num_evals``.
    ``alpha`` is NaN when there was nothing to fit (fewer than 2 positive eigenvalues)."""

    alpha: float
    xmin: float
    ks: float
    num_tail: int
    num_evals: int


def esd_eigenvalues(W: Tensor) -> Tensor:
    """Eigenvalues ``σ²`` of ``WᵀW`` for a ``[m, n]`` weight, float64, ascending."""
    if W.dim() != 2:
        raise ValueError(f"esd_eigenvalues needs a 2-D weight, got shape {tuple(W.shape)}")
    s = spectral.svdvals(W)  # descending, NaN for non-finite input
    return s.to(F64).square().flip(0)


def powerlaw_fit(evals: Tensor, *, block: int = 256) -> PowerLawFit:
    """Fit ``p(x) ∝ x^(−α)`` to the tail of positive samples ``evals`` (any order, any shape).

    ``xmin`` minimises the KS distance over all candidates (see the module docstring); all
    candidates are scored at once, ``block`` of them per ``[block, n]`` matrix.
    """
    x = evals.detach().reshape(-1).to(device="cpu", dtype=F64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("powerlaw_fit: the eigenvalues hold NaN/Inf; the weight is not finite")
    x = torch.sort(x[x > EVALS_THRESH]).values  # [N] ascending
    N = x.numel()
    if N < 2:
        return PowerLawFit(math.nan, math.nan, math.nan, 0, N)
    small = N < SMALL_N
    logx = x.log()
    suffix = logx.flip(0).cumsum(0).flip(0)  # [N] Σ_{j >= i} log x_j
    i = torch.arange(N - 1)  # candidate xmin indices (all but the largest)
    n = (N - i).to(F64)  # tail sizes
    s = suffix[:-1] - n * logx[:-1]  # Σ log(x_j / xmin) over each tail
    alpha = 1 + (n - 1 if small else n) / s
    ks = torch.ones(N - 1, dtype=F64)
    for lo in range(0, N - 1, block):
        hi = min(lo + block, N - 1)
        ks[lo:hi] = _ks_block(x, logx, alpha[lo:hi], torch.arange(lo, hi))
    valid = torch.isfinite(alpha) & (alpha > 1)
    ks = torch.where(valid, ks, torch.ones_like(ks))
    if small:  # tails shorter than 8 are not candidates
        ks = torch.where(n >= SMALL_N_MIN_TAIL, ks, torch.ones_like(ks))
    best = int(torch.argmin(ks))  # the first minimum, as numpy's argmin
    return PowerLawFit(
        alpha=float(alpha[best]),
        xmin=float(x[best]),
        ks=float(ks[best]),
        num_tail=int(N - best),
        num_evals=N,
    )


def _ks_block(x: Tensor, logx: Tensor, alpha: Tensor, idx: Tensor) -> Tensor:
    """KS distances of the fits starting at candidate indices ``idx`` (exponents ``alpha``)."""
    N = x.numel()
    j = torch.arange(N)
    tail = j[None, :] >= idx[:, None]  # [b, N] which samples are in each tail
    n = (N - idx).to(F64)[:, None]  # [b, 1]
    log_ratio = (logx[None, :] - logx[idx][:, None]).clamp_min(0)  # [b, N] log(x / xmin)
    model = 1 - torch.exp((1 - alpha[:, None]) * log_ratio)  # [b, N] fitted CDF
    empirical = (j[None, :] - idx[:, None]).to(F64) / n  # [b, N] 0, 1/n, ... in the tail
    gap = torch.where(tail, (model - empirical).abs(), torch.zeros((), dtype=F64))
    return gap.amax(dim=1)


# --------------------------------------------------------------------------------------------
# the monitor metric

_LAYER = re.compile(r"(?:^|\.)(\d+)(?:\.|$)")


def _layer_of(name: str) -> int | None:
    """The first integer path component of a parameter name (``h.3.attn.weight`` -> 3)."""
    m = _LAYER.search(name)
    return int(m.group(1)) if m else None


def esd_alpha_metric(ctx: LookContext) -> Output:
    """Power-law ``α``, KS distance and tail size of every 2-D weight's ESD, layer means and
    counts of over-/under-trained weights (WeightWatcher's reading)."""
    opts = ctx.options
    min_evals = int(opts.get("esd_min_evals", 8))
    pattern = opts.get("esd_weights")
    chosen = re.compile(pattern) if pattern else None
    out = Output()
    by_layer: dict[int, list[float]] = {}
    alphas: list[float] = []
    for name, w in ctx.weights.items():
        if chosen is not None and not chosen.search(name):
            continue
        if min(w.shape) < min_evals:
            continue
        if not bool(torch.isfinite(w).all()):  # sync point; NaN for this weight, not the metric
            fit = PowerLawFit(math.nan, math.nan, math.nan, 0, 0)
        else:
            fit = powerlaw_fit(esd_eigenvalues(w))
        out.scalars[key("esd_alpha", name)] = fit.alpha
        out.scalars[key("esd_ks", name)] = fit.ks
        out.scalars[key("esd_spikes", name)] = float(fit.num_tail)
        if math.isnan(fit.alpha):
            continue
        alphas.append(fit.alpha)
        layer = _layer_of(name)
        if layer is not None:
            by_layer.setdefault(layer, []).append(fit.alpha)
    for layer, values in sorted(by_layer.items()):
        out.scalars[key("esd_alpha", f"L{layer}")] = sum(values) / len(values)
    if alphas:
        out.scalars[key("esd_alpha")] = sum(alphas) / len(alphas)
        out.scalars[key("esd_flags", "over_trained")] = float(sum(a < OVER_TRAINED for a in alphas))
        out.scalars[key("esd_flags", "under_trained")] = float(
            sum(a > UNDER_TRAINED for a in alphas)
        )
    return out


ESD_ALPHA = MetricSpec(
    "esd_alpha",
    esd_alpha_metric,
    needs=frozenset({"weights"}),
    cost="opt-in",
    doc=(
        "power-law exponent of each 2-D weight's eigenvalue density (WeightWatcher's fit:"
        " xmin by least KS distance, MLE alpha): dynmon/esd_alpha/<weight>, its KS distance"
        " dynmon/esd_ks/<weight>, tail size dynmon/esd_spikes/<weight>, layer means"
        " dynmon/esd_alpha/L<i>, overall dynmon/esd_alpha, and counts of weights with alpha < 2"
        " (dynmon/esd_flags/over_trained) and > 6 (dynmon/esd_flags/under_trained); options"
        " esd_min_evals (default 8: smaller weights are skipped), esd_weights (a regex on"
        " weight names)"
    ),
)
