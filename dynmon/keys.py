"""Hierarchical keys, ``dynmon/<metric>/<target>``, so W&B regex panels can group them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keep `load_run` and `dynmon report` free of the torch import
    from torch import Tensor

PREFIX = "dynmon"
HEAD_KEY = re.compile(
    r"^dynmon/(?P<metric>[^/]+)/L(?P<layer>\d+)\.H(?P<head>\d+)\.(?P<circuit>\w+)$"
)


def key(metric: str, target: str | None = None) -> str:
    """``dynmon/<metric>`` or ``dynmon/<metric>/<target>``."""
    return f"{PREFIX}/{metric}" if target is None else f"{PREFIX}/{metric}/{target}"


def head_scalars(metric: str, values: Tensor, circuit: str) -> dict[str, Tensor]:
    """Per-head, per-layer-mean and overall-mean keys for a ``[L, H]`` tensor of values.

    ``dynmon/erank/L0.H1.QK``, ``dynmon/erank/L0.QK`` (mean over heads) and
    ``dynmon/erank/QK`` (mean over all heads). NaN heads are left out of the means.
    """
    out: dict[str, Tensor] = {}
    for layer in range(values.shape[0]):
        for head in range(values.shape[1]):
            out[key(metric, f"L{layer}.H{head}.{circuit}")] = values[layer, head]
        out[key(metric, f"L{layer}.{circuit}")] = values[layer].nanmean()
    out[key(metric, circuit)] = values.nanmean()
    return out
