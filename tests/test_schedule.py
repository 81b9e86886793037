"""Schedules are sets of steps: every(k), logspace(a, b, n), their union."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import dynmon
from dynmon.schedule import as_schedule


def _steps(s, n=2000):
    return [i for i in range(n) if s(i)]


def test_every():
    assert _steps(dynmon.every(250)) == [0, 250, 500, 750, 1000, 1250, 1500, 1750]
    assert _steps(dynmon.every(3, start=2), 12) == [2, 5, 8, 11]


def test_logspace_matches_geometric_spacing():
    s = _steps(dynmon.logspace(1, 1000, 4))
    assert s == [1, 10, 100, 1000]
    dense = _steps(dynmon.logspace(1, 1000, 1000))
    assert dense[0] == 1 and dense[-1] == 1000
    assert len(_steps(dynmon.logspace(10, 10_000, 30), 20_000)) == 30


@given(st.integers(1, 50), st.integers(1, 50), st.integers(1, 2000))
def test_union_is_set_union(a, b, n):
    u = dynmon.every(a) | dynmon.every(b)
    expected = sorted(set(range(0, n, a)) | set(range(0, n, b)))
    assert _steps(u, n) == expected


def test_union_with_logspace_and_plain_values():
    u = dynmon.logspace(1, 100, 3) | 50 | {7}
    assert _steps(u, 120) == sorted({1, 10, 100, 0, 50, 7})
    assert as_schedule(lambda s: s == 3)(3)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: dynmon.every(0), "positive integer"),
        (lambda: dynmon.logspace(0, 10, 3), "not exponents"),
        (lambda: dynmon.logspace(100, 10, 3), "start <= stop"),
        (lambda: as_schedule(True), "bool"),
        (lambda: as_schedule(object()), "schedule"),
    ],
)
def test_bad_schedules(make, match):
    with pytest.raises((ValueError, TypeError), match=match):
        make()


def test_logspace_points_are_log_uniform():
    s = np.array(_steps(dynmon.logspace(100, 100_000, 20), 100_001), dtype=float)
    ratios = s[1:] / s[:-1]
    assert np.allclose(ratios, ratios.mean(), rtol=0.01)
