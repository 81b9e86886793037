"""When things happen: the emergence step, the steepest drop, subspace stabilisation, lead times.

Pure functions on ``(steps, values)`` curves and event lists, so the definitions are testable:

- **Emergence step**: the steepest point (``at``) of the largest ``cliff`` that dynmon's online
  ``PlateauCliffDetector`` finds in the probe's repeated-token loss. The induction-score
  ``onset`` (``OnsetDetector``, ``at`` = where the rise began) is reported beside it.
- **Steepest drop** (the offline check of the detector): the step where the repeated-token loss,
  smoothed by a centred running mean over ``window`` logs, falls fastest (central difference).
- **Subspace-stabilisation step**: with d(t) the head-averaged subspace distance of QK and OV to
  the previous look (``(dynmon/subspace_dist/QK + dynmon/subspace_dist/OV) / 2``), smoothed by a
  centred running median over 3 looks, the first look after d's peak from which d stays at or
  below ``frac`` × (peak − floor) + floor for the rest of the run, the floor being the median of
  d over the last fifth of the run (the rotation that AdamW keeps up at a constant learning
  rate). The same rule on the offline distance to the final matrices (the seed paper's
  projection residual, which falls to 0 at the end: floor 0) gives the *final-reference*
  stabilisation step.
- **Lead**: emergence step − stabilisation step (positive: the subspaces settled first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from dynmon.metrics.timeseries import moving_average, moving_median


def largest_cliff(events: Iterable[dict[str, Any]], key: str) -> dict[str, Any] | None:
    """The ``cliff`` event on ``key`` with the largest drop (``size``), or None."""
    cliffs = [e for e in events if e.get("kind") == "cliff" and e.get("key") == key]
    return max(cliffs, key=lambda e: e.get("size", 0.0), default=None)


def first_event(events: Iterable[dict[str, Any]], kind: str, key: str) -> dict[str, Any] | None:
    """The first event of ``kind`` on ``key`` (by the step it is about), or None."""
    found = [e for e in events if e.get("kind") == kind and e.get("key") == key]
    return min(found, key=lambda e: e.get("at", e["step"]), default=None)


def steepest_drop(steps: Sequence[int], values: Sequence[float], window: int = 5) -> int | None:
    """Step of the fastest fall of the smoothed curve (central difference), None if < 3 points."""
    steps_a = np.asarray(steps, dtype=float)
    if len(steps_a) < 3:
        return None
    smooth = moving_average(values, window)
    slope = (smooth[2:] - smooth[:-2]) / (steps_a[2:] - steps_a[:-2])  # at steps[1:-1]
    if not np.isfinite(slope).any():
        return None
    return int(steps_a[1:-1][int(np.nanargmin(slope))])


def settle(
    steps: Sequence[int],
    values: Sequence[float],
    frac: float,
    *,
    floor: float | None = None,
    smooth: int = 3,
    tail: float = 0.2,
) -> dict[str, Any]:
    """First step after the peak from which the smoothed curve stays at or below the threshold.

    Threshold ``floor + frac · (peak − floor)``; ``floor`` defaults to the median of the last
    ``tail`` of the points. Returns ``step`` (None when the curve is empty, all NaN, never rises
    above its floor or ends above the threshold), ``threshold``, ``peak``, ``peak_step``,
    ``floor``, and the ``smoothed`` curve on ``steps`` (finite points only).
    """
    steps_a = np.asarray(steps)
    v = np.asarray(values, dtype=float)
    ok = np.isfinite(v)
    steps_a, v = steps_a[ok], v[ok]
    out: dict[str, Any] = {"step": None, "threshold": None, "peak": None, "peak_step": None}
    out.update(floor=floor, steps=steps_a.tolist(), smoothed=v.tolist())
    if len(v) == 0:
        return out
    v = moving_median(v, smooth) if smooth > 1 else v
    if floor is None:
        floor = float(np.median(v[-max(1, math.ceil(tail * len(v))) :]))
    peak_i = int(np.argmax(v))
    out.update(floor=floor, smoothed=v.tolist(), peak=float(v[peak_i]))
    out["peak_step"] = int(steps_a[peak_i])
    if v[peak_i] <= floor:
        return out
    thr = floor + frac * (v[peak_i] - floor)
    above = np.nonzero(v[peak_i:] > thr)[0]
    i = peak_i + (int(above[-1]) + 1 if len(above) else 0)
    out["threshold"] = float(thr)
    out["step"] = int(steps_a[i]) if i < len(v) else None
    return out


def settle_step(steps: Sequence[int], values: Sequence[float], frac: float, **kw: Any):
    """``settle(...)["step"]``: the stabilisation step alone (int or None)."""
    return settle(steps, values, frac, **kw)["step"]


def lead(emergence: int | None, settled: int | None) -> int | None:
    """Emergence minus stabilisation (positive: the subspaces settled first)."""
    return None if emergence is None or settled is None else int(emergence) - int(settled)
