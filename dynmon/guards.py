"""The Monitor's guards: its constructor's argument checks, a metric's returned value checked
against ``Output``, heads a per-head metric cannot use, and the watchdog on slow metrics.

Kept apart from ``dynmon.monitor`` so the Monitor reads as scheduling, gathering and logging.
"""

from __future__ import annotations

import math
import os
import threading
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
from torch import Tensor, nn

from dynmon.metrics.spec import Output

__all__ = ["Watchdog", "check_monitor_args", "check_output", "degenerate_heads"]


def check_output(name: str, out: Any) -> Output | None:
    """The metric's result if it has the shape of an ``Output``; a ``TypeError`` saying what
    came back otherwise (isolated like any failing metric)."""
    if out is None:
        return None
    if not isinstance(out, Output):
        raise TypeError(
            f"metric {name!r} returned a {type(out).__name__}, not a dynmon Output; return "
            "Output(scalars={key: value}, arrays={key: tensor})"
        )
    if not isinstance(out.scalars, Mapping) or not isinstance(out.arrays, Mapping):
        raise TypeError(f"metric {name!r}: Output.scalars and Output.arrays must be dicts")
    for k, v in out.scalars.items():
        ok = isinstance(v, Tensor) and v.numel() == 1
        ok = ok or (
            isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
        )
        if not ok:
            what = f"a tensor of shape {tuple(v.shape)}" if isinstance(v, Tensor) else repr(v)
            raise TypeError(f"metric {name!r}: scalar {k!r} is {what}; give one number")
    for k, v in out.arrays.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"metric {name!r}: array {k!r} is a {type(v).__name__}, not a tensor")
    return out


class Watchdog:
    """Warn from a timer thread when a metric runs past ``timeout_s``; ``elapsed`` afterwards.

    Python cannot interrupt the metric: training waits for it either way. The warning only says
    which metric is holding the look up; the Monitor switches it off once it returns.
    """

    def __init__(self, name: str, step: int, timeout_s: float) -> None:
        self.name, self.step, self.timeout_s = name, step, timeout_s
        self.elapsed = 0.0
        self._timer = threading.Timer(timeout_s, self._bark)
        self._timer.daemon = True

    def _bark(self) -> None:
        warnings.warn(
            f"dynmon: metric {self.name!r} has run for more than metric_timeout_s="
            f"{self.timeout_s:g} s at step {self.step} (pid {os.getpid()}); Python cannot "
            "interrupt it, so training waits until it returns; it is then switched off",
            RuntimeWarning,
            2,
        )

    def __enter__(self) -> Watchdog:
        self._start = time.perf_counter()
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()
        self.elapsed = time.perf_counter() - self._start


def degenerate_heads(layers: list[Any]) -> str | None:
    """Why per-head metrics cannot run on these extracted heads (None: they can)."""
    for h in layers:
        H, D, dh = h.n_heads, h.d_model, h.d_head
        if min(H, D, dh) < 1:
            return (
                f"attention layer {h.name} has n_heads={H}, d_model={D}, d_head={dh}: a head "
                "needs at least one dimension of each"
            )
        if tuple(h.W_Q.shape) != (H, D, dh) or tuple(h.W_O.shape) != (H, dh, D):
            return (
                f"attention layer {h.name}: W_Q {tuple(h.W_Q.shape)} / W_O {tuple(h.W_O.shape)} "
                f"do not match n_heads={H}, d_model={D}, d_head={dh} ([H, D, dh] / [H, dh, D])"
            )
    return None


def check_monitor_args(
    model: Any, run_dir: Any, strict: Any, options: Any, seed: Any, reference_step: Any
) -> None:
    """Refuse arguments of the wrong kind at construction, saying what was expected."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"Monitor(model=...) needs a torch nn.Module, got a {type(model).__name__}")
    if run_dir is not None and not isinstance(run_dir, (str, os.PathLike)):
        raise TypeError(f"run_dir must be a folder path (str or Path), got {run_dir!r}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict must be True or False, got {strict!r}")
    if options is not None and not isinstance(options, Mapping):
        raise TypeError(f"options must be a dict of metric options, got {options!r}")

    def whole(v: Any) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)

    if not whole(seed):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if reference_step is not None and not whole(reference_step):
        raise TypeError(f"reference_step must be an int step (or None), got {reference_step!r}")
    opts = dict(options or {})
    timeout = opts.get("metric_timeout_s")
    if timeout is not None and (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not math.isfinite(timeout)
        or timeout <= 0
    ):
        raise ValueError(
            f"options['metric_timeout_s'] must be a positive number of seconds (or None: off), "
            f"got {timeout!r}"
        )
    threads = opts.get("threads", 1)
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
    ):
        raise ValueError(
            f"options['threads'] must be a positive int (or None: the training's), got {threads!r}"
        )
