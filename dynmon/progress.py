"""Progress of a long loop: a tqdm bar on a terminal, plain log lines when output is piped.

Pack runs and ``dynmon analyze`` show step/total, the latest loss and the latest event. On a
terminal (``stream.isatty()``) that is a tqdm bar; in a log file or CI it is one line every
``every`` steps (default: 20 lines a run), at least every ``interval`` seconds while steps arrive,
at once when a new event arrives, and once at the end.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TextIO


def latest_event(events: Sequence[Mapping[str, Any]] | Mapping[str, Any] | None) -> str | None:
    """``"kind@step"`` of an event, or of the last of a list (``at``, when it happened, if the
    event says), or None. ``latest_event(monitor.last_event)`` is cheap to call every step."""
    if not events:
        return None
    ev = events if isinstance(events, Mapping) else events[-1]
    return f"{ev.get('kind', 'event')}@{ev.get('at', ev.get('step'))}"


def _fmt_loss(loss: float | None) -> str:
    return "" if loss is None else f"{loss:.4g}"


class Progress:
    """``Progress(total, desc)``; ``.update(step, loss=None, event=None)`` after each step.

    Args:
        total: the last step (the bar is full at ``step == total``); must be >= 0.
        desc: what runs, shown first (``"grokking"``, ``"analyze"``).
        enabled: False makes every call a no-op (e.g. on ranks other than 0).
        stream: where to write (default ``sys.stderr``); a tty gets a bar, anything else lines.
        every: steps between log lines when not a terminal (default ``total // 20``, at least 1).
        interval: seconds after which a log line is written anyway at the next update.
        clock: seconds counter (tests pass a fake one).
    """

    def __init__(
        self,
        total: int,
        desc: str,
        *,
        enabled: bool = True,
        stream: TextIO | None = None,
        every: int | None = None,
        interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if int(total) < 0:
            raise ValueError(f"Progress total must be >= 0 steps, got {total}")
        self.total = int(total)
        self.desc = desc
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.every = max(1, self.total // 20) if every is None else max(1, int(every))
        self.interval = float(interval)
        self._clock = clock
        self._start = self._last_time = clock()
        self._step: int | None = None
        self._last_logged: int | None = None
        self._loss: float | None = None
        self._event: str | None = None
        self._closed = not enabled
        self._bar: Any = self._make_bar() if enabled and _isatty(self.stream) else None

    def _make_bar(self) -> Any:
        try:
            from tqdm.auto import tqdm
        except ImportError:  # no tqdm: log lines on the terminal too
            return None
        return tqdm(
            total=self.total, desc=self.desc, file=self.stream, unit="step", dynamic_ncols=True
        )

    @property
    def is_bar(self) -> bool:
        """True when a tqdm bar draws (a terminal with tqdm installed)."""
        return self._bar is not None

    def update(self, step: int, loss: float | None = None, event: str | None = None) -> None:
        """Record that ``step`` is done; a new ``loss`` / ``event`` replaces the shown one."""
        if self._closed:
            return
        step = int(step)
        if loss is not None:
            self._loss = float(loss)
        new_event = event is not None and event != self._event
        if event is not None:
            self._event = event
        self._step = step
        if self._bar is not None:
            self._update_bar(step)
            return
        now = self._clock()
        due = (
            self._last_logged is None
            or step - self._last_logged >= self.every
            or now - self._last_time >= self.interval
            or step >= self.total
            or new_event
        )
        if due:
            self._log_line(step, now)

    def _update_bar(self, step: int) -> None:
        bar = self._bar
        post = []
        if self._loss is not None:
            post.append(f"loss={_fmt_loss(self._loss)}")
        if self._event is not None:
            post.append(f"event={self._event}")
        bar.set_postfix_str(" ".join(post), refresh=False)
        delta = min(step, self.total) - bar.n
        if delta > 0:
            bar.update(delta)  # redraws at most every tqdm mininterval
        else:
            bar.refresh()

    def line(self, step: int, now: float | None = None) -> str:
        """The log line: ``desc: step s/total (p%) loss x event e [t s, r steps/s]``."""
        now = self._clock() if now is None else now
        elapsed = now - self._start
        pct = 100.0 * step / self.total if self.total else 100.0
        parts = [f"{self.desc}: step {step}/{self.total} ({pct:.0f}%)"]
        if self._loss is not None:
            parts.append(f"loss {_fmt_loss(self._loss)}")
        if self._event is not None:
            parts.append(f"event {self._event}")
        rate = step / elapsed if elapsed > 0 else math.nan
        parts.append(f"[{elapsed:.1f}s, {rate:.3g} steps/s]")
        return " ".join(parts)

    def _log_line(self, step: int, now: float) -> None:
        self.stream.write(self.line(step, now) + "\n")
        self.stream.flush()
        self._last_logged, self._last_time = step, now

    def close(self) -> None:
        """Finish the bar, or write the last line if it was not written; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._step is not None and self._step != self._last_logged:
            self._log_line(self._step, self._clock())

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False
