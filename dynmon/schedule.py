"""When to look: schedules are plain ``Callable[[int], bool]`` that can be combined with ``|``."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


def _step_int(name: str, value: object, minimum: int | None = None) -> int:
    """``value`` as an int when it is a whole number (2.0 is fine, 2.7 and "10" are not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be an integer step count, got {value!r}")
    if not math.isfinite(value) or int(value) != value:
        raise ValueError(f"{name} must be a whole number, got {value!r} (steps are integers)")
    out = int(value)
    if minimum is not None and out < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return out


class Schedule:
    """A set of steps at which the Monitor looks; ``a | b`` is the union."""

    def __call__(self, step: int) -> bool:
        raise NotImplementedError

    def __or__(self, other: Schedule) -> Schedule:
        return Union((self, _as_schedule(other)))

    def __ror__(self, other: Schedule) -> Schedule:
        return Union((_as_schedule(other), self))


@dataclass(frozen=True)
class Every(Schedule):
    """Every ``k`` steps from ``start`` (``start`` included)."""

    k: int
    start: int = 0

    def __post_init__(self) -> None:
        if int(self.k) != self.k or self.k < 1:
            raise ValueError(f"every(k) needs a positive integer k, got {self.k!r}")

    def __call__(self, step: int) -> bool:
        return step >= self.start and (step - self.start) % self.k == 0


@dataclass(frozen=True)
class LogSpace(Schedule):
    """``num`` steps spaced evenly in log scale between the step numbers ``start`` and ``stop``.

    Unlike ``numpy.logspace`` the bounds are step numbers, not exponents, so
    ``logspace(1, 10_000, 40)`` looks densely early (where most change happens) and sparsely late.
    """

    start: int
    stop: int
    num: int

    def __post_init__(self) -> None:
        if self.start < 1 or self.stop < self.start or self.num < 1:
            raise ValueError(
                f"logspace(start, stop, num) needs 1 <= start <= stop and num >= 1 (step numbers,"
                f" not exponents); got start={self.start}, stop={self.stop}, num={self.num}"
            )
        lo, hi = math.log(self.start), math.log(self.stop)
        n = max(self.num - 1, 1)
        steps = {round(math.exp(lo + (hi - lo) * i / n)) for i in range(self.num)}
        object.__setattr__(self, "_steps", frozenset(steps))

    def __call__(self, step: int) -> bool:
        return step in self._steps  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Union(Schedule):
    """Looks whenever any of its parts looks."""

    parts: tuple[Schedule, ...]

    def __call__(self, step: int) -> bool:
        return any(p(step) for p in self.parts)


@dataclass(frozen=True)
class Steps(Schedule):
    """An explicit set of steps."""

    steps: frozenset[int]

    def __call__(self, step: int) -> bool:
        return step in self.steps


@dataclass(frozen=True)
class _Callable(Schedule):
    fn: object

    def __call__(self, step: int) -> bool:
        return bool(self.fn(step))  # type: ignore[operator]


def every(k: int, start: int = 0) -> Schedule:
    """Look every ``k`` steps, starting at ``start`` (whole numbers: ``every(2.7)`` is refused,
    not truncated).

    >>> [step for step in range(12) if every(5)(step)]
    [0, 5, 10]
    >>> s = every(100) | logspace(1, 1000, 4)  # the union looks when either part does
    >>> [step for step in range(301) if s(step)]
    [0, 1, 10, 100, 200, 300]
    """
    return Every(_step_int("every(k): k", k, 1), _step_int("every(k, start): start", start))


def logspace(start: int, stop: int, num: int) -> Schedule:
    """Look at ``num`` log-spaced steps between step ``start`` and step ``stop``.

    The bounds are step numbers, not exponents (unlike ``numpy.logspace``):

    >>> [step for step in range(2000) if logspace(1, 1000, 4)(step)]
    [1, 10, 100, 1000]
    """
    return LogSpace(
        _step_int("logspace: start", start),
        _step_int("logspace: stop", stop),
        _step_int("logspace: num", num),
    )


def _as_schedule(obj: object) -> Schedule:
    """Accept a Schedule, an int (every k), an iterable of steps or a ``Callable[[int], bool]``."""
    if isinstance(obj, Schedule):
        return obj
    if isinstance(obj, bool):
        raise TypeError("a schedule cannot be a bool; use dynmon.every(k) or a set of steps")
    if isinstance(obj, int):
        return every(obj)
    if callable(obj):
        return _Callable(obj)
    if isinstance(obj, (str, bytes)):
        raise TypeError(
            f"schedule {obj!r} is a string; pass dynmon.every(k) (e.g. every(10)), "
            "dynmon.logspace(start, stop, num), their union with |, an int k, a set of steps or "
            "a callable step -> bool"
        )
    try:
        items = list(obj)  # type: ignore[call-overload]
    except TypeError:
        raise TypeError(
            f"cannot use {obj!r} as a schedule: pass dynmon.every(k), dynmon.logspace(start, stop,"
            " num), their union with |, an int k, a set of steps or a callable step -> bool"
        ) from None
    return Steps(frozenset(_step_int(f"schedule step {s!r}", s) for s in items))


as_schedule = _as_schedule
