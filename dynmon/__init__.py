"""dynmon: watch a PyTorch transformer while it trains and see how it learns.

Public names import lazily, so ``import dynmon`` stays cheap and a missing optional dependency
only matters to the feature that needs it.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Monitor": "dynmon.monitor",
    "every": "dynmon.schedule",
    "logspace": "dynmon.schedule",
    "heads": "dynmon.adapters",
    "weights": "dynmon.adapters",
    "register_adapter": "dynmon.adapters",
    "HeadWeights": "dynmon.adapters.base",
    "MetricSpec": "dynmon.metrics.spec",
    "LookContext": "dynmon.metrics.spec",
    "Output": "dynmon.metrics.spec",
    "load_run": "dynmon.runfolder",
    "Sink": "dynmon.sinks",
    "make_sink": "dynmon.sinks",
    "Detector": "dynmon.events",
    "PlateauCliffDetector": "dynmon.events",
    "OnsetDetector": "dynmon.events",
    "SaturationDetector": "dynmon.events",
    "GrokkingDetector": "dynmon.events",
    "PlateauConfig": "dynmon.events",
    "OnsetConfig": "dynmon.events",
    "default_detectors": "dynmon.events",
    "Series": "dynmon.curves",
    "make_report": "dynmon.report",
    "hessian_eigenvalues": "dynmon.hessian",
    "hessian_trace": "dynmon.hessian",
    "hessian_density": "dynmon.hessian",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'dynmon' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
