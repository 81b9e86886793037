"""Min/max envelope downsampling: a long series becomes, per step bin, the lowest and the highest
value it took there, so that a 20,000-step curve stays light and keeps every spike it had."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MAX_EXACT = 800  # series with at most this many points are kept as they are
BINS = 400  # bins of an envelope: about one per two pixels of a page-wide plot


@dataclass(frozen=True)
class Envelope:
    """``x [B]``: mean step of each non-empty bin; ``lo``/``hi [B]``: the bin's min and max (NaN
    where every value in the bin was NaN). An exact series has ``lo is hi``."""

    x: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def exact(self) -> bool:
        """True when nothing was merged: ``lo`` and ``hi`` are the series itself."""
        return self.lo is self.hi


def bin_index(steps: np.ndarray, bins: int) -> np.ndarray:
    """The bin of each step when ``[steps[0], steps[-1]]`` is cut into ``bins`` equal widths."""
    s = np.asarray(steps)
    if len(s) == 0:
        return np.zeros(0, dtype=np.int64)
    span = s[-1] - s[0]
    if span <= 0:
        return np.zeros(len(s), dtype=np.int64)
    if s.dtype.kind in "iu":  # integer steps: exact, no bin edge decided by rounding
        b = (s.astype(np.int64) - s[0]) * bins // span
    else:
        b = np.floor((s - s[0]) * (bins / span)).astype(np.int64)
    return np.clip(b, 0, bins - 1)


def envelope(
    steps: np.ndarray, values: np.ndarray, bins: int = BINS, max_exact: int = MAX_EXACT
) -> Envelope:
    """Min/max of ``values`` over ``bins`` equal step-width bins (steps sorted ascending).

    Non-finite values count as missing (NaN). A series of at most ``max_exact`` points is returned
    whole (``exact``), since merging would save little and lose the exact points.
    """
    steps = np.asarray(steps)
    values = np.asarray(values, dtype=np.float64)
    if steps.shape != values.shape or steps.ndim != 1:
        raise ValueError(
            f"envelope needs 1-D steps and values of one length, got {steps.shape} and "
            f"{values.shape}"
        )
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    if len(steps) > 1 and np.any(np.diff(steps) < 0):
        raise ValueError("envelope needs steps sorted ascending (Run.series gives them so)")
    clean = np.where(np.isfinite(values), values, np.nan)
    if len(steps) <= max_exact:
        return Envelope(steps.astype(np.float64), clean, clean)
    b = bin_index(steps, bins)
    starts = np.flatnonzero(np.r_[True, b[1:] != b[:-1]])  # first index of each non-empty bin
    counts = np.diff(np.r_[starts, len(b)])
    x = np.add.reduceat(steps.astype(np.float64), starts) / counts
    with np.errstate(invalid="ignore"):
        lo = np.fmin.reduceat(clean, starts)  # fmin/fmax skip NaN unless the whole bin is NaN
        hi = np.fmax.reduceat(clean, starts)
    return Envelope(x, lo, hi)


def envelope_bounds(
    steps: np.ndarray, lower: np.ndarray, upper: np.ndarray, bins: int = BINS
) -> Envelope:
    """One envelope around a band: per bin the min of ``lower`` and the max of ``upper`` (a seed
    band stays conservative when it is downsampled)."""
    lo = envelope(steps, lower, bins)
    hi = envelope(steps, upper, bins)
    return Envelope(lo.x, lo.lo, hi.hi)
