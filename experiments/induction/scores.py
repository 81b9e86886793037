"""Task metrics: what the model does with the repeated segment (docs/packs.md#induction).

One source of truth: every score is dynmon's ``head_roles`` metric (``dynmon.metrics.roles`` for
the definitions, ``dynmon.metrics.head_roles`` for the forward on the probe), run on the pack's
fixed probe set. In short (positions 0-based, copy k of the segment starts at ``s_k``):

- **Loss on first-occurrence / repeated tokens**: mean next-token loss over target tokens at
  offsets o ≥ 1 of the first copy / of every later copy (offset 0 follows a filler token).
- **ICL score**: loss on repeated tokens minus loss on first-occurrence tokens.
- **Induction score** of a head: attention from ``s_k + o`` to ``s_j + o + 1`` summed over
  earlier copies j < k, averaged over queries in later copies (1 for a perfect induction head).
- **Previous-token score**: mean of ``A[i, i − 1]`` over every position i ≥ 1.
- **Copying score** of a head's OV circuit ``W_E W_V W_O W_U``: ``Σ Re λ / Σ |λ|`` (direct path).

``head_roles`` also gives the duplicate-token score, attention entropy and sink mass per head,
and formation events ("induction head L1.H3 formed at step S (score 0.62)").
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from dynmon.keys import key
from dynmon.metrics.roles import copying_score, induction_score, prev_token_score, split_losses

from .data import Batch

__all__ = [
    "copying_score",
    "induction_score",
    "prev_token_score",
    "probe_scores",
    "split_losses",
    "task_metric",
]

HEAD_TARGET = "attn"  # per-head keys of pattern scores: dynmon/induction_score/L1.H3.attn
# the pack's names for head_roles' probe losses and best heads (watched by its detectors)
PROBE_KEYS = {
    key("icl_loss"): "probe/loss",
    key("icl_loss_first"): "probe/loss_first",
    key("icl_loss_repeated"): "probe/loss_repeated",
    key("icl_loss_filler"): "probe/loss_filler",
    key("icl_score"): "probe/icl_score",
    key("induction_score_max"): "probe/induction_score",
    key("prev_token_score_max"): "probe/prev_token_score",
}


def probe_scores(model: torch.nn.Module, probe: Batch) -> dict[str, Tensor]:
    """Every task metric of ``model`` on ``probe``: scalars and ``[L, H]`` per-head tensors."""
    import dynmon
    from dynmon.metrics.head_roles import role_scores

    s = role_scores(model, probe, dynmon.heads(model))
    s["induction_heads"] = s["induction_score"]  # [L, H]
    s["prev_token_heads"] = s["prev_token_score"]  # [L, H]
    s["copying_heads"] = s["copying_score"]  # [L, H]
    return s


def task_metric(probe: Batch, name: str = "induction_task"):
    """dynmon's ``head_roles`` on the fixed ``probe`` set, with the pack's probe keys added.

    Scalars (watched by the event detectors, so outside ``dynmon/``): ``probe/loss``,
    ``probe/loss_first``, ``probe/loss_repeated``, ``probe/loss_filler``, ``probe/icl_score``,
    ``probe/induction_score`` and ``probe/prev_token_score`` (the best head's). Per head, with
    layer and overall means, everything ``head_roles`` logs: ``dynmon/induction_score/L1.H3.attn``,
    ``dynmon/prev_token_score/L0.H2.attn``, ``dynmon/copying_score/L1.H3.OV``... and the
    ``[L, H]`` arrays ``dynmon/induction_score/attn``... (heatmaps); formation events.
    """
    import dynmon
    from dynmon.metrics.head_roles import HEAD_ROLES

    def compute(ctx: dynmon.LookContext) -> dynmon.Output:
        opts = {**ctx.options, "roles_probe": probe}
        out = HEAD_ROLES.compute(dataclasses.replace(ctx, options=opts))
        for core, pack in PROBE_KEYS.items():
            out.scalars[pack] = out.scalars[core]
        return out

    doc = "head_roles on the pack's probe: ICL, induction/previous-token/copying score per head"
    return dynmon.MetricSpec(name, compute, frozenset({"heads"}), "opt-in", doc)
