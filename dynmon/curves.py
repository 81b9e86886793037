"""Learning-curve series the Monitor streams over logged scalars, behind one protocol.

The loss-autocorrelation curvature (docs/metrics.md#loss_autocorr_curv) and the norm-trajectory
curvature (docs/metrics.md#norm_curvature) are not metrics of the weights: they follow scalars
the run logs (``loss``, ``dynmon/weight_norm``). Each is a :class:`Series`, the detectors'
protocol (``keys``, ``update``, ``finalize``, ``state_dict`` / ``load_state_dict``) except that
``update`` returns rows to write rather than events. The Monitor keeps them in one list
(:func:`default_series`) and special-cases none.

Underneath are streaming versions, with fixed-size state, of the pure functions in
``dynmon.metrics.timeseries`` (``update(step, value) -> float | None``): each equals the batch
function at the same log.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dynmon.keys import key
from dynmon.metrics.timeseries import local_polyfit, window_curvature

__all__ = [
    "EMA",
    "AutocorrCurvature",
    "NormCurvature",
    "Series",
    "LossAutocorrSeries",
    "NormCurvatureSeries",
    "default_series",
]

Rows = dict[int, dict[str, float]]  # step -> {key: value} to write at that step


@runtime_checkable
class Series(Protocol):
    """What the Monitor calls: one learning-curve series reads the logged scalars in ``keys``.

    ``update(step, values, look=...)`` gets every written row that holds one of ``keys`` (``look``:
    whether the row is a look's) and returns the rows to write: a value for ``step`` joins that
    row, a value for an earlier step is written as its own row after it. ``name`` labels the
    series' state in ``Monitor.state_dict()``.
    """

    name: str
    keys: tuple[str, ...]

    def update(self, step: int, values: Mapping[str, float], *, look: bool = False) -> Rows: ...

    def finalize(self, step: int) -> Rows: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


# -- streaming calculators --------------------------------------------------------------------


class EMA:
    """Streaming exponential moving average with span ``span`` (α = 2/(span+1)); O(1) state."""

    def __init__(self, span: int) -> None:
        if span < 1:
            raise ValueError(f"EMA span must be >= 1, got {span}")
        self.span = int(span)
        self.alpha = 2.0 / (span + 1.0)
        self.value: float | None = None

    def update(self, x: float) -> float | None:
        """Fold in one value (non-finite values are skipped); return the average so far."""
        if np.isfinite(x):
            self.value = x if self.value is None else self.value + self.alpha * (x - self.value)
        return self.value

    def state_dict(self) -> dict[str, Any]:
        return {"span": self.span, "value": self.value}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.span = int(state["span"])
        self.alpha = 2.0 / (self.span + 1.0)
        self.value = state["value"]


class _Ring:
    """A fixed-capacity buffer of the last ``capacity`` (step, value) pairs, oldest first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.steps: list[float] = []
        self.values: list[float] = []

    def push(self, step: float, value: float) -> None:
        self.steps.append(float(step))
        self.values.append(float(value))
        if len(self.values) > self.capacity:
            del self.steps[0], self.values[0]  # O(capacity) list shift; capacities are small

    def __len__(self) -> int:
        return len(self.values)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": list(self.steps), "values": list(self.values)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = [float(s) for s in state["steps"]][-self.capacity :]
        self.values = [float(v) for v in state["values"]][-self.capacity :]


class _Streaming:
    """Shared plumbing: skip repeated or decreasing steps, keep the last step seen."""

    def __init__(self, capacity: int) -> None:
        self._ring = _Ring(capacity)
        self.last_step: int | None = None

    def _accept(self, step: int) -> bool:
        if self.last_step is not None and step <= self.last_step:
            return False  # a replayed or out-of-order log: ignore it (state stays consistent)
        self.last_step = int(step)
        return True

    def _base_state(self) -> dict[str, Any]:
        return {"ring": self._ring.state_dict(), "last_step": self.last_step}

    def _load_base(self, state: dict[str, Any]) -> None:
        self._ring.load_state_dict(state["ring"])
        self.last_step = state["last_step"]


class AutocorrCurvature(_Streaming):
    """Streaming :func:`autocorr_curvature` over the last ``window`` logs (memory: ``window``).

    ``update(step, loss)`` returns the curvature of the window ending at this log (None until
    ``window`` logs exist; NaN for constant windows), smoothed by an EMA of span ``ema_span`` if
    given; it equals ``autocorr_curvature(losses, window, smoothing=Smoothing("ema", ema_span))``
    at the same log. Steps that do not increase are ignored.
    """

    def __init__(
        self, window: int = 50, *, max_lag: int = 1, detrend: bool = True, ema_span: int = 1
    ) -> None:
        if window < max_lag + 3:
            raise ValueError(f"window must be >= max_lag + 3, got {window}")
        super().__init__(window)
        self.window, self.max_lag, self.detrend = int(window), int(max_lag), bool(detrend)
        self._ema = EMA(ema_span) if ema_span > 1 else None

    def update(self, step: int, value: float, *, compute: bool = True) -> float | None:
        """Add one logged loss; return the (smoothed) curvature, or None during warm-up.

        ``compute=False`` only folds the loss in and returns None (a caller that writes the
        value on some rows only); with EMA smoothing every window is computed regardless.
        """
        if not self._accept(step):
            return None
        self._ring.push(step, value)
        if len(self._ring) < self.window or (not compute and self._ema is None):
            return None
        seg = np.asarray(self._ring.values)[None, :]  # (1, window)
        raw = float(window_curvature(seg, self.max_lag, self.detrend)[0])
        if not np.isfinite(seg).all():
            raw = float("nan")
        if self._ema is None:
            return raw
        out = self._ema.update(raw)
        return float("nan") if out is None else out

    def state_dict(self) -> dict[str, Any]:
        state = self._base_state()
        state["ema"] = None if self._ema is None else self._ema.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_base(state)
        if self._ema is not None and state.get("ema") is not None:
            self._ema.load_state_dict(state["ema"])


class NormCurvature(_Streaming):
    """Streaming :func:`norm_curvature` with Savitzky–Golay smoothing (memory: ``window``).

    ``update(step, norm)`` returns the second derivative of the polynomial of ``order`` fitted
    to the last ``window`` logs, evaluated at their middle log (``window // 2`` logs ago): the
    batch function's value at that log. None until ``window`` usable logs exist.
    """

    def __init__(self, window: int = 7, *, order: int = 2, log_time: bool = False) -> None:
        order = max(int(order), 2)
        if window <= order:
            raise ValueError(f"window {window} too short for a polynomial of order {order}")
        super().__init__(window)
        self.window, self.order, self.log_time = int(window), order, bool(log_time)
        self.middle_step: int | None = None  # the step the last returned value belongs to

    def update(self, step: int, value: float) -> float | None:
        """Add one logged norm; return the curvature at the window's middle log, or None."""
        if (self.log_time and step <= 0) or not self._accept(step):
            return None
        self._ring.push(step, value)
        if len(self._ring) < self.window:
            return None
        steps = np.asarray(self._ring.steps)
        x = np.log(steps) if self.log_time else steps
        mid = self.window // 2
        curv = local_polyfit(self._ring.values, x, window=self.window, order=self.order, deriv=2)
        self.middle_step = int(steps[mid])
        return float(curv[mid])

    def state_dict(self) -> dict[str, Any]:
        return {**self._base_state(), "middle_step": self.middle_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._load_base(state)
        self.middle_step = state.get("middle_step")


# -- the series the Monitor runs ------------------------------------------------------------


class _OverStream:
    """A series over one streaming calculator (``self.stream``): its state is the stream's, and
    nothing waits for the end (a centred estimate's last ``window // 2`` logs have no window)."""

    stream: AutocorrCurvature | NormCurvature

    def finalize(self, step: int) -> Rows:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state)


class LossAutocorrSeries(_OverStream):
    """``dynmon/loss_autocorr_curv``: the autocorrelation curvature of the last ``window``
    logged losses, fed every logged loss and written on look rows only."""

    name = "loss_autocorr"
    output = key("loss_autocorr_curv")

    def __init__(self, window: int = 50, loss_key: str = "loss") -> None:
        self.keys = (loss_key,)
        self.stream = AutocorrCurvature(window=window)

    def update(self, step: int, values: Mapping[str, float], *, look: bool = False) -> Rows:
        """Fold in this row's loss; on a look, the curvature joins the row (once warmed up)."""
        if self.keys[0] not in values:
            return {}
        value = self.stream.update(step, values[self.keys[0]], compute=look)
        return {step: {self.output: value}} if look and value is not None else {}


class NormCurvatureSeries(_OverStream):
    """``dynmon/norm_curvature``: the curvature of the logged weight norm over the last
    ``window`` logs, written at the window's middle step (a centred estimate)."""

    name = "norm_curvature"
    output = key("norm_curvature")

    def __init__(self, window: int = 7, *, log_time: bool = False) -> None:
        self.keys = (key("weight_norm"),)
        self.stream = NormCurvature(window=window, log_time=log_time)

    def update(self, step: int, values: Mapping[str, float], *, look: bool = False) -> Rows:
        """Fold in this row's norm; the curvature belongs to the window's middle log."""
        if self.keys[0] not in values:
            return {}
        curv = self.stream.update(step, values[self.keys[0]])
        if curv is None or self.stream.middle_step is None:
            return {}
        return {self.stream.middle_step: {self.output: curv}}


def default_series(options: Mapping[str, Any]) -> list[Series]:
    """The Monitor's learning-curve series, from its options: ``autocorr_window`` (50 logged
    losses), ``norm_window`` (7 looks) and ``norm_log_time`` (False)."""
    return [
        LossAutocorrSeries(window=int(options.get("autocorr_window", 50))),
        NormCurvatureSeries(
            window=int(options.get("norm_window", 7)),
            log_time=bool(options.get("norm_log_time", False)),
        ),
    ]
