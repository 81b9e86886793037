"""Min/max envelope downsampling, checked against a per-bin loop written out directly."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynmon.page.envelope import bin_index, envelope, envelope_bounds


def brute_bins(
    steps: np.ndarray, values: np.ndarray, bins: int
) -> list[tuple[float, float, float]]:
    """(mean step, min, max) of each non-empty bin, one point at a time, NaN-aware."""
    first, span = int(steps[0]), int(steps[-1]) - int(steps[0])
    members: dict[int, list[int]] = {}
    for i, s in enumerate(steps.tolist()):  # bin b holds steps in [b, b+1) x span/bins
        b = min((s - first) * bins // span, bins - 1) if span > 0 else 0
        members.setdefault(b, []).append(i)
    out = []
    for b in sorted(members):
        idx = members[b]
        finite = [values[i] for i in idx if np.isfinite(values[i])]
        mean_step = sum(float(steps[i]) for i in idx) / len(idx)
        out.append((mean_step, min(finite, default=np.nan), max(finite, default=np.nan)))
    return out


series = st.integers(min_value=2, max_value=400).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 5), min_size=n, max_size=n),  # step gaps (0: a repeated step)
        st.lists(
            st.one_of(
                st.floats(-1e6, 1e6, allow_nan=False),
                st.sampled_from([np.nan, np.inf, -np.inf]),
            ),
            min_size=n,
            max_size=n,
        ),
        st.integers(1, 50),
    )
)


@settings(max_examples=150, deadline=None)
@given(series)
def test_envelope_matches_a_per_bin_loop(data):
    gaps, values, bins = data
    steps = np.cumsum(np.array(gaps, dtype=np.int64))
    values = np.array(values)
    env = envelope(steps, values, bins=bins, max_exact=0)
    expected = brute_bins(steps, values, bins)
    assert len(env.x) == len(expected) <= bins
    np.testing.assert_allclose(env.x, [e[0] for e in expected], rtol=1e-12)
    np.testing.assert_array_equal(env.lo, [e[1] for e in expected])
    np.testing.assert_array_equal(env.hi, [e[2] for e in expected])
    finite = values[np.isfinite(values)]
    if len(finite):  # the extremes of the whole series survive downsampling
        assert np.nanmax(env.hi) == finite.max() and np.nanmin(env.lo) == finite.min()


def test_short_series_stay_exact_and_infinities_become_gaps():
    steps = np.arange(5)
    values = np.array([1.0, np.inf, 3.0, np.nan, -np.inf])
    env = envelope(steps, values)
    assert env.exact
    np.testing.assert_array_equal(env.x, steps)
    np.testing.assert_array_equal(env.lo, [1.0, np.nan, 3.0, np.nan, np.nan])


def test_a_spike_in_twenty_thousand_steps_is_kept():
    steps = np.arange(20_000)
    values = np.sin(steps / 500.0)
    values[12_345] = 50.0
    env = envelope(steps, values, bins=400)
    assert len(env.x) == 400 and not env.exact
    spike_bin = bin_index(steps, 400)[12_345]
    assert env.hi[spike_bin] == 50.0 and np.sum(env.hi == 50.0) == 1


def test_band_bounds_take_the_lower_min_and_the_upper_max():
    steps = np.arange(2000)
    rng = np.random.default_rng(0)
    lower = rng.normal(size=2000)
    upper = lower + rng.uniform(0, 1, 2000)
    band = envelope_bounds(steps, lower, upper, bins=100)
    b = bin_index(steps, 100)
    np.testing.assert_array_equal(band.lo, [lower[b == i].min() for i in range(100)])
    np.testing.assert_array_equal(band.hi, [upper[b == i].max() for i in range(100)])


def test_bad_input_says_what_is_wrong():
    with pytest.raises(ValueError, match="sorted"):
        envelope(np.array([3, 1, 2]), np.zeros(3), max_exact=0)
    with pytest.raises(ValueError, match="one length"):
        envelope(np.arange(3), np.zeros(4))
    with pytest.raises(ValueError, match="bins"):
        envelope(np.arange(3), np.zeros(3), bins=0)
