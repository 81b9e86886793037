"""Phase boundaries of a grokking run, and how early each signal moved before grokking.

Boundaries (all on the logged curves, ``log_every`` granularity; T = ``config.threshold``):

- **memorisation**: the first logged step with train accuracy ≥ T. **grokking**: the first
  logged step with test accuracy ≥ T. Both online: ``dynmon.events.GrokkingDetector`` (the first
  of 3 consecutive logs ≥ T, its events' ``at``; confirmed 2 logs later, its events' ``step``).
  The summary also reports them
  recomputed from the curves (``*_curve``), and the first step with train accuracy 100%.
- **circuit formation** (Nanda et al.: the restricted loss starts to fall while the test loss is
  still high): the first step at or after memorisation at which the restricted loss has fallen
  ``circuit_drop`` (10%) below its running maximum since memorisation, while test accuracy is
  still below T. Online (``circuit_formation_online``) with the key frequencies of the model at
  that step; in hindsight (``circuit_formation``) with the final model's key frequencies, as in the
  paper, from the logits' coefficients kept at every logged step.
- **cleanup** (the weight norm falls sharply until grokking): with r_g the fall rate of the
  weight norm at grokking, −dΣ‖θ‖²/dt (centred differences of its 3-point running median, the
  largest within 2 logs of grokking), cleanup starts where the stretch that ends at grokking and
  keeps a fall rate ≥ r_g / 2 begins (not before circuit formation). Known only once grokking is
  reached: hindsight.
- **half-fall steps** (``restricted_loss_half_step``, ``test_loss_half_step``): the first step
  after memorisation at which a loss is below half its largest value between memorisation and
  grokking. "The restricted loss falls before the test loss" compares these two.

"Moved" (lead times, ``moved_step``): with s_m the memorisation and s_g the grokking step and
w = max(10% of s_g − s_m, the span of 3 logged points), the signal's post-memorisation *level* b
is its median over [s_m, s_m + w], its *noise* σ = 1.4826·MAD/√2 of its first differences over
that window (a smooth trend is not noise), its *total change*
Δ = (median over [s_g, s_g + w]) − b. The signal moved at the first step ≥ s_m at which its
3-point running median departs from b by more than max(3σ, 10%·|Δ|) (in either direction, or
in the direction asked) and stays beyond for 3 consecutive logged points. Lead = s_g − moved
step (positive: before grokking); ``lead_frac`` = lead / (s_g − s_m), 1 meaning "moved at
memorisation". A signal whose |Δ| is below 3σ has no moved step. Sharpness, which falls by
decades after memorisation, is judged on log10.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dynmon.metrics.timeseries import moving_median

CIRCUIT_DROP = 0.10  # restricted loss below (1 - drop) x running max since memorisation
CLEANUP_RATE = 0.5  # weight-norm fall rate >= this x its rate at grokking
MOVE_K = 3.0  # robust standard deviations
MOVE_FRAC = 0.10  # of the total change
MOVE_PERSIST = 3  # consecutive logged points


def first_at_or_above(
    steps: Sequence[int], values: Sequence[float], threshold: float
) -> int | None:
    """First step whose value is ≥ threshold (None if never)."""
    for s, v in zip(steps, values, strict=True):
        if v >= threshold:
            return int(s)
    return None


def _window(steps: np.ndarray, start: int, width: float) -> np.ndarray:
    """Indices of logged points in [start, start + width], at least 3 from start on."""
    after = np.nonzero(steps >= start)[0]
    inside = after[steps[after] <= start + width]
    return after[:3] if len(inside) < 3 else inside


def moved_step(
    steps: Sequence[int],
    values: Sequence[float],
    memorization_step: int,
    grokking_step: int,
    direction: str = "any",
    k: float = MOVE_K,
    frac: float = MOVE_FRAC,
    persist: int = MOVE_PERSIST,
    log: bool = False,
) -> dict[str, Any]:
    """When a signal first moved after memorisation (definition in the module docstring).

    Returns ``{"moved_step", "lead", "lead_frac", "level", "change", "noise", "threshold",
    "direction", "scale"}``; ``moved_step`` and ``lead`` are None when the signal never moved.
    ``log`` judges log10 of the signal (for positive signals that span decades, e.g.
    sharpness); level, change, noise and threshold are then in decades.
    """
    s = np.asarray(steps, dtype=float)
    x = np.asarray(values, dtype=float)
    if log:
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.where(x > 0, np.log10(np.where(x > 0, x, 1.0)), np.nan)
    keep = np.isfinite(x)
    s, x = s[keep], x[keep]
    out: dict[str, Any] = {
        "moved_step": None,
        "lead": None,
        "direction": direction,
        "scale": "log10" if log else "linear",
    }
    if len(s) < 3 or memorization_step is None or grokking_step is None:
        return out
    width = max(0.1 * (grokking_step - memorization_step), 0.0)
    base = _window(s, memorization_step, width)
    after = _window(s, grokking_step, width)
    if len(base) == 0 or len(after) == 0:
        return out
    level = float(np.median(x[base]))
    diffs = np.diff(x[base])  # noise from first differences: a smooth trend does not count
    noise = float(1.4826 * np.median(np.abs(diffs - np.median(diffs))) / np.sqrt(2))
    change = float(np.median(x[after])) - level
    threshold = max(k * noise, frac * abs(change))
    out.update(level=level, change=change, noise=noise, threshold=threshold)
    if abs(change) <= k * noise and direction == "any":
        return out
    smooth = moving_median(x, 3)
    dev = smooth - level
    if direction == "down":
        beyond = dev < -threshold
    elif direction == "up":
        beyond = dev > threshold
    else:
        beyond = np.abs(dev) > threshold
    beyond &= s >= memorization_step
    run = 0
    for i, b in enumerate(beyond):
        run = run + 1 if b else 0
        if run >= persist or (b and i == len(beyond) - 1):
            step = int(s[i - run + 1])
            out["moved_step"] = step
            out["lead"] = int(grokking_step - step)
            span = grokking_step - memorization_step
            out["lead_frac"] = out["lead"] / span if span > 0 else None
            break
    return out


def circuit_formation_step(
    steps: Sequence[int],
    restricted: Sequence[float],
    test_acc: Sequence[float],
    memorization_step: int | None,
    threshold: float,
    drop: float = CIRCUIT_DROP,
) -> int | None:
    """First step ≥ memorisation where the restricted loss is ``drop`` below its running max
    since memorisation while test accuracy < threshold (the online rule, replayed)."""
    if memorization_step is None:
        return None
    peak = -np.inf
    for s, r, a in zip(steps, restricted, test_acc, strict=True):
        if s < memorization_step or not np.isfinite(r):
            continue
        peak = max(peak, r)
        if r <= (1 - drop) * peak and a < threshold:
            return int(s)
    return None


def cleanup_step(
    steps: Sequence[int],
    weight_norm: Sequence[float],
    start: int | None,
    grokking_step: int | None,
    rate: float = CLEANUP_RATE,
) -> int | None:
    """Start of the sharp weight-norm fall that runs into grokking (hindsight: needs grokking).

    With the fall rate −dW/dt (centred differences of the 3-point running median) and r_g its
    largest value within 2 logs of grokking, cleanup starts at the first step of the contiguous
    stretch, ending at grokking and beginning no earlier than ``start``, over which the rate
    stays ≥ ``rate`` × r_g. Earlier falls (the relaxation right after memorisation) are cut off
    by the slow stretch between them and do not count. None if the weight norm is not falling at
    grokking.
    """
    if start is None or grokking_step is None:
        return None
    s = np.asarray(steps, dtype=float)
    if len(s) < 3 or grokking_step not in set(s.tolist()):
        return None
    w = moving_median(weight_norm, 3)
    fall = np.full_like(w, np.nan)
    fall[1:-1] = -(w[2:] - w[:-2]) / (s[2:] - s[:-2])  # centred −dW/dt
    g = int(np.nonzero(s == grokking_step)[0][0])
    near = fall[max(0, g - 2) : g + 3]
    if not np.isfinite(near).any() or np.nanmax(near) <= 0:
        return None
    floor = rate * float(np.nanmax(near))
    i = g
    while i - 1 >= 0 and s[i - 1] >= start and fall[i - 1] >= floor:
        i -= 1
    return int(s[i])


def half_fall_step(
    steps: Sequence[int],
    values: Sequence[float],
    memorization_step: int | None,
    grokking_step: int | None,
) -> int | None:
    """First step ≥ memorisation at which a loss is below half its largest value over
    [memorisation, grokking]: when it has done half of its fall."""
    if memorization_step is None or grokking_step is None:
        return None
    pairs = [(t, v) for t, v in zip(steps, values, strict=True) if np.isfinite(v)]
    inside = [v for t, v in pairs if memorization_step <= t <= grokking_step]
    if not inside:
        return None
    top = max(inside)
    return next((int(t) for t, v in pairs if t >= memorization_step and v < top / 2), None)


@dataclass
class CircuitTracker:
    """Online circuit formation (``circuit_formation_online``), one ``update`` per logged step.

    Memorisation and grokking are ``dynmon.events.GrokkingDetector``'s. The peak of the restricted
    loss is tracked from the first log with train accuracy ≥ ``threshold``, not from the
    detector's held memorisation, which is confirmed 2 logs late and would miss the peak.
    """

    threshold: float = 0.95
    drop: float = CIRCUIT_DROP
    circuit_step: int | None = None
    _memorised: bool = field(default=False, repr=False)
    _peak: float = field(default=-np.inf, repr=False)

    def update(self, step: int, values: dict[str, float]) -> list[dict[str, Any]]:
        """The ``circuit_formation_online`` event (at most once) for this logged step's values."""
        train_acc, test_acc = values.get("train/acc"), values.get("test/acc")
        self._memorised = self._memorised or (train_acc is not None and train_acc >= self.threshold)
        restricted = values.get("restricted_loss")
        if (
            not self._memorised
            or self.circuit_step is not None
            or restricted is None
            or not np.isfinite(restricted)
        ):
            return []
        self._peak = max(self._peak, restricted)
        if restricted > (1 - self.drop) * self._peak or (test_acc or 0.0) >= self.threshold:
            return []
        self.circuit_step = step
        return [
            {
                "kind": "circuit_formation_online",
                "step": step,
                "restricted_loss": restricted,
                "peak": self._peak,
                "test_acc": test_acc,
                "message": "restricted loss (current key frequencies) fell "
                f"{self.drop:.0%} below its post-memorisation peak while test accuracy "
                f"< {self.threshold:.0%}",
            }
        ]
