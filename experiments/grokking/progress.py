"""Progress measures for grokking (after Nanda et al. 2023): pure functions on tensors.

Definitions (w_k = 2πk/p; K = ⌊(p-1)/2⌋ frequencies, plus the Nyquist one when p is even):

- **Fourier basis** of Z_p, one orthonormal row per component, in this order:
  ``1/√p``, then ``√(2/p) cos(w_k x)``, ``√(2/p) sin(w_k x)`` for k = 1..K, then
  ``cos(πx)/√p`` if p is even. ``F @ F.T = I``.
- **Per-frequency norms**: the norm of a matrix's Fourier coefficients of frequency k (cos and
  sin rows together), for k = 1..K; the constant component is left out (it is the mean over
  numbers, not a frequency). For the embedding, of ``F @ W_E`` ([p, D]); for the neuron-logit
  map ``W_L = W_out @ W_U`` ([d_mlp, p]), of ``W_L @ F.T`` along the output-class axis.
- **Gini coefficient** of non-negative x sorted ascending: ``G = Σᵢ (2i - n - 1) x₍ᵢ₎ / (n Σx)``
  (i from 1): 0 for a uniform vector, (n-1)/n for a one-hot one. High Gini = sparse in frequency.
- **Key frequencies** (from the MLP neurons, as in the paper): each neuron's activation at "="
  over the p × p input grid is expanded in the 2-D Fourier basis ``F ⊗ F``; the share of its
  variance (non-constant energy) in the block {1, cos w_k, sin w_k}² is "explained by k". A
  frequency is key when it explains at least ``min_fve`` of the variance of at least
  ``min_neurons`` of the neurons that have one dominant frequency: in a grokked model each
  neuron is well explained by one frequency and a handful of frequencies cover them all, while at
  initialisation no neuron is (variance spreads over ~K² cross terms).
- **Sum directions**: for a label ``c(a, b)`` (a + b or a - b mod p), the functions
  ``f_j(c(a, b)) / √p`` over the p² grid are orthonormal (each residue appears p times), one per
  Fourier component j. ``C = Gᵀ L`` ([p, p]: component × output class) are the logits' coefficients
  on them.
- **Restricted logits**: the logits projected onto the constant direction (the mean over inputs)
  and the cos/sin(w_k c) directions of the key frequencies: ``G_keep C_keep``. **Restricted
  loss**: their cross-entropy over all p² inputs. It falls when the Fourier circuit alone starts
  to predict the answer.
- **Excluded logits**: the logits minus their key-frequency components (coefficients taken over
  the whole grid), ``L - G_key C_key``. **Excluded loss**: their cross-entropy on the train
  inputs. It rises when the train performance comes to rest on the key frequencies.
  By construction ``restricted + excluded = L + mean`` row by row.
- **Weight norm**: Σ‖θ‖² over the trained parameters.

These Fourier measures describe addition (and, with c = a - b, subtraction). For ``mul`` and
``div`` the natural basis is the Fourier basis of Z_{p-1} indexed by the discrete logarithm;
the pack does not compute the Fourier measures for them (it logs losses, accuracies and the
weight norm only, and says so in ``summary.json``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

FOURIER_OPS = ("add", "sub")


# -- losses, accuracy, weight norm --------------------------------------------------------------
def cross_entropy(logits: Tensor, labels: Tensor, float64: bool = False) -> Tensor:
    """Mean cross-entropy; ``float64`` casts the logits before the log-softmax."""
    if float64:
        logits = logits.to(torch.float64)
    return F.cross_entropy(logits, labels)


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    """Fraction of rows whose arg-max is the label."""
    return (logits.argmax(-1) == labels).float().mean()


def weight_norm_sq(params: Iterable[Tensor]) -> Tensor:
    """Σ‖θ‖² over the given parameters."""
    return sum((p.detach().double() ** 2).sum() for p in params)  # type: ignore[return-value]


# -- Fourier basis and per-frequency norms --------------------------------------------------------
def n_frequencies(p: int) -> int:
    """Number of frequencies k = 1..K (with the Nyquist one for even p)."""
    return p // 2


def fourier_basis(p: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """Orthonormal Fourier basis of Z_p, [p, p]: rows are components (order in module docs)."""
    x = torch.arange(p, dtype=torch.float64)
    rows = [torch.full((p,), 1 / math.sqrt(p), dtype=torch.float64)]
    for k in range(1, (p - 1) // 2 + 1):
        w = 2 * math.pi * k / p
        rows.append(math.sqrt(2 / p) * torch.cos(w * x))
        rows.append(math.sqrt(2 / p) * torch.sin(w * x))
    if p % 2 == 0:
        rows.append(torch.cos(math.pi * x) / math.sqrt(p))
    return torch.stack(rows).to(dtype)  # [p, p]


def frequency_rows(p: int) -> list[list[int]]:
    """Row indices of ``fourier_basis(p)`` belonging to frequency k = 1..K (entry k-1)."""
    rows = [[2 * k - 1, 2 * k] for k in range(1, (p - 1) // 2 + 1)]
    if p % 2 == 0:
        rows.append([p - 1])
    return rows


def frequency_norms(coeffs: Tensor) -> Tensor:
    """Per-frequency norms [K] of Fourier coefficients ``coeffs`` [p, ...] (basis order)."""
    p = coeffs.shape[0]
    flat = coeffs.reshape(p, -1).double()  # [p, rest]
    return torch.stack([flat[idx].norm() for idx in frequency_rows(p)])


def embed_frequency_norms(W_E: Tensor) -> Tensor:
    """Per-frequency norms [K] of the number embeddings ``W_E`` [p, D] (rows = numbers)."""
    p = W_E.shape[0]
    return frequency_norms(fourier_basis(p) @ W_E.double())  # [p, p] @ [p, D] -> [p, D]


def unembed_frequency_norms(W_L: Tensor) -> Tensor:
    """Per-frequency norms [K] of the neuron-logit map ``W_L`` [d_mlp, p] over output classes."""
    p = W_L.shape[1]
    coeffs = fourier_basis(p) @ W_L.double().T  # [p, p] @ [p, d_mlp] -> [p, d_mlp]
    return frequency_norms(coeffs)


def gini(x: Tensor) -> Tensor:
    """Gini coefficient ``Σᵢ (2i - n - 1) x₍ᵢ₎ / (n Σx)`` of a non-negative vector."""
    x = x.flatten().double()
    if bool((x < 0).any()):
        raise ValueError("gini needs non-negative values")
    n = x.numel()
    xs, _ = torch.sort(x)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    total = xs.sum()
    if total == 0:
        return torch.tensor(0.0, dtype=torch.float64)
    return ((2 * i - n - 1) * xs).sum() / (n * total)


# -- key frequencies from the MLP neurons -----------------------------------------------------
def neuron_frequency_fractions(acts: Tensor, p: int) -> Tensor:
    """Share of each neuron's variance explained by each frequency, [N, K].

    ``acts`` [p², N]: activations at "=" over the a-major p × p grid of (a, b). The 2-D Fourier
    coefficients are ``F A F.T`` per neuron; frequency k explains the energy in the block
    {const, cos w_k, sin w_k} × {const, cos w_k, sin w_k} minus the (const, const) entry.
    """
    N = acts.shape[1]
    grid = acts.double().reshape(p, p, N)  # [p², N] -> [a, b, N]
    basis = fourier_basis(p)  # [p, p]
    coeffs = torch.einsum("ia,abn,jb->ijn", basis, grid, basis)  # [p, p, N] (freq a, freq b)
    energy = coeffs**2
    energy[0, 0] = 0.0  # the mean is not variance
    total = energy.sum((0, 1)).clamp_min(1e-30)  # [N]
    fractions = []
    for rows in frequency_rows(p):
        idx = torch.tensor([0, *rows])
        fractions.append(energy[idx][:, idx].sum((0, 1)) / total)  # [N]
    return torch.stack(fractions, dim=1)  # [N, K]


def key_frequencies(
    acts: Tensor, p: int, min_fve: float = 0.5, min_neurons: int | float = 0.02
) -> list[int]:
    """Key frequencies (1-based k) from neuron activations [p², N], sorted.

    A neuron votes for its best frequency when that frequency explains at least ``min_fve`` of
    its variance; a frequency is key with at least ``min_neurons`` votes (a fraction of N when
    below 1, with a floor of 2 neurons).
    """
    fractions = neuron_frequency_fractions(acts, p)  # [N, K]
    best, k = fractions.max(dim=1)  # [N], [N]
    votes = torch.bincount(k[best >= min_fve], minlength=fractions.shape[1])  # [K]
    need = min_neurons if min_neurons >= 1 else max(2, math.ceil(min_neurons * acts.shape[1]))
    return [int(i) + 1 for i in torch.nonzero(votes >= need).flatten()]


# -- restricted and excluded loss -------------------------------------------------------------
def sum_directions(c: Tensor, p: int) -> Tensor:
    """Orthonormal directions ``f_j(c) / √p`` over the grid, [p², p] (columns in basis order).

    ``c`` [p²]: the label of every grid input (each residue exactly p times).
    """
    if c.numel() != p * p or bool((torch.bincount(c, minlength=p) != p).any()):
        raise ValueError("sum directions need the full p × p grid (every residue p times)")
    return fourier_basis(p)[:, c].T / math.sqrt(p)  # [p, p²] -> [p², p]


def sum_coefficients(logits: Tensor, c: Tensor, p: int) -> Tensor:
    """Coefficients of the logits on the sum directions, ``Gᵀ L`` [p, p] (component × class).

    Small (p² numbers) and enough to recompute the restricted loss later for any key set.
    """
    return sum_directions(c, p).T @ logits.double()  # [p, p²] @ [p², p] -> [p, p]


def _component_rows(p: int, freqs: Sequence[int]) -> list[int]:
    rows = frequency_rows(p)
    out = []
    for k in freqs:
        if not 1 <= k <= len(rows):
            raise ValueError(f"frequency {k} is out of range 1..{len(rows)} for p={p}")
        out.extend(rows[k - 1])
    return out


def restricted_logits_from_coefficients(
    coeffs: Tensor, c: Tensor, p: int, freqs: Sequence[int]
) -> Tensor:
    """``G_keep C_keep`` [p², p]: the constant and the key-frequency components only."""
    keep = [0, *_component_rows(p, freqs)]
    G = sum_directions(c, p)[:, keep]  # [p², |keep|]
    return G @ coeffs[keep]  # [p², |keep|] @ [|keep|, p] -> [p², p]


def restricted_logits(logits: Tensor, c: Tensor, p: int, freqs: Sequence[int]) -> Tensor:
    """The logits [p², p] projected onto the mean and the key-frequency sum directions."""
    return restricted_logits_from_coefficients(sum_coefficients(logits, c, p), c, p, freqs)


def excluded_logits(logits: Tensor, c: Tensor, p: int, freqs: Sequence[int]) -> Tensor:
    """The logits [p², p] with their key-frequency components removed (mean kept)."""
    rows = _component_rows(p, freqs)
    G = sum_directions(c, p)[:, rows]  # [p², 2|freqs|]
    L = logits.double()
    return L - G @ (G.T @ L)  # [p², p]


def restricted_loss(
    logits: Tensor, labels: Tensor, p: int, freqs: Sequence[int], c: Tensor | None = None
) -> Tensor:
    """Cross-entropy of the restricted logits over all p² inputs (``c`` defaults to labels)."""
    c = labels if c is None else c
    return F.cross_entropy(restricted_logits(logits, c, p, freqs), labels)


def excluded_loss(
    logits: Tensor,
    labels: Tensor,
    p: int,
    freqs: Sequence[int],
    train_idx: Tensor,
    c: Tensor | None = None,
) -> Tensor:
    """Cross-entropy of the excluded logits on the train rows ``train_idx``."""
    c = labels if c is None else c
    return F.cross_entropy(excluded_logits(logits, c, p, freqs)[train_idx], labels[train_idx])
