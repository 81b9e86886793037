"""Task metrics: what the model does with the repeated segment (REFERENCE.md §7).

Definitions (positions are 0-based; copy k of the segment starts at ``s_k``, offsets o = 0..S−1):

- **Loss on first-occurrence / repeated tokens**: mean next-token loss over target tokens at
  offsets o ≥ 1 of the first copy / of every later copy. Offset 0 is left out of both: the token
  that opens a copy follows a filler token, so nothing in the context predicts it.
- **ICL score**: loss on repeated tokens minus loss on first-occurrence tokens (negative when
  the model uses its context; ≈ −ln V + the repeated loss once it copies well).
- **Induction (prefix-matching) score** of head h: over every query position in a later copy
  (``i = s_k + o``, k ≥ 2, all offsets), the attention it pays to the tokens that followed the
  current token's earlier occurrences (``s_j + o + 1`` for every earlier copy j < k), summed
  over those earlier copies and averaged over queries. With two copies this is REFERENCE.md's
  mean of ``A_h[i, i − L + 1]``; 1 for a perfect induction head, ≈ (k−1)/i for uniform attention.
- **Previous-token score** of head h: mean of ``A_h[i, i − 1]`` over every position i ≥ 1.
- **Copying score** of head h's OV circuit: ``Σ Re λ / Σ |λ|`` over the eigenvalues of the full
  OV circuit ``W_E W_V[h] W_O[h] W_U`` (``[V, V]``, Olsson et al.), in [−1, 1]; positive when
  the head raises the logit of the token it attends to. Its nonzero eigenvalues are those of the
  ``dh × dh`` matrix ``W_O[h] W_U W_E W_V[h]``, which is what we diagonalise. For heads above
  layer 0 this is the direct path only (it ignores what earlier layers wrote).

The functions are pure (tensors in, tensors out, batched over leading dims); ``task_metric``
wraps them as a ``dynmon.MetricSpec`` that measures all of them on a fixed probe set.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .data import Batch, occurrences
from .model import embed_unembed, forward_with_patterns, token_losses

HEAD_TARGET = "attn"  # per-head keys of pattern scores: dynmon/induction_score/L1.H3.attn


def split_losses(losses: Tensor, batch: Batch) -> dict[str, Tensor]:
    """Mean next-token loss overall, on first-occurrence and on repeated tokens (and filler).

    ``losses`` is ``[B, T−1]`` from ``token_losses`` (entry i predicts token i+1).
    """
    copy, offset = occurrences(batch)  # [B, T] each
    copy, offset = copy[:, 1:], offset[:, 1:]  # [B, T−1], of the predicted token
    first = (copy == 1) & (offset >= 1)
    repeated = (copy >= 2) & (offset >= 1)
    return {
        "loss": losses.mean(),
        "loss_first": losses[first].mean(),
        "loss_repeated": losses[repeated].mean(),
        "loss_filler": losses[copy == 0].mean(),
    }


def induction_targets(batch: Batch) -> tuple[Tensor, Tensor, Tensor, int]:
    """Index triples (sequence, query, key) of the induction score and the number of queries.

    One triple per (sequence, later copy k, earlier copy j < k, offset o):
    query ``s_k + o``, key ``s_j + o + 1``.
    """
    starts, S = batch.starts, batch.segment_len
    B, R = starts.shape
    later, earlier = torch.tril_indices(R, R, offset=-1, device=starts.device)  # pairs j < k
    o = torch.arange(S, device=starts.device)
    query = starts[:, later, None] + o  # [B, P, S]
    key = starts[:, earlier, None] + o + 1  # [B, P, S]
    seq = torch.arange(B, device=starts.device)[:, None, None].expand_as(query)  # [B, P, S]
    return seq.reshape(-1), query.reshape(-1), key.reshape(-1), B * (R - 1) * S


def induction_score(patterns: Tensor, batch: Batch) -> Tensor:
    """Induction score ``[..., H]`` of attention patterns ``[..., B, H, T, T]`` (rows sum to 1)."""
    seq, query, key, n = induction_targets(batch)
    by_head = patterns.transpose(-4, -3)  # [..., H, B, T, T]
    return by_head[..., seq, query, key].sum(dim=-1) / n  # [..., H, N] -> [..., H]


def prev_token_score(patterns: Tensor) -> Tensor:
    """Previous-token score ``[..., H]`` of attention patterns ``[..., B, H, T, T]``."""
    diag = patterns.diagonal(offset=-1, dim1=-2, dim2=-1)  # [..., B, H, T−1], A[i, i−1]
    return diag.mean(dim=-1).mean(dim=-2)  # [..., H]


def copying_score(W_E: Tensor, W_U: Tensor, W_V: Tensor, W_O: Tensor) -> Tensor:
    """Copying score ``[..., H]`` of OV circuits ``W_E W_V W_O W_U`` (float64 eigenvalues).

    ``W_E [V, D]``, ``W_U [D, V]``, ``W_V [..., H, D, dh]``, ``W_O [..., H, dh, D]``.
    """
    f64 = torch.float64
    EU = W_U.to(f64) @ W_E.to(f64)  # [D, V] @ [V, D] -> [D, D]
    core = W_O.to(f64) @ EU @ W_V.to(f64)  # [..., H, dh, dh]
    lam = torch.linalg.eigvals(core)  # [..., H, dh] complex
    return lam.real.sum(dim=-1) / lam.abs().sum(dim=-1)  # [..., H]


def probe_scores(model: torch.nn.Module, probe: Batch) -> dict[str, Tensor]:
    """Every task metric of ``model`` on ``probe``: scalars and ``[L, H]`` per-head tensors."""
    import dynmon

    logits, patterns = forward_with_patterns(model, probe.tokens)  # [B,T,V], [L,B,H,T,T]
    out = split_losses(token_losses(logits, probe.tokens), probe)
    out["icl_score"] = out["loss_repeated"] - out["loss_first"]
    out["induction_heads"] = induction_score(patterns, probe)  # [L, H]
    out["prev_token_heads"] = prev_token_score(patterns)  # [L, H]
    heads = dynmon.heads(model)
    W_V = torch.stack([h.W_V for h in heads])  # [L, H, D, dh]
    W_O = torch.stack([h.W_O for h in heads])  # [L, H, dh, D]
    out["copying_heads"] = copying_score(*embed_unembed(model), W_V, W_O)  # [L, H]
    return out


def task_metric(probe: Batch, name: str = "induction_task"):
    """A ``dynmon.MetricSpec`` logging the task metrics on the fixed ``probe`` set.

    Scalars (watched by the event detectors, so outside ``dynmon/``): ``probe/loss``,
    ``probe/loss_first``, ``probe/loss_repeated``, ``probe/loss_filler``, ``probe/icl_score``,
    ``probe/induction_score`` and ``probe/prev_token_score`` (the best head's). Per head, with
    layer and overall means: ``dynmon/induction_score/L1.H3.attn``,
    ``dynmon/prev_token_score/L0.H2.attn``, ``dynmon/copying_score/L1.H3.OV``; the same as
    ``[L, H]`` arrays ``dynmon/induction_score/attn``, ``dynmon/prev_token_score/attn``,
    ``dynmon/copying_score/OV`` (heatmaps).
    """
    import dynmon
    from dynmon.keys import head_scalars, key

    def compute(ctx: dynmon.LookContext) -> dynmon.Output:
        s = probe_scores(ctx.model, probe)
        out = dynmon.Output()
        for k in ("loss", "loss_first", "loss_repeated", "loss_filler", "icl_score"):
            out.scalars[f"probe/{k}"] = s[k]
        out.scalars["probe/induction_score"] = s["induction_heads"].max()
        out.scalars["probe/prev_token_score"] = s["prev_token_heads"].max()
        for metric, values, target in (
            ("induction_score", s["induction_heads"], HEAD_TARGET),
            ("prev_token_score", s["prev_token_heads"], HEAD_TARGET),
            ("copying_score", s["copying_heads"], "OV"),
        ):
            out.scalars.update(head_scalars(metric, values, target))
            out.arrays[key(metric, target)] = values
        return out

    doc = "loss on first vs repeated tokens, ICL, induction/previous-token/copying score per head"
    return dynmon.MetricSpec(name, compute, frozenset({"heads"}), "opt-in", doc)
