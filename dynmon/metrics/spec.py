"""The metric table's vocabulary: what a metric needs, what it gets at a look, what it returns.

Metric *mathematics* lives in pure functions (``spectral.py``, ``subspace.py``, ``norms.py``,
``curvature.py``); a ``MetricSpec`` wraps one of them for the Monitor, declaring its needs so
the Monitor gathers each input once per look and merges the needs of all metrics due.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dynmon.adapters.base import HeadWeights

# What a metric can ask for. The Monitor gathers only what the metrics due at a step need:
# "heads" (per-head weights), "head_spectra" (singular values of each head's QK and OV),
# "head_svd" (the same with singular vectors, stacked over layers: memory of a copy of the
# attention weights), "head_subspace" (overlaps of each head's subspaces with the previous and
# reference look, computed layer by layer; the built-in subspace_dist), "weights" (every 2-D
# weight), "grads", "prev_weights" (weights one monitor step before), "curvature" (loss_fn +
# probe batch, grad on).
Need = Literal[
    "heads",
    "head_spectra",
    "head_svd",
    "head_subspace",
    "weights",
    "grads",
    "prev_weights",
    "curvature",
]
HEAD_NEEDS = frozenset({"heads", "head_spectra", "head_svd", "head_subspace"})
Cost = Literal["economy", "full", "opt-in"]


@dataclass
class LookContext:
    """Inputs for one look. Fields a metric did not declare a need for may be empty."""

    step: int
    model: nn.Module
    heads: list[HeadWeights] = field(default_factory=list)
    # circuit ("QK"/"OV") -> singular values [L, H, r], descending; layers with fewer heads are
    # NaN-padded, smaller ranks zero-padded (zeros change no rank measure)
    spectra: dict[str, Tensor] = field(default_factory=dict)
    n_heads: list[int] = field(default_factory=list)  # heads of each layer
    head_ranks: list[int] = field(default_factory=list)  # nonzero-spectrum length of each layer
    # circuit -> {"prev"|"ref": (b_U, b_V)} overlap block sums [L, H, r] (inputs.head_pass)
    head_blocks: dict[str, dict[str, tuple[Tensor, Tensor]]] = field(default_factory=dict)
    head_state: Any = None  # the new per-layer drift state, kept by the Monitor as a snapshot
    # circuit -> (U [L, H, D, dh], S [L, H, dh], V [L, H, D, dh]) of the D x D circuit
    svd: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)
    weights: dict[str, Tensor] = field(default_factory=dict)  # every 2-D weight, by name
    grads: dict[str, Tensor] = field(default_factory=dict)  # .grad of those weights, if any
    prev_weights: dict[str, Tensor] | None = None  # weights one optimizer step before
    snapshot: Any = None  # this metric's own snapshot from its previous look
    reference: Any = None  # this metric's snapshot from the reference look
    loss_fn: Callable[..., Tensor] | None = None  # loss_fn(model, batch) -> scalar
    probe_batch: Any = None
    optimizer: torch.optim.Optimizer | None = None
    generator: torch.Generator | None = None  # private RNG: never touch the global one
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class Output:
    """What a metric returns: scalars under final keys, per-head arrays for heatmaps,
    and optionally a snapshot the Monitor keeps for the next look (and the reference)."""

    scalars: dict[str, Tensor | float] = field(default_factory=dict)
    arrays: dict[str, Tensor] = field(default_factory=dict)
    snapshot: Any = None
    # events the metric detected at this look (dicts with "kind", "step", "at", "message"),
    # recorded by the Monitor like a detector's (events.jsonl, W&B alerts); head_roles uses it
    events: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class MetricSpec:
    """One row of the metric table."""

    name: str
    compute: Callable[[LookContext], Output]
    needs: frozenset[str] = frozenset()
    cost: Cost = "economy"
    doc: str = ""
