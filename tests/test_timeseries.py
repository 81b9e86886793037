"""Learning-curve time series (dynmon.metrics.timeseries, streamed by dynmon.curves): known
answers on synthetic series."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.signal import savgol_filter

from dynmon.curves import EMA, AutocorrCurvature, NormCurvature
from dynmon.metrics.timeseries import (
    Smoothing,
    autocorr_curvature,
    ema,
    local_polyfit,
    moving_average,
    moving_median,
    norm_curvature,
    second_derivative,
    smooth,
)


def ar1(phi: float, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(n)
    x = np.empty(n)
    x[0] = e[0] / np.sqrt(1 - phi**2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    return x


# -- autocorrelation curvature ----------------------------------------------------------------


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.8])
def test_ar1_curvature_is_two_phi_minus_one(phi):
    """AR(1) with coefficient φ: A(1) ≈ φ, so the curvature ≈ 2(φ − 1); white noise ≈ −2."""
    x = ar1(phi, 20_000, seed=int(phi * 10))
    for detrend in (True, False):
        c = autocorr_curvature(x, 500, detrend=detrend)
        assert np.isnan(c[:499]).all() and np.isfinite(c[499:]).all()
        assert np.mean(c[499:]) == pytest.approx(2 * (phi - 1), abs=0.04)


def test_smooth_trend_gives_curvature_near_zero_and_cliff_separates():
    """A window dominated by structure slower than a log is ≈ 0; noise on a plateau is ≈ −2."""
    rng = np.random.default_rng(0)
    t = np.arange(3000)
    loss = 1 - 0.5 / (1 + np.exp(-(t - 1500) / 30)) + 0.005 * rng.standard_normal(len(t))
    c = autocorr_curvature(loss, 100)
    assert np.nanmean(c[200:1300]) == pytest.approx(-2, abs=0.1)  # plateau: noise
    assert np.nanmax(c[1450:1600]) > -0.2  # the cliff: structure
    assert np.nanmean(autocorr_curvature(np.sin(t / 50), 40)[40:]) == pytest.approx(0, abs=0.05)


def test_constant_and_straight_windows_are_nan():
    assert np.isnan(autocorr_curvature(np.full(50, 3.0), 10)).all()
    line = np.linspace(0.0, 1.0, 50)
    assert np.isnan(autocorr_curvature(line, 10)[9:]).all()  # detrended: nothing left
    assert autocorr_curvature(line, 10, detrend=False)[9:] == pytest.approx(0.0, abs=1e-12)
    x = np.r_[np.ones(20), np.nan, np.ones(20) + np.arange(20)]
    c = autocorr_curvature(x, 10, detrend=False)
    assert np.isnan(c[20:30]).all() and np.isfinite(c[-1])


def test_max_lag_fits_the_curvature_over_several_lags():
    x = np.random.default_rng(1).standard_normal(20_000)
    taus = np.arange(1, 4)
    c = autocorr_curvature(x, 400, max_lag=3)
    assert np.nanmean(c) == pytest.approx(-2 * np.sum(taus**2) / np.sum(taus**4), abs=0.02)
    smooth_series = np.sin(np.arange(2000) / 40)
    c1 = autocorr_curvature(smooth_series, 200, detrend=False)
    c3 = autocorr_curvature(smooth_series, 200, max_lag=3, detrend=False)
    assert np.nanmean(c3) == pytest.approx(np.nanmean(c1), rel=0.05)


def test_streaming_autocorr_equals_batch_and_round_trips():
    x = ar1(0.6, 1500, seed=3) + np.linspace(0, 5, 1500)
    batch = autocorr_curvature(x, 64, smoothing=Smoothing("ema", 9))
    online = AutocorrCurvature(64, ema_span=9)
    out = []
    for i, v in enumerate(x):
        if i == 700:  # resume from a JSON round trip of the state
            state = json.loads(json.dumps(online.state_dict()))
            online = AutocorrCurvature(64, ema_span=9)
            online.load_state_dict(state)
        out.append(online.update(i, v))
    assert out[62] is None and out[63] is not None
    assert np.array(out[63:], dtype=float) == pytest.approx(batch[63:], abs=1e-10)
    assert len(online._ring) == 64
    assert online.update(10, 1.0) is None  # a step already seen: ignored


def test_autocorr_accepts_tensors_and_checks_arguments():
    x = torch.randn(300, generator=torch.Generator().manual_seed(0))
    assert autocorr_curvature(x, 50) == pytest.approx(
        autocorr_curvature(x.numpy(), 50), nan_ok=True
    )
    with pytest.raises(ValueError):
        autocorr_curvature(x, 3)
    with pytest.raises(ValueError):
        autocorr_curvature(np.zeros((3, 3)), 2)


# -- norm curvature ---------------------------------------------------------------------------


def test_quadratic_norm_has_constant_second_derivative_on_any_grid():
    rng = np.random.default_rng(0)
    uniform = np.arange(0.0, 200.0)
    irregular = np.unique(np.round(np.sort(rng.uniform(0, 1000, 300)), 3))
    for t in (uniform, irregular):
        norm = 3.0 * t**2 - 2.0 * t + 7.0
        for smoothing in (Smoothing("savgol", 7, 2), Smoothing("savgol", 11, 3), None):
            c = norm_curvature(norm, t, smoothing=smoothing)
            finite = c[np.isfinite(c)]
            assert len(finite) >= len(t) - 2
            assert finite == pytest.approx(6.0, rel=1e-6)


def test_norm_curvature_against_log_time():
    steps = np.unique(np.round(np.logspace(0, 5, 400)))  # log-spaced looks: a very uneven grid
    u = np.log(steps)
    norm = 0.5 * u**2 + 2 * u + 1
    assert norm_curvature(norm, steps, log_time=True) == pytest.approx(1.0, rel=1e-6)
    assert norm_curvature(norm, steps, log_time=True, smoothing=None)[1:-1] == pytest.approx(1.0)
    c = norm_curvature(np.r_[1.0, norm], np.r_[0, steps], log_time=True)
    assert np.isnan(c[0]) and c[1:] == pytest.approx(1.0, rel=1e-6)  # step 0 has no log


def test_smoothing_tames_noise_without_bias():
    rng = np.random.default_rng(2)
    t = np.arange(2000.0)
    norm = 1e-4 * t**2 + 0.05 * rng.standard_normal(len(t))
    raw = norm_curvature(norm, t, smoothing=None)
    sg = norm_curvature(norm, t, smoothing=Smoothing("savgol", 101, 2))
    assert np.nanstd(sg) < np.nanstd(raw) / 100
    assert np.nanmean(sg) == pytest.approx(2e-4, rel=0.05)
    ema_c = norm_curvature(1e-4 * t**2, t, smoothing=Smoothing("ema", 20))
    assert ema_c[200:-1] == pytest.approx(2e-4, rel=1e-6)  # EMA lags a quadratic, bends alike


def test_streaming_norm_curvature_equals_batch_at_the_window_middle():
    rng = np.random.default_rng(4)
    steps = np.cumsum(rng.integers(1, 20, 400))
    norm = np.sqrt(steps) + 0.01 * rng.standard_normal(400)
    batch = norm_curvature(norm, steps, log_time=True, smoothing=Smoothing("savgol", 9, 2))
    online = NormCurvature(9, log_time=True)
    for i, (s, v) in enumerate(zip(steps, norm, strict=True)):
        if i == 200:
            state = json.loads(json.dumps(online.state_dict()))
            online = NormCurvature(9, log_time=True)
            online.load_state_dict(state)
        out = online.update(int(s), float(v))
        if i < 8:
            assert out is None
        else:
            assert online.middle_step == steps[i - 4]
            assert out == pytest.approx(batch[i - 4], rel=1e-9, abs=1e-12)
    assert len(online._ring) == 9


# -- smoothing helpers ------------------------------------------------------------------------


def test_second_derivative_matches_the_irregular_formula():
    x = np.array([0.0, 1.0, 3.0, 3.5, 7.0])
    y = x**2
    assert second_derivative(y, x)[1:-1] == pytest.approx(2.0)
    assert np.isnan(second_derivative(y, x)[[0, -1]]).all()
    with pytest.raises(ValueError, match="increasing"):
        second_derivative(y, x[::-1])


@settings(max_examples=40, deadline=None)
@given(
    gaps=st.lists(st.floats(0.1, 10.0), min_size=3, max_size=30),
    a=st.floats(-5, 5),
    b=st.floats(-5, 5),
)
def test_second_derivative_exact_for_any_quadratic_and_grid(gaps, a, b):
    x = np.cumsum(gaps)
    y = a * x**2 + b * x + 1.0
    assert second_derivative(y, x)[1:-1] == pytest.approx(2 * a, abs=1e-6 * (1 + abs(a)) * x[-1])


def test_local_polyfit_is_savitzky_golay_on_a_uniform_grid():
    y = np.random.default_rng(5).standard_normal(200)
    for window, order, deriv in ((7, 2, 0), (11, 3, 1), (9, 2, 2)):
        ours = local_polyfit(y, window=window, order=order, deriv=deriv)
        ref = savgol_filter(y, window, order, deriv=deriv, mode="interp")
        assert ours == pytest.approx(ref, abs=1e-9)
    assert np.isnan(local_polyfit(y[:5], window=7)).all()


def test_ema_and_moving_average():
    x = np.array([np.nan, 1.0, 3.0, np.nan, 5.0])
    out = ema(x, 3)  # α = 0.5
    assert np.isnan(out[0]) and out[1:] == pytest.approx([1.0, 2.0, 2.0, 3.5])
    stream = EMA(3)
    assert [stream.update(v) for v in x] == [None, 1.0, 2.0, 2.0, 3.5]
    restored = EMA(7)
    restored.load_state_dict(stream.state_dict())
    assert restored.update(3.5) == 3.5 and restored.alpha == 0.5
    assert moving_average([1.0, 2.0, 3.0, 4.0], 3) == pytest.approx([1.5, 2.0, 3.0, 3.5])
    assert moving_average([1.0, np.nan, 3.0], 3) == pytest.approx([1.0, 2.0, 3.0])
    assert smooth([1.0, 2.0], None) == pytest.approx([1.0, 2.0])
    with pytest.raises(ValueError):
        Smoothing("median", 3)
    with pytest.raises(ValueError):
        Smoothing("savgol", 3, 3)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.one_of(st.floats(-1e6, 1e6), st.just(float("nan"))), max_size=30),
    st.integers(1, 8),
)
def test_moving_median_is_the_median_of_each_windows_finite_values(values, window):
    """Against a loop over the windows ``moving_average`` uses (NaN where a window has none)."""
    got = moving_median(values, window)
    x = np.asarray(values, dtype=float)
    for i in range(len(x)):
        seg = x[max(0, i - (window - 1) // 2) : i + window // 2 + 1]
        seg = seg[np.isfinite(seg)]
        want = float(np.median(seg)) if len(seg) else np.nan
        np.testing.assert_equal(got[i], want)
    assert got.shape == x.shape


def test_moving_median_ignores_an_outlier_the_mean_follows():
    x = [1.0, 1.0, 100.0, 1.0, 1.0]
    assert moving_median(x, 3).tolist() == [1.0, 1.0, 1.0, 1.0, 1.0]
    assert moving_average(x, 3)[2] == pytest.approx(34.0)
    with pytest.raises(ValueError, match="window must be >= 1"):
        moving_median(x, 0)
