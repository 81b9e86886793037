"""Online event detection on logged scalars: plateaus, cliffs, onsets, saturation, grokking.

Every detector follows one small protocol (:class:`Detector`): the Monitor calls
``update(step, values)`` on each ``monitor.step`` with the scalars logged at that step (a
detector ignores steps that lack its keys), ``finalize(step)`` at ``close()``, and saves and
restores it with ``state_dict()`` / ``load_state_dict()``. Each returns events: plain dicts with

* ``step``: the step at which the event was detected (the step being logged when it fired);
* ``at``: the step the event is about (plateau start or end, steepest point of a cliff, start
  of a take-off, first step of a run at or above a threshold), never after ``step``;
* ``kind``, ``key``, ``value`` (the level or value the event is about) and a human ``message``,
  plus kind-specific fields (``start``, ``end``, ``level``, ``from``, ``to``, ``size``...).

Kinds: ``plateau_start``, ``plateau_end``, ``cliff`` (a fast drop), ``rise`` (a fast rise of a
loss), ``nan`` (first non-finite value), ``onset`` (a take-off), ``saturation``,
``memorization``, ``grokking`` and ``generalization`` (test accuracy reached the threshold
without a long delay after training accuracy).

Memory is bounded: the trend detectors keep the last ``2 × window`` logs and O(1) state besides,
however many steps they see. The segmentation is in :class:`dynmon.trend.Trend`; the detectors
only word events.

One file (~690 lines): the detectors share the wording helpers and the saved-state layout, and
default_detectors picks them by the key rules below them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

from dynmon.keys import is_dynmon_key
from dynmon.trend import Trend

__all__ = [
    "Detector",
    "PlateauConfig",
    "OnsetConfig",
    "PlateauCliffDetector",
    "OnsetDetector",
    "SaturationDetector",
    "GrokkingDetector",
    "default_detectors",
]

STATE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 states load with the new fields at their defaults


@runtime_checkable
class Detector(Protocol):
    """What the Monitor calls: one detector watches the scalars named in ``keys``."""

    keys: tuple[str, ...]

    def update(self, step: int, values: Mapping[str, float]) -> list[dict]: ...

    def finalize(self, step: int) -> list[dict]: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# -- configuration ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PlateauConfig:
    """Plateau and cliff detection on a loss-like scalar (tolerances are per smoothing window).

    ``window`` logs form the smoothing window: a least-squares line over them gives the level and
    the change across the window. A window is *flat* when that change is within ``flat_tol`` and
    a *fast move* when it exceeds ``fast_tol``, each bound raised to ``z_flat`` / ``z_fast``
    standard errors of the change (from a running, outlier-proof noise estimate), so noise alone
    neither breaks a plateau nor fakes a cliff. Slopes use the step numbers, so irregular
    logging is fine.

    * A plateau starts with a flat window (and lasts ``min_length`` steps before it is
      announced), back-dated by a CUSUM to where the level arrived. It ends when the level of
      the last quarter window has left it by ``drift_tol`` (a fast move alone, such as a noise
      burst that comes back, does not end it), back-dated to where the departure began.
    * A move is over once the level has held for half a window after its steepest point, or its
      rate fell below a fifth of its peak; a fast drop of at least ``min_drop`` is a *cliff*,
      reported then: within one window after the drop ends (for a drop sharper than the window,
      within one window of its steepest point). Plateau starts come within about one window of
      the end of the drop before them, plateau ends within half a window of the departure.
    * A drop much slower than the window (noisy losses) shows as a drift: raise ``window``.

    A steady decline is neither a cliff nor a plateau. A move must be fast against the curve's
    own trend: the window's change minus the change the slope of the window one window earlier
    predicts (so an exponential decay, a straight line on the log scale, and a power law, whose
    slope only eases, start no move; nor does anything in the first two windows, which have no
    earlier trend to compare with). A move whose slope has stopped easing, at under half its
    peak, is over: the curve has joined its new trend. A plateau is announced only once it is
    flat on the curve's time scale too: either it opened within two windows after a move ended
    (the level a drop arrived at), or its own stretch of at least two windows is flat in steps
    and, on the log scale, has a log-log slope d ln L / d ln t within ``trend_tol`` (with
    ``z_flat`` standard errors to spare), so a power law (slope −α) is not a plateau however
    slowly it falls late in a run.

    With ``log_scale`` (losses spanning decades) the series is ln(value + floor) and the
    tolerances are in log units (≈ fractions of the value); the floor, ``log_floor`` times the
    first value logged, only matters for a loss that reaches exactly zero (values at or below
    −floor are skipped): it is far below any loss a run logs, so a loss falling by decades keeps
    falling on this scale. Without it the tolerances are fractions of the current level
    (``relative``) or in the value's units. ``min_drop`` is a fraction of the level before the
    drop (value units if not ``relative``).
    """

    window: int = 50
    min_length: int = 0
    flat_tol: float = 0.03
    fast_tol: float = 0.05
    drift_tol: float = 0.1
    min_drop: float = 0.1
    z_flat: float = 2.0
    z_fast: float = 4.0
    log_scale: bool = True
    log_floor: float = 1e-12
    relative: bool = True
    report_rises: bool = True
    trend_tol: float = 0.2

    def __post_init__(self) -> None:
        _check_trend_config(self)
        if not 0.0 < self.min_drop < (1.0 if self.log_scale or self.relative else math.inf):
            raise ValueError(f"min_drop must be a fraction in (0, 1), got {self.min_drop}")
        if self.min_length < 0:
            raise ValueError(f"min_length must be >= 0, got {self.min_length}")
        if not 0.0 < self.log_floor < 1.0 or self.trend_tol <= 0:
            raise ValueError(
                f"need 0 < log_floor < 1 and trend_tol > 0, got {self.log_floor} and "
                f"{self.trend_tol}"
            )


@dataclass(frozen=True)
class OnsetConfig:
    """Take-off detection on a rising scalar such as an accuracy (tolerances in its units).

    An onset is a fast rise (fitted change over ``window`` logs above ``fast_tol`` and ``z_fast``
    standard errors) that has climbed at least ``min_rise`` above the level it left; it is
    emitted as soon as that is known, with ``at`` where the rise began. After an onset the next
    one needs a plateau or a fall in between. Accuracies logged in percent are recognised (a
    value above 1) and the tolerances scaled by 100.
    """

    window: int = 10
    min_rise: float = 0.1
    flat_tol: float = 0.01
    fast_tol: float = 0.02
    drift_tol: float = 0.05
    z_flat: float = 2.0
    z_fast: float = 4.0

    def __post_init__(self) -> None:
        _check_trend_config(self)
        if self.min_rise <= 0:
            raise ValueError(f"min_rise must be positive, got {self.min_rise}")


def _check_trend_config(c: PlateauConfig | OnsetConfig) -> None:
    if c.window < 4:
        raise ValueError(f"window must be at least 4 logs, got {c.window}")
    if not 0 < c.flat_tol <= c.fast_tol:
        raise ValueError(f"need 0 < flat_tol <= fast_tol, got {c.flat_tol} and {c.fast_tol}")
    if c.drift_tol <= 0 or not 0 <= c.z_flat <= c.z_fast:
        raise ValueError("need drift_tol > 0 and 0 <= z_flat <= z_fast")


# -- wording ----------------------------------------------------------------------------------


def _num(v: float) -> str:
    """A value for a message: 3 significant digits."""
    return f"{v:#.3g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"


def _step(t: float) -> int:
    return int(round(t))


class _ScalarDetector:
    """Shared plumbing of the one-key detectors: reading the value, skipping repeated steps."""

    keys: tuple[str, ...]

    def __init__(self, key: str) -> None:
        self.key = key
        self.keys = (key,)
        self.last_step: int | None = None

    def _value(self, step: int, values: Mapping[str, float]) -> float | None:
        """The value to use at this step, or None (key absent, or a step not after the last)."""
        if self.key not in values:
            return None
        if self.last_step is not None and step <= self.last_step:
            return None  # a replayed or out-of-order log: already seen
        self.last_step = int(step)
        return float(values[self.key])

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.key!r})"


class _TrendDetector(_ScalarDetector):
    """A one-key detector over a :class:`Trend`: one saved-state layout for all of them."""

    config: Any
    _trend: Trend

    def _own_state(self) -> dict:
        """The detector's fields beyond the shared ones (saved after them)."""
        return {}

    def _load_own_state(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`_own_state` saved."""

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "config": asdict(self.config),
            "trend": self._trend.state_dict(),
            "last_step": self.last_step,
            **self._own_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        _check_version(state, self)
        self._trend.load_state_dict(state["trend"])
        self.last_step = state["last_step"]
        self._load_own_state(state)


def _event(kind: str, key: str, step: int, at: float, value: float, message: str, **more: Any):
    return {
        "kind": kind,
        "key": key,
        "step": int(step),
        "at": _step(at),
        "value": value,
        "message": message,
        **more,
    }


class PlateauCliffDetector(_TrendDetector):
    """Plateaus, cliffs (fast drops) and rises of a loss-like scalar, online (see PlateauConfig).

    Events: ``plateau_start`` (``start``, ``level``), ``plateau_end`` (``start``, ``end``,
    ``level``, ``duration``, ``reason``; ``open`` at ``finalize`` for a plateau still running),
    ``cliff`` (``at`` = steepest point, ``start``, ``end``, ``from``, ``to``, ``size`` = drop in
    value, ``relative_size``), ``rise`` (the same for a fast rise, if ``report_rises``) and
    ``nan`` (the first non-finite value). Steps may be irregular: slopes use the step numbers.
    """

    def __init__(self, key: str = "loss", config: PlateauConfig | None = None) -> None:
        super().__init__(key)
        self.config = cfg = config or PlateauConfig()
        self._trend = Trend(
            cfg.window,
            cfg.flat_tol,
            cfg.fast_tol,
            cfg.drift_tol,
            cfg.z_flat,
            cfg.z_fast,
            cfg.min_length,
            relative=cfg.relative and not cfg.log_scale,
            min_move=-math.log1p(-cfg.min_drop) if cfg.log_scale else cfg.min_drop,
            detrend=True,
            trend_tol=cfg.trend_tol if cfg.log_scale else math.inf,
        )
        self._nan_seen = False
        self.skipped = 0  # values that could not be used (non-finite, or ≤ −floor on a log scale)
        self.floor: float | None = None  # log-scale offset, set by the first positive value

    def _y(self, v: float) -> float | None:
        """The value on the detector's scale, or None when it has no place there."""
        if not self.config.log_scale:
            return v
        if self.floor is None:
            if v <= 0:
                return None
            self.floor = self.config.log_floor * v
        return math.log(v + self.floor) if v + self.floor > 0 else None

    def _v(self, y: float) -> float:
        return math.exp(y) - (self.floor or 0.0) if self.config.log_scale else y

    def update(self, step: int, values: Mapping[str, float]) -> list[dict]:
        """Feed one logged value; return the events it completes."""
        v = self._value(step, values)
        if v is None:
            return []
        y = self._y(v) if math.isfinite(v) else None
        if y is None:
            self.skipped += 1
            if not math.isfinite(v) and not self._nan_seen:
                self._nan_seen = True
                msg = f"{self.key} became {v} at step {step:,}"
                return [_event("nan", self.key, step, step, str(v), msg)]
            return []
        events: list[dict] = []
        for kind, info in self._trend.update(float(step), y):
            events.extend(self._word(kind, info, step))
        return events

    def _word(self, kind: str, info: dict[str, Any], step: int) -> list[dict]:
        key, span = self.key, info.get("span")
        if kind == "plateau_start":
            s, lv = info["start"], self._v(info["level"])
            msg = f"{key} plateau started at step {_step(s):,} at {_num(lv)}"
            ev = _event(kind, key, step, s, lv, msg, start=_step(s), level=lv)
            ev["window_steps"] = _step(span)
            return [ev]
        if kind == "plateau_end":
            return [self._plateau_end(info, step, open_=False)]
        if kind == "move_end":
            return self._move(info, step, open_=False)
        return []

    def _plateau_end(self, info: dict[str, Any], step: int, open_: bool) -> dict:
        s, e, lv = _step(info["start"]), _step(info["end"]), self._v(info["level"])
        if open_:
            msg = f"{self.key} plateau at {_num(lv)} since step {s:,} still open at step {e:,}"
        else:
            msg = f"{self.key} plateau at {_num(lv)} ended at step {e:,} (from step {s:,})"
        ev = _event("plateau_end", self.key, step, e, lv, msg, start=s, end=e, level=lv)
        ev.update(duration=e - s, reason=info.get("reason", "open"), open=open_)
        return ev

    def _move(self, info: dict[str, Any], step: int, open_: bool) -> list[dict]:
        a, b = self._v(info["from"]), self._v(info["to"])
        down = info["sign"] < 0
        # where the trend it left would have taken the curve: the move's size is judged beyond it
        expected = self._v(info["from"] + info.get("trend", 0.0) * (info["end"] - info["start"]))
        if self.config.log_scale or self.config.relative:
            rel = (a - b) / abs(a) if a != 0 else math.inf
            beyond = (expected - b) / abs(expected) if expected != 0 else math.inf
        else:
            rel, beyond = a - b, expected - b
        if (beyond if down else -beyond) < self.config.min_drop:
            return []
        if not (down or self.config.report_rises):
            return []
        kind = "cliff" if down else "rise"
        s, e, at = _step(info["start"]), _step(info["end"]), info["steepest"]
        verb = "fell" if down else "rose"
        msg = (
            f"{self.key} {verb} {_num(a)} → {_num(b)} ({-rel:+.0%}) between steps {s:,} and "
            f"{e:,} (steepest at {_step(at):,})" + (", still moving at close" if open_ else "")
        )
        ev = _event(kind, self.key, step, at, b, msg, start=s, end=e, to=b, size=a - b)
        ev.update({"from": a, "relative_size": rel, "steepest": _step(at), "open": open_})
        return [ev]

    def finalize(self, step: int) -> list[dict]:
        """At close: a plateau still running (``open``), or a move still in progress."""
        tr = self._trend
        events: list[dict] = []
        if tr.plateau is not None and tr.plateau["announced"]:
            p = tr.plateau
            info = {"start": p["start"], "end": p["last"], "level": p["sum"] / p["count"]}
            events.append(self._plateau_end(info, step, open_=True))
        mv = tr.open_move()
        if mv is not None:
            events.extend(self._move(mv, step, open_=True))
        return events

    def _own_state(self) -> dict:
        return {"nan_seen": self._nan_seen, "skipped": self.skipped, "floor": self.floor}

    def _load_own_state(self, state: Mapping[str, Any]) -> None:
        self._nan_seen = bool(state["nan_seen"])
        self.skipped = int(state["skipped"])
        self.floor = state["floor"]


def _check_version(state: Mapping[str, Any], det: Any) -> None:
    if state.get("version") not in READABLE_VERSIONS:
        raise ValueError(f"{det!r}: unknown state version {state.get('version')!r}")


class _PercentAware:
    """Accuracies logged in percent: the first value above 1 switches the units to percent."""

    unit: float = 1.0

    def _see(self, v: float) -> None:
        if self.unit == 1.0 and v > 1.0 + 1e-9:
            self.unit = 100.0


class OnsetDetector(_TrendDetector, _PercentAware):
    """Take-offs of a rising scalar (an accuracy leaving its floor), online (see OnsetConfig).

    Emits ``onset`` with ``at`` = where the rise began, ``from`` (the level it left), ``level``
    (the value when detected) and ``rise`` so far, as soon as the rise exceeds ``min_rise``.
    """

    def __init__(self, key: str, config: OnsetConfig | None = None) -> None:
        super().__init__(key)
        self.config = cfg = config or OnsetConfig()
        self._trend = Trend(
            cfg.window, cfg.flat_tol, cfg.fast_tol, cfg.drift_tol, cfg.z_flat, cfg.z_fast
        )
        self.unit = 1.0
        self._armed = True  # re-armed by a plateau or a fall after an onset

    def update(self, step: int, values: Mapping[str, float]) -> list[dict]:
        """Feed one logged value; return an onset when a take-off is confirmed."""
        v = self._value(step, values)
        if v is None or not math.isfinite(v):
            return []
        self._see(v)
        self._trend.unit = self.unit
        events: list[dict] = []
        for kind, info in self._trend.update(float(step), v):
            if kind == "plateau_start" or (kind == "move_start" and info["sign"] < 0):
                self._armed = True
        mv = self._trend.move
        origin = self._trend.t_origin
        if mv is not None and mv["start"] <= (origin if origin is not None else -math.inf):
            mv = None  # rising since the first log: where it took off is not in the data
        if mv is not None and mv["sign"] > 0 and self._armed:
            rise = mv["extreme"] - mv["from"]
            if rise >= self.config.min_rise * self.unit:
                self._armed = False
                a, lv = mv["from"], mv["extreme"]
                msg = (
                    f"{self.key} took off at step {_step(mv['start']):,} from {_num(a)} "
                    f"(now {_num(lv)})"
                )
                ev = _event("onset", self.key, step, mv["start"], lv, msg, level=lv, rise=rise)
                ev["from"] = a
                events.append(ev)
        return events

    def finalize(self, step: int) -> list[dict]:
        return []

    def _own_state(self) -> dict:
        return {"unit": self.unit, "armed": self._armed}

    def _load_own_state(self, state: Mapping[str, Any]) -> None:
        self.unit = float(state["unit"])
        self._armed = bool(state["armed"])


class _Hold:
    """A threshold crossing confirmed after ``hold`` consecutive logs at or above it."""

    def __init__(self, hold: int) -> None:
        if hold < 1:
            raise ValueError(f"hold must be >= 1 log, got {hold}")
        self.hold = hold
        self.run = 0
        self.first: int | None = None  # first step of the current run at or above

    def see(self, step: int, above: bool) -> bool:
        """True on the log that completes the run."""
        if not above:
            self.run, self.first = 0, None
            return False
        if self.run == 0:
            self.first = step
        self.run += 1
        return self.run == self.hold

    def state_dict(self) -> dict:
        return {"run": self.run, "first": self.first}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.run, self.first = int(state["run"]), state["first"]


class SaturationDetector(_ScalarDetector, _PercentAware):
    """``saturation``: the value reached ``threshold`` and held it for ``hold`` logs (once).

    ``at`` is the first step of the run that held; the detection step is ``hold − 1`` logs later.
    A value logged in percent (above 1) scales the threshold by 100.
    """

    def __init__(self, key: str, threshold: float = 0.999, hold: int = 3) -> None:
        super().__init__(key)
        self.threshold, self.unit = float(threshold), 1.0
        self._hold = _Hold(hold)
        self.done = False

    def update(self, step: int, values: Mapping[str, float]) -> list[dict]:
        v = self._value(step, values)
        if v is None or self.done or not math.isfinite(v):
            return []
        self._see(v)
        thr = self.threshold * self.unit
        if not self._hold.see(step, v >= thr):
            return []
        self.done = True
        at = self._hold.first
        assert at is not None
        msg = f"{self.key} saturated: ≥ {_num(thr)} from step {at:,}"
        return [_event("saturation", self.key, step, at, v, msg, threshold=thr)]

    def finalize(self, step: int) -> list[dict]:
        return []

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "last_step": self.last_step,
            "unit": self.unit,
            "hold": self._hold.state_dict(),
            "done": self.done,
        }

    def load_state_dict(self, state: dict) -> None:
        _check_version(state, self)
        self.last_step, self.unit = state["last_step"], float(state["unit"])
        self._hold.load_state_dict(state["hold"])
        self.done = bool(state["done"])


class GrokkingDetector(_PercentAware):
    """Memorisation, then generalisation long after it: the grokking signature (Power et al.).

    ``memorization`` when training accuracy reaches ``train_threshold`` (default: ``threshold``)
    and holds it for ``hold`` logs; ``grokking`` when test accuracy then reaches ``threshold``
    (held likewise) at ``delay_ratio = grokking_step / memorization_step ≥ min_delay_ratio``
    (both the first steps of the held runs, which are the events' ``at``); otherwise
    ``generalization`` (test accuracy came soon after, or before, training accuracy).
    """

    def __init__(
        self,
        train_key: str = "train/acc",
        test_key: str = "test/acc",
        threshold: float = 0.95,
        *,
        train_threshold: float | None = None,
        min_delay_ratio: float = 2.0,
        hold: int = 3,
    ) -> None:
        self.train_key, self.test_key = train_key, test_key
        self.keys = (train_key, test_key)
        self.threshold = float(threshold)
        self.train_threshold = float(threshold if train_threshold is None else train_threshold)
        self.min_delay_ratio = float(min_delay_ratio)
        self.unit = 1.0
        self._train, self._test = _Hold(hold), _Hold(hold)
        self.memorization_step: int | None = None
        self.grokking_step: int | None = None
        self.last_step: int | None = None

    def update(self, step: int, values: Mapping[str, float]) -> list[dict]:
        """Feed the accuracies logged at this step (either may be missing)."""
        if self.last_step is not None and step <= self.last_step:
            return []
        self.last_step = int(step)
        events: list[dict] = []
        tr, te = values.get(self.train_key), values.get(self.test_key)
        for v in (tr, te):
            if v is not None and math.isfinite(v):
                self._see(float(v))
        if self.memorization_step is None and tr is not None and math.isfinite(tr):
            thr = self.train_threshold * self.unit
            if self._train.see(step, tr >= thr):
                at = self._train.first
                assert at is not None
                self.memorization_step = at
                msg = f"{self.train_key} reached {_num(thr)} at step {at:,}: training set memorised"
                events.append(
                    _event("memorization", self.train_key, step, at, tr, msg, threshold=thr)
                )
        if self.grokking_step is None and te is not None and math.isfinite(te):
            thr = self.threshold * self.unit
            if self._test.see(step, te >= thr):
                events.append(self._generalised(step, te, thr))
        return events

    def _generalised(self, step: int, value: float, thr: float) -> dict:
        at = self._test.first
        assert at is not None
        self.grokking_step = at
        mem = self.memorization_step
        ratio = at / mem if mem else None
        grok = ratio is not None and ratio >= self.min_delay_ratio
        kind = "grokking" if grok else "generalization"
        if grok:
            msg = (
                f"{self.test_key} reached {_num(thr)} at step {at:,}, {ratio:.1f}× after the "
                f"training set was memorised (step {mem:,}): grokking"
            )
        elif ratio is None:
            msg = f"{self.test_key} reached {_num(thr)} at step {at:,}, before memorisation"
        else:
            msg = f"{self.test_key} reached {_num(thr)} at step {at:,}, {ratio:.1f}× memorisation"
        ev = _event(kind, self.test_key, step, at, value, msg, threshold=thr, delay_ratio=ratio)
        ev.update(memorization_step=mem, grokking_step=at)
        return ev

    def finalize(self, step: int) -> list[dict]:
        return []

    def state_dict(self) -> dict:
        return {
            "version": STATE_VERSION,
            "unit": self.unit,
            "train": self._train.state_dict(),
            "test": self._test.state_dict(),
            "memorization_step": self.memorization_step,
            "grokking_step": self.grokking_step,
            "last_step": self.last_step,
        }

    def load_state_dict(self, state: dict) -> None:
        _check_version(state, self)
        self.unit = float(state["unit"])
        self._train.load_state_dict(state["train"])
        self._test.load_state_dict(state["test"])
        self.memorization_step = state["memorization_step"]
        self.grokking_step = state["grokking_step"]
        self.last_step = state["last_step"]

    def __repr__(self) -> str:
        return f"GrokkingDetector({self.train_key!r}, {self.test_key!r})"


# -- defaults ---------------------------------------------------------------------------------

_LOSS = re.compile(r"loss", re.IGNORECASE)
_ACC = re.compile(r"(?<![a-z])acc(uracy)?(?![a-z])", re.IGNORECASE)
_TRAIN = re.compile(r"train(ing)?", re.IGNORECASE)
_TEST_NAMES = ("test", "val", "valid", "validation", "eval")


def is_loss_key(key: str) -> bool:
    """``loss`` anywhere in the name (``loss``, ``train/loss``, ``val_loss``...)."""
    return bool(_LOSS.search(key))


def is_accuracy_key(key: str) -> bool:
    """``acc`` or ``accuracy`` as a word of the name (not ``grad_accum``)."""
    return bool(_ACC.search(key)) and not is_loss_key(key)


def _grokking_pair(keys: list[str]) -> tuple[str, str] | None:
    """A (train, test) accuracy pair whose names differ only in train ↔ test/val/eval."""
    accs = [k for k in keys if is_accuracy_key(k)]
    for tr in accs:
        m = _TRAIN.search(tr)
        if m is None:
            continue
        for name in _TEST_NAMES:
            te = tr[: m.start()] + name + tr[m.end() :]
            if te in accs:
                return tr, te
    return None


def default_detectors(
    keys: Iterable[str],
    *,
    plateau: PlateauConfig | None = None,
    onset: OnsetConfig | None = None,
    threshold: float = 0.95,
) -> list[Detector]:
    """Detectors for the logged keys: plateau/cliff per loss, onset and saturation per accuracy.

    Plus a :class:`GrokkingDetector` (at ``threshold``) when a training and a test (or
    validation) accuracy are both logged. Keys under ``dynmon/`` (the Monitor's own metrics) are
    left out. Deterministic in the set of keys, so the Monitor can call it again as new keys
    appear. ``plateau`` / ``onset`` override the configurations (e.g. a smaller ``window`` for
    scalars logged every few steps in a short run).
    """
    names = sorted({k for k in keys if not is_dynmon_key(k)})
    dets: list[Detector] = []
    for k in names:
        if is_loss_key(k):
            dets.append(PlateauCliffDetector(k, plateau))
        elif is_accuracy_key(k):
            dets.extend([OnsetDetector(k, onset), SaturationDetector(k)])
    pair = _grokking_pair(names)
    if pair is not None:
        dets.append(GrokkingDetector(*pair, threshold=threshold))
    return dets
