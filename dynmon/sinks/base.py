"""What every sink implements: the Monitor hands it plain Python/NumPy values, converted once."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Sink(Protocol):
    """A destination for monitor output. All methods must be cheap and must not raise on
    ordinary values; a sink that fails is reported and dropped by the Monitor."""

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Record the fully resolved configuration (called once, at start)."""

    def write(
        self, step: int, scalars: Mapping[str, float], arrays: Mapping[str, np.ndarray]
    ) -> None:
        """Record one logged step: flat scalar keys (``dynmon/erank/L0.H1.QK``) and
        per-head arrays (``dynmon/erank/QK`` -> ``[L, H]``) meant for heatmaps/tables."""

    def write_event(self, event: Mapping[str, Any]) -> None:
        """Record a detected event (has at least ``step`` and ``kind``) as soon as it is known."""

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Merge headline figures into the run's summary."""

    def close(self) -> None:
        """Flush and release resources; safe to call twice."""
