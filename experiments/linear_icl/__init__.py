"""Linear ICL pack: linear attention (merged and separate key-query, multi-head, rank R) and the
exact linear transformer on in-context regression, with the closed-form theory drawn over the
measured curves (Zhang, Singh, Latham & Saxe 2025; Mainali & Teixeira 2025).

    from dynmon.experiments import linear_icl
    summary = linear_icl.run(linear_icl.PRESETS["staircase-quick"], "runs/licl")

Modules: ``config`` (``LinearICLConfig``, presets), ``data`` (task, context statistics, losses as
quadratic forms), ``model`` (the three models), ``theory`` (closed forms, reduced ODEs, time
maps), ``metric`` (the key-query MetricSpec), ``train`` (the loop), ``plots``.
"""

from __future__ import annotations

from typing import Any

from .config import DEFAULT_PRESET, PRESETS, Config, LinearICLConfig

__all__ = ["DEFAULT_PRESET", "PRESETS", "Config", "LinearICLConfig", "run"]


def __getattr__(name: str) -> Any:
    """``run`` loads on first use: the loop imports torch; listing presets must not wait for it."""
    if name == "run":
        from .train import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
