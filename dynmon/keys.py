"""Hierarchical keys, ``dynmon/<metric>/<target>``, so W&B regex panels can group them."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # keep `load_run` and `dynmon report` free of the torch import
    from torch import Tensor

PREFIX = "dynmon"
HEAD_KEY = re.compile(
    r"^dynmon/(?P<metric>[^/]+)/L(?P<layer>\d+)\.H(?P<head>\d+)\.(?P<circuit>\w+)$"
)  # one head's value: dynmon/erank/L0.H1.QK
LAYER_KEY = re.compile(
    r"^dynmon/(?P<metric>[^/]+)/L(?P<layer>\d+)\.(?P<circuit>\w+)$"
)  # one layer's mean over its heads: dynmon/erank/L0.QK


def key(metric: str, target: str | None = None) -> str:
    """``dynmon/<metric>`` or ``dynmon/<metric>/<target>``.

    >>> key("erank", "L0.H1.QK"), key("sharpness")
    ('dynmon/erank/L0.H1.QK', 'dynmon/sharpness')
    """
    return f"{PREFIX}/{metric}" if target is None else f"{PREFIX}/{metric}/{target}"


def is_dynmon_key(name: str) -> bool:
    """Whether ``name`` is one of dynmon's own keys (the others are the run's: ``loss``...).

    >>> is_dynmon_key("dynmon/erank/QK"), is_dynmon_key("train/loss")
    (True, False)
    """
    return name.startswith(f"{PREFIX}/")


def strip_prefix(name: str) -> str:
    """``dynmon/erank/QK`` -> ``erank/QK``; any other name unchanged.

    >>> strip_prefix("dynmon/sharpness"), strip_prefix("loss")
    ('sharpness', 'loss')
    """
    return name.removeprefix(f"{PREFIX}/")


def heatmap_key(name: str) -> str:
    """Where a per-head array's heatmap image goes (the bare key stays the overall mean's).

    >>> heatmap_key("dynmon/erank/QK")
    'dynmon/heatmap/erank/QK'
    """
    return key("heatmap", strip_prefix(name))


def event_key(kind: str) -> str:
    """The marker scalar of an event kind on TensorBoard: ``dynmon/event/<kind>``."""
    return key("event", kind)


# names of dynmon's own records beside the metrics
STEP_KEY = key("step")  # dynmon's step axis on W&B (never wandb.log(step=...))
EVENTS_KEY = key("events")  # the events table (W&B) and text (TensorBoard)
CONFIG_KEY = key("config")  # the resolved configuration as text (TensorBoard)
SUMMARY_KEY = key("summary")  # the headline figures as text (TensorBoard)
ALL_KEYS = key("*")  # W&B's glob for every dynmon key


def head_scalars(
    metric: str, values: Tensor, circuit: str, n_heads: list[int] | None = None
) -> dict[str, Tensor]:
    """Per-head, per-layer-mean and overall-mean keys for a ``[L, H]`` tensor of values.

    ``dynmon/erank/L0.H1.QK``, ``dynmon/erank/L0.QK`` (mean over heads) and
    ``dynmon/erank/QK`` (mean over all heads). NaN heads are left out of the means.
    ``n_heads[l]`` is layer l's head count when layers differ (padded heads get no key).

    >>> import torch
    >>> out = head_scalars("erank", torch.tensor([[1.0, 3.0]]), "QK")  # [L=1, H=2]
    >>> list(out)
    ['dynmon/erank/L0.H0.QK', 'dynmon/erank/L0.H1.QK', 'dynmon/erank/L0.QK', 'dynmon/erank/QK']
    >>> [float(v) for v in out.values()]  # two heads, their layer mean, the overall mean
    [1.0, 3.0, 2.0, 2.0]
    """
    out: dict[str, Tensor] = {}
    counts = n_heads or [values.shape[1]] * values.shape[0]
    for layer, count in enumerate(counts):
        for head in range(count):
            out[key(metric, f"L{layer}.H{head}.{circuit}")] = values[layer, head]
        out[key(metric, f"L{layer}.{circuit}")] = values[layer, :count].nanmean()
    out[key(metric, circuit)] = values.nanmean()
    return out
