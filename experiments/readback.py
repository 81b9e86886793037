"""A pack's view of its own run folder, read back through ``dynmon.load_run`` (no hand parser).

The packs' summaries use dynmon's logged scalars as ``[(step, value)]`` lists of finite values:
a NaN or infinite value (written as ``"NaN"``/``"±Infinity"``) is a missing point, not a number
to average or plot.
"""

from __future__ import annotations

import math
from pathlib import Path

from dynmon.keys import is_dynmon_key
from dynmon.runfolder import METRICS, Run, load_run


def finite_series(run: Run, key: str) -> tuple[list[int], list[float]]:
    """``(steps, values)`` of one logged scalar, sorted by step, non-finite values left out."""
    steps, values = run.series(key)
    pairs = [
        (s, v) for s, v in zip(steps.tolist(), values.tolist(), strict=True) if math.isfinite(v)
    ]
    return [s for s, _ in pairs], [v for _, v in pairs]


def dynmon_series(run_dir: Path | None) -> dict[str, list[tuple[int, float]]]:
    """Every dynmon scalar logged so far as ``{key: [(step, value)]}`` (finite values only);
    empty when there is no run folder (a run that writes none) or no ``metrics.jsonl`` yet."""
    if run_dir is None or not (Path(run_dir) / METRICS).is_file():
        return {}
    run = load_run(run_dir)
    return {
        k: list(zip(*finite_series(run, k), strict=True)) for k in run.keys() if is_dynmon_key(k)
    }
