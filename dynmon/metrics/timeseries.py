"""Learning-curve time series: smoothing, loss-autocorrelation curvature, norm-trajectory curvature.

Pure functions on 1-D series (numpy arrays, sequences or tensors; returned as float64 numpy),
defined in docs/metrics.md#loss_autocorr_curv and docs/metrics.md#norm_curvature. Their streaming
versions with fixed-size state, which the Monitor runs over logged scalars, are in
``dynmon.curves``.

* :func:`autocorr_curvature`: over a trailing window of ``window`` logged values, the lag-τ
  autocorrelation ``A(τ) = corr(L(t), L(t+τ))`` and its curvature at τ = 0,
  ``A(1) − 2A(0) + A(−1) = 2(A(1) − 1)``: about −2 where the window is dominated by white noise
  (SGD noise on a plateau), near 0 where it is dominated by structure slower than the window (a
  cliff), so the two timescales separate.
* :func:`norm_curvature`: the second derivative of the parameter-norm trajectory ‖θ(t)‖ against
  t or log t, on the real (possibly irregular) step grid.

Lags count logged values, not steps: log the loss at a fixed interval for the autocorrelation
to mean the same thing along the run. The norm curvature uses the step numbers themselves.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "Smoothing",
    "as_series",
    "ema",
    "moving_average",
    "moving_median",
    "local_polyfit",
    "smooth",
    "second_derivative",
    "autocorr_curvature",
    "norm_curvature",
    "window_curvature",
]

SmoothingKind = Literal["none", "ema", "mean", "savgol"]
_CHUNK = 4096  # windows per vectorised block: bounds the temporary memory of long series
_FLAT_RTOL = 1e-12  # a window whose spread is below this fraction of its magnitude is constant


@dataclass(frozen=True)
class Smoothing:
    """How a series is smoothed: ``kind`` with ``window`` points (and ``order`` for savgol).

    ``ema``: exponential moving average with span ``window`` (α = 2 / (window + 1)), causal;
    ``mean``: centred moving average of ``window`` points (shrinking at the ends);
    ``savgol``: Savitzky–Golay, a least-squares polynomial of ``order`` over ``window`` centred
    points, on the real x grid when one is given (irregular steps are handled exactly);
    ``none``: the series as it is.
    """

    kind: SmoothingKind = "none"
    window: int = 1
    order: int = 2

    def __post_init__(self) -> None:
        if self.kind not in ("none", "ema", "mean", "savgol"):
            raise ValueError(f"unknown smoothing kind {self.kind!r}: none, ema, mean or savgol")
        if self.window < 1:
            raise ValueError(f"smoothing window must be >= 1, got {self.window}")
        if self.kind == "savgol" and self.window <= self.order:
            raise ValueError(f"savgol needs window > order, got {self.window} <= {self.order}")


NO_SMOOTHING = Smoothing()


def as_series(x: Any) -> np.ndarray:
    """A 1-D float64 numpy copy of ``x`` (array, sequence or tensor, detached, on the CPU)."""
    if hasattr(x, "detach"):  # a torch tensor: no torch import needed here
        x = x.detach().cpu().double().numpy()  # sync point
    arr = np.array(x, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"expected a 1-D series, got shape {arr.shape}")
    return arr


# -- smoothing ------------------------------------------------------------------------------


def ema(x: Any, span: int) -> np.ndarray:
    """Exponential moving average, α = 2/(span+1), started at the first finite value.

    Causal (the value at i uses points ≤ i), so it equals the streaming ``dynmon.curves.EMA``.
    Non-finite points are skipped: the average carries over them (NaN before the first finite
    point).
    """
    if span < 1:
        raise ValueError(f"EMA span must be >= 1, got {span}")
    x = as_series(x)
    alpha = 2.0 / (span + 1.0)
    out = np.empty_like(x)
    acc = np.nan
    for i, v in enumerate(x.tolist()):  # a recursion: plain Python is as fast as any trick here
        if np.isfinite(v):
            acc = v if acc != acc else acc + alpha * (v - acc)  # acc != acc: still NaN
        out[i] = acc
    return out


def moving_average(x: Any, window: int) -> np.ndarray:
    """Centred moving average of ``window`` points (odd windows are symmetric), NaN-ignoring.

    At the ends the window shrinks to the points that exist, so the output has the input's length.
    """
    if window < 1:
        raise ValueError(f"moving-average window must be >= 1, got {window}")
    x = as_series(x)
    ok = np.isfinite(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(ok, x, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(ok)])
    i = np.arange(len(x))
    lo = np.clip(i - (window - 1) // 2, 0, len(x))
    hi = np.clip(i + window // 2 + 1, 0, len(x))
    cnt = ccnt[hi] - ccnt[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, (csum[hi] - csum[lo]) / np.maximum(cnt, 1), np.nan)


def moving_median(x: Any, window: int) -> np.ndarray:
    """Centred moving median of ``window`` points (the windows of ``moving_average``), NaN-ignoring.

    Robust to single outliers where the mean is not; a window holding only NaN gives NaN.
    """
    if window < 1:
        raise ValueError(f"moving-median window must be >= 1, got {window}")
    x = as_series(x)
    if len(x) == 0:
        return x
    pad_lo, pad_hi = (window - 1) // 2, window // 2  # NaN padding: windows shrink at the ends
    padded = np.concatenate([np.full(pad_lo, np.nan), x, np.full(pad_hi, np.nan)])
    windows = sliding_window_view(padded, window)  # [n, window], a view
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN windows: NaN, said in the doc
        return np.nanmedian(windows, axis=1)


def local_polyfit(
    y: Any, x: Any = None, *, window: int = 7, order: int = 2, deriv: int = 0
) -> np.ndarray:
    """Savitzky–Golay on any grid: the ``deriv``-th derivative of a least-squares polynomial.

    At each point i a polynomial of ``order`` is fitted to ``window`` consecutive points centred
    on i (shifted inwards at the ends, like scipy's ``mode="interp"``) and differentiated at
    x_i. With ``x`` None the grid is 0, 1, 2, …. Exact for polynomials of degree ≤ ``order`` on any
    strictly increasing grid. Fewer than ``window`` points: NaN. Non-finite y poisons the windows
    that contain it.
    """
    y = as_series(y)
    n = len(y)
    x = np.arange(n, dtype=np.float64) if x is None else as_series(x)
    if len(x) != n:
        raise ValueError(f"x has {len(x)} points, y has {n}")
    if window <= order:
        raise ValueError(f"window must exceed order, got window={window}, order={order}")
    if deriv > order:
        return np.zeros(n)
    out = np.full(n, np.nan)
    if n < window:
        return out
    _check_increasing(x)
    i = np.arange(n)
    first = np.clip(i - window // 2, 0, n - window)  # window start for each output point
    xw = sliding_window_view(x, window)  # (n - window + 1, window)
    yw = sliding_window_view(y, window)
    powers = np.arange(order + 1)
    factorial = float(np.prod(np.arange(1, deriv + 1)))
    for s in range(0, n, _CHUNK):
        idx = i[s : s + _CHUNK]
        xs, ys = xw[first[idx]], yw[first[idx]]  # (B, window)
        scale = (xs[:, -1] - xs[:, 0])[:, None] / 2.0  # conditioning: offsets in [-2, 2]
        u = (xs - x[idx, None]) / scale  # (B, window), 0 at the output point
        V = u[..., None] ** powers  # (B, window, order + 1) Vandermonde
        coef = np.linalg.solve(V.transpose(0, 2, 1) @ V, (V.transpose(0, 2, 1) @ ys[..., None]))
        out[idx] = coef[:, deriv, 0] * factorial / scale[:, 0] ** deriv
    return out


def smooth(y: Any, smoothing: Smoothing | None, x: Any = None) -> np.ndarray:
    """Apply a :class:`Smoothing` (None or ``kind="none"``: a copy of the series)."""
    y = as_series(y)
    if smoothing is None or smoothing.kind == "none" or smoothing.window == 1:
        return y
    if smoothing.kind == "ema":
        return ema(y, smoothing.window)
    if smoothing.kind == "mean":
        return moving_average(y, smoothing.window)
    if len(y) < smoothing.window:
        return y
    return local_polyfit(y, x, window=smoothing.window, order=smoothing.order)


# -- curvature of the parameter-norm trajectory -----------------------------------------------


def _check_increasing(x: np.ndarray) -> None:
    finite = x[np.isfinite(x)]
    if np.any(np.diff(finite) <= 0):
        raise ValueError("steps must be strictly increasing")


def second_derivative(y: Any, x: Any = None) -> np.ndarray:
    """Three-point second derivative on a (possibly irregular) grid; NaN at both ends.

    ``y''(x_i) ≈ 2[(y_{i+1} − y_i)/h₊ − (y_i − y_{i−1})/h₋] / (h₋ + h₊)``, exact for quadratics
    on any strictly increasing grid (the uniform formula would be wrong by O(1) on a log grid).
    """
    y = as_series(y)
    x = np.arange(len(y), dtype=np.float64) if x is None else as_series(x)
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} points, y has {len(y)}")
    _check_increasing(x)
    out = np.full(len(y), np.nan)
    if len(y) >= 3:
        hm, hp = np.diff(x)[:-1], np.diff(x)[1:]
        dm, dp = np.diff(y)[:-1] / hm, np.diff(y)[1:] / hp
        out[1:-1] = 2.0 * (dp - dm) / (hm + hp)
    return out


def _time_axis(n: int, steps: Any, log_time: bool) -> np.ndarray:
    """The x grid: steps (0, 1, … when None), or their natural log (NaN where step ≤ 0)."""
    x = np.arange(n, dtype=np.float64) if steps is None else as_series(steps)
    if len(x) != n:
        raise ValueError(f"steps has {len(x)} points, norms has {n}")
    _check_increasing(x)
    if log_time:
        with np.errstate(invalid="ignore", divide="ignore"):
            x = np.where(x > 0, np.log(np.where(x > 0, x, 1.0)), np.nan)
    return x


DEFAULT_NORM_SMOOTHING = Smoothing("savgol", window=7, order=2)


def norm_curvature(
    norms: Any,
    steps: Any = None,
    *,
    log_time: bool = False,
    smoothing: Smoothing | None = DEFAULT_NORM_SMOOTHING,
) -> np.ndarray:
    """Smoothed second derivative of the norm trajectory ‖θ(t)‖ against t, or ln t.

    ``steps`` are the logged step numbers (strictly increasing, any spacing; 0, 1, … if None).
    Default smoothing: Savitzky–Golay, a quadratic over 7 centred logs fitted on the real t (or
    ln t) grid, whose second derivative is returned: exact for a quadratic trajectory on any
    grid, and far less noisy than the raw second difference. ``ema``/``mean`` smoothing is
    applied to the norms in log order before the three-point irregular-grid second difference;
    ``None`` gives the raw second difference. With ``log_time`` points at step ≤ 0 are NaN.
    Output has one value per input point (NaN where undefined).
    """
    y = as_series(norms)
    x = _time_axis(len(y), steps, log_time)
    out = np.full(len(y), np.nan)
    ok = np.isfinite(x)
    yk, xk = y[ok], x[ok]
    if smoothing is not None and smoothing.kind == "savgol" and smoothing.window > 1:
        order = max(smoothing.order, 2)
        if smoothing.window <= order:
            raise ValueError(f"savgol window {smoothing.window} too short for a curvature")
        out[ok] = local_polyfit(yk, xk, window=smoothing.window, order=order, deriv=2)
    else:
        out[ok] = second_derivative(smooth(yk, smoothing), xk)
    return out


# -- curvature of the loss autocorrelation ----------------------------------------------------


def window_curvature(seg: np.ndarray, max_lag: int, detrend: bool) -> np.ndarray:
    """Autocorrelation curvature of each row of ``seg`` (B, window); NaN for constant rows.

    The per-window step of :func:`autocorr_curvature`, shared with its streaming version."""
    magnitude = np.abs(seg).max(axis=1)
    seg = seg - seg.mean(axis=1, keepdims=True)
    w = seg.shape[1]
    if detrend:
        t = np.arange(w, dtype=np.float64) - (w - 1) / 2.0
        seg = seg - np.outer(seg @ t / (t @ t), t)
    num = np.zeros(len(seg))
    for tau in range(1, max_lag + 1):
        a, b = seg[:, :-tau], seg[:, tau:]
        a = a - a.mean(axis=1, keepdims=True)
        b = b - b.mean(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))
        num += tau**2 * (r - 1.0)
    curv = 2.0 * num / float(sum(tau**4 for tau in range(1, max_lag + 1)))
    return np.where(_const_rows(seg, magnitude), np.nan, curv)


def _const_rows(resid: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Rows whose (detrended) spread is zero up to rounding, relative to the raw magnitude."""
    return resid.max(axis=1) - resid.min(axis=1) <= _FLAT_RTOL * magnitude


def autocorr_curvature(
    x: Any,
    window: int,
    *,
    max_lag: int = 1,
    smoothing: Smoothing | None = None,
    detrend: bool = True,
) -> np.ndarray:
    """Curvature at τ = 0 of the loss autocorrelation over a trailing window
    (docs/metrics.md#loss_autocorr_curv).

    At log i (once ``window`` logs exist; NaN before) the window is x[i−window+1 … i]; with
    ``detrend`` its least-squares line is removed first, ``A(τ)`` is the Pearson correlation
    of the pairs (x_t, x_{t+τ}) inside it, and the curvature ``A(1) − 2A(0) + A(−1)`` is
    ``2(A(1) − 1)``. With ``max_lag`` m > 1 the curvature of ``A(τ) ≈ 1 + cτ²/2`` is fitted by least
    squares over τ = 1…m, ``c = 2Στ²(A(τ) − 1)/Στ⁴`` (equal to the above for m = 1), which is
    steadier for smooth series (an autocorrelation with a cusp at 0 has no scale-free curvature:
    white noise then gives −2Στ²/Στ⁴, e.g. −0.29 for m = 3, hence the default m = 1). With m = 1,
    white noise gives ≈ −2, AR(1) with coefficient φ ≈ 2(φ − 1), a smooth trend-dominated
    window ≈ 0 (finite windows bias these down by O(1/window)).

    Detrending (default on) removes a steady drift across the window, which would otherwise
    pin A(1) near 1 during any steady decline and hide the noise-versus-structure contrast; what
    is left responds to changes of slope inside the window (plateau entries and exits, cliffs).
    A constant window (after detrending: an exactly straight one), i.e. one whose spread is at
    most 1e-12 of its magnitude, or one with a non-finite value, gives NaN (A is undefined).
    ``smoothing`` (default none) is applied to the curvature series, never to the loss:
    smoothing the loss would itself create autocorrelation.
    """
    if window < max_lag + 3:
        raise ValueError(f"window must be >= max_lag + 3, got window={window}, max_lag={max_lag}")
    if max_lag < 1:
        raise ValueError(f"max_lag must be >= 1, got {max_lag}")
    x = as_series(x)
    out = np.full(len(x), np.nan)
    if len(x) < window:
        return smooth(out, smoothing)
    segs = sliding_window_view(x, window)  # (n - window + 1, window), a view
    for s in range(0, len(segs), _CHUNK):
        seg = segs[s : s + _CHUNK]
        vals = window_curvature(seg, max_lag, detrend)
        vals[~np.isfinite(seg).all(axis=1)] = np.nan
        out[window - 1 + s : window - 1 + s + len(seg)] = vals
    return smooth(out, smoothing)
