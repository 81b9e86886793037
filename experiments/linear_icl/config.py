"""The linear-ICL pack's one flat, frozen config and its presets.

Models (docs/packs.md#linear-icl, docs/packs.md#exact-linear-transformer): ``attn_m`` (merged
key-query ``W_h``, H heads), ``attn_s`` (separate K, Q of rank R per head), ``linear_transformer``
(Mainali & Teixeira's single layer ``f(Z) = Z + W^P (Z Zᵀ/N) W^Q Z``). Data: x ~ N(0, Λ)
(``spectrum``, optionally ``rotate``d), w ~ N(0, I_D), N context pairs; full-batch GD on P fixed
sequences (``P > 0``) or SGD on fresh batches of ``batch`` sequences (``P = 0``). Loss: mean
squared error on y_q, no ½ (as the authors' ``nn.MSELoss``); attention sums run over the context
without 1/N (as the authors' code).

``spectrum`` is text so that ``--set`` can take either a rule or a list: ``linear`` (λ_k ∝ k,
trace 1: the authors' ``k/Σk``), ``flat`` (λ = 1/D: whitened up to scale) or eigenvalues
``[.4,.3,.2,.1]`` / ``.4,.3,.2,.1`` (used as given).

Presets (the full ones are the published configurations; measured here on 2 loaded CPU cores,
wall time of ``dynmon run`` including set-up and report; ``-quick`` ones all < 2 min):

- ``merged``: ATTN_M, D=4, N=31, H=8, lr 1e-3, init 1e-6, 6001 steps, P=100k, flat spectrum (so
  the closed-form σ(t) applies exactly; the authors used ``linear``). One drop, half-way at step
  1601 (theory 1604); fresh loss 0.13895 vs 0.13889. 11 s. ``merged-quick``: 2500 steps, 8 s.
- ``staircase``: ATTN_S rank 1, D=4, N=31, H=5, Λ = .4/.3/.2/.1, lr .02, init .01, 10001 steps,
  P=80k: four drops onto L(M_1..4) (all within 1%; the last near step 9500), 17 s.
  ``staircase-quick``: lr .04 (plateaus halve in steps), 6001 steps, P=20k, 17 s.
- ``rank-sweep``: ATTN_S, D=8, N=31, H=9, λ_k = k/36, lr .02, init 5e-3, P=80k, one run per R
  in ``ranks`` (1,2,4,8), 72,001 steps: with the published 20,001 steps R=1 shows 6 of its 8
  plateaus (its last ones, on the smallest eigenvalues, are the longest; R=2/4/8 show 4/2/1).
  ``rank-sweep-quick``: P=20k, lr .04, 36,001 steps: distinct plateaus 8/4/2/1, levels within
  1% of L(M_m), 98 s on 2 loaded cores.
- ``linear-transformer``: the exact linear transformer, D=4, N=31, Λ = .4/.3/.2/.1, lr 2e-3,
  100001 steps: Γ within 0.9% of Γ* = B⁻¹Λ, ‖p‖² − ‖W^Q‖² drifts 2.3e-4 of ‖p‖² + ‖W^Q‖², 53 s.
  ``linear-transformer-quick``: lr 5e-3, 40001 steps (drift 5.6e-4), 29 s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

MODELS = ("attn_m", "attn_s", "linear_transformer")


@dataclass(frozen=True)
class LinearICLConfig:
    # model
    model: str = "attn_s"  # attn_m | attn_s | linear_transformer
    D: int = 4  # input dimension
    N: int = 31  # context pairs per sequence
    H: int = 5  # heads (attn_m, attn_s; the linear transformer has one)
    R: int = 1  # rank of each head's K Qᵀ (attn_s)
    init: float = 0.01  # weight scale: see model.py for each model's initialisation
    full_tokens: bool = False  # attention on whole tokens z = (x, y) instead of the paper's form
    # data
    spectrum: str = "linear"  # linear | flat | a list of eigenvalues (see the module doc)
    rotate: bool = True  # Λ = O diag(λ) Oᵀ with a random orthogonal O (the authors' code)
    P: int = 80_000  # fixed training sequences (full-batch GD); 0: fresh batches (SGD)
    batch: int = 1024  # sequences per step when P = 0
    P_test: int = 100_000  # fresh sequences behind the test loss (x_q integrated out exactly)
    # optimisation: plain (S)GD
    lr: float = 0.02
    steps: int = 10_001
    seed: int = 0  # data, rotation and initialisation (private generators)
    threads: int = 0  # CPU intra-op threads; 0: picked from the model size (1: these are tiny)
    # monitoring
    log_every: int = 10  # train/test loss, theory curves
    look_every: int = 10  # dynmon looks (KQ spectra, subspace distance)
    sharpness_every: int = 500  # top Hessian eigenvalue of the training loss; 0 turns it off
    plateau_window: int = 20  # logs in the plateau detector's smoothing window
    ranks: str = ""  # a rank sweep: comma-separated R values, one run each in out/R<r>/

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        for name in ("D", "N", "H", "R", "steps", "log_every", "look_every", "plateau_window"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.P < 0 or (self.P == 0 and (self.batch < 2 or self.batch % 2)):
            raise ValueError(
                f"P must be >= 0 (0: fresh batches of an even `batch` >= 2, antithetic pairs), "
                f"got P={self.P}, batch={self.batch}"
            )
        if self.P_test < 100:
            raise ValueError(f"P_test must be at least 100 fresh sequences, got {self.P_test}")
        if self.lr <= 0 or self.init <= 0:
            raise ValueError(f"lr and init must be positive, got lr={self.lr}, init={self.init}")
        if self.threads < 0:
            raise ValueError(
                f"threads must be >= 0 (0: pick from the model size), got {self.threads}"
            )
        if self.sharpness_every < 0:
            raise ValueError(f"sharpness_every must be >= 0, got {self.sharpness_every}")
        parse_ranks(self.ranks)
        spectrum_values(self.spectrum, self.D)  # a clear error now rather than at run time


def spectrum_values(text: str, D: int) -> list[float]:
    """Eigenvalues of Λ, descending: ``linear`` (∝ k, trace 1), ``flat`` (1/D) or a list.

    Plain floats (no torch), so configs and presets load without importing torch.
    """
    rule = text.strip().lower()
    if rule == "linear":
        return [k / (D * (D + 1) / 2) for k in range(D, 0, -1)]
    if rule in ("flat", "isotropic", "white"):
        return [1.0 / D] * D
    body = rule.strip("[]() ")
    try:
        values = [float(t) for t in body.replace(" ", ",").split(",") if t]
    except ValueError:
        raise ValueError(
            f"spectrum {text!r}: give a rule (linear, flat) or D={D} eigenvalues like "
            "'.4,.3,.2,.1' or '[.4,.3,.2,.1]'"
        ) from None
    if len(values) != D or any(not math.isfinite(v) or v <= 0 for v in values):
        raise ValueError(
            f"spectrum {text!r}: need D={D} positive eigenvalues, got {len(values)} values "
            f"{values}; set D to match or pass a rule (linear, flat)"
        )
    return sorted(values, reverse=True)


def parse_ranks(text: str) -> list[int]:
    """``"1,2,4,8"`` -> ``[1, 2, 4, 8]`` (empty: no sweep)."""
    items = [t for t in text.replace("[", "").replace("]", "").split(",") if t.strip()]
    try:
        ranks = [int(t) for t in items]
    except ValueError:
        raise ValueError(
            f"ranks must be comma-separated integers like 1,2,4,8, got {text!r}"
        ) from None
    if any(r < 1 for r in ranks):
        raise ValueError(f"ranks must be positive, got {text!r}")
    return ranks


Config = LinearICLConfig

_MERGED = LinearICLConfig(
    model="attn_m", D=4, N=31, H=8, init=1e-6, spectrum="flat", P=100_000, lr=1e-3, steps=6001
)
_STAIRCASE = LinearICLConfig(
    model="attn_s",
    D=4,
    N=31,
    H=5,
    R=1,
    init=0.01,
    spectrum=".4,.3,.2,.1",
    P=80_000,
    lr=0.02,
    steps=10_001,
    log_every=2,
    plateau_window=10,
)
_SWEEP = LinearICLConfig(
    model="attn_s",
    D=8,
    N=31,
    H=9,
    R=1,
    init=5e-3,
    spectrum="linear",
    P=80_000,
    lr=0.02,
    steps=72_001,  # the published 20,001 show 6 of R=1's 8 plateaus here
    log_every=40,
    look_every=200,
    sharpness_every=8000,
    ranks="1,2,4,8",
)
_LT = LinearICLConfig(
    model="linear_transformer",
    D=4,
    N=31,
    H=1,
    init=0.1,
    spectrum=".4,.3,.2,.1",
    P=100_000,
    lr=0.002,
    steps=100_001,
    log_every=100,
    look_every=100,
    sharpness_every=10_000,
)

PRESETS: dict[str, LinearICLConfig] = {
    "merged": _MERGED,
    "merged-quick": replace(_MERGED, steps=2500, sharpness_every=500),
    "staircase": _STAIRCASE,
    "staircase-quick": replace(_STAIRCASE, lr=0.04, steps=6001, P=20_000, P_test=50_000),
    "rank-sweep": _SWEEP,
    "rank-sweep-quick": replace(
        _SWEEP,
        P=20_000,
        P_test=50_000,
        lr=0.04,
        steps=36_001,
        log_every=20,  # R=1's shortest plateau (m=4) lasts ~460 steps: keep it resolved
        look_every=200,
        sharpness_every=9000,
    ),
    "linear-transformer": _LT,
    "linear-transformer-quick": replace(
        _LT, lr=0.005, steps=40_001, log_every=40, look_every=40, sharpness_every=4000
    ),
}
DEFAULT_PRESET = "staircase-quick"
