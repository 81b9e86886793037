"""Head roles from attention patterns on a repeated-segment probe (docs/metrics.md#head_roles).

A probe is random tokens with one random segment written ``R`` times (copy ``k`` starts at
``s_k``, offsets ``o = 0..S−1``). On it, per head (patterns ``[..., B, H, T, T]``, rows sum to 1):

- **previous-token score**: mean of ``A[i, i−1]`` over every position ``i ≥ 1``;
- **induction (prefix-matching) score**: over every query ``i = s_k + o`` in a later copy
  (k ≥ 2), the attention paid to ``s_j + o + 1`` (the token after the current token's earlier
  occurrence) summed over earlier copies j < k, averaged over queries: 1 for a perfect
  induction head, ≈ (k−1)/(i+1) for uniform attention;
- **duplicate-token score**: the same with keys ``s_j + o`` (the earlier occurrence itself);
- **attention entropy** (nats) and **sink mass** ``A[i, 0]``, both averaged over ``i ≥ 1``
  (row 0 can only attend to itself);
- **copying score** of the OV circuit ``W_E W_V W_O W_U`` (``[V, V]``): ``Σ Re λ / Σ |λ|`` over its
  eigenvalues, in [−1, 1] (Olsson et al.), from the ``dh × dh`` matrix ``W_O W_U W_E W_V`` that
  has the same nonzero eigenvalues; the direct path only.

The in-context score is the loss on repeated tokens minus the loss on first occurrences
(offsets ≥ 1 of each copy; offset 0 follows a filler token and nothing predicts it).

Pure functions, batched over leading dims; the probe is built from a caller's generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# below this many multiply-adds W_U W_E is formed in float64, above in the weights' dtype
F64_GRAM_LIMIT = 10**8


@dataclass(frozen=True)
class RepeatProbe:
    """Token sequences with one segment written several times, and where each copy starts."""

    tokens: Tensor  # [B, T] int64
    starts: Tensor  # [B, R] start of each copy, ascending, copies never overlap
    segment_len: int

    def to(self, device: torch.device | str) -> RepeatProbe:
        return RepeatProbe(self.tokens.to(device), self.starts.to(device), self.segment_len)

    def as_dict(self) -> dict[str, Tensor | int]:
        """Plain tensors, for a snapshot that ``torch.load(weights_only=True)`` can read."""
        return {"tokens": self.tokens, "starts": self.starts, "segment_len": self.segment_len}

    @staticmethod
    def from_dict(d: dict) -> RepeatProbe:
        return RepeatProbe(d["tokens"], d["starts"], int(d["segment_len"]))


def check_probe(probe: object) -> RepeatProbe:
    """A ``RepeatProbe`` from anything with ``tokens [B, T]``, ``starts [B, R]``, ``segment_len``;
    a clear error when the copies do not fit or overlap."""
    try:
        tokens, starts, S = probe.tokens, probe.starts, int(probe.segment_len)  # type: ignore[attr-defined]
    except AttributeError as exc:
        raise TypeError(
            f"a head-roles probe needs tokens [B, T], starts [B, R] and segment_len; got "
            f"{type(probe).__name__}. Build one with dynmon.metrics.roles.make_probe(...)"
        ) from exc
    if tokens.dim() != 2 or starts.dim() != 2 or starts.shape[0] != tokens.shape[0]:
        raise ValueError(
            f"probe tokens must be [B, T] and starts [B, R]; got {tuple(tokens.shape)} and "
            f"{tuple(starts.shape)}"
        )
    T, R = tokens.shape[1], starts.shape[1]
    if R < 2 or S < 1:
        raise ValueError(f"a probe needs at least 2 copies of a segment; got {R} of length {S}")
    gaps = starts[:, 1:] - starts[:, :-1]  # [B, R−1]
    if (starts[:, 0] < 0).any() or (starts[:, -1] + S > T).any() or (gaps < S).any():
        raise ValueError(
            f"probe copies (segment_len {S}) overlap or run past the sequence end (T = {T})"
        )
    return RepeatProbe(tokens, starts, S)


def copy_starts(
    batch: int, seq_len: int, segment_len: int, repeats: int, g: torch.Generator
) -> Tensor:
    """Start positions ``[B, R]`` of ``repeats`` non-overlapping copies, uniform over arrangements.

    Lay out ``seq_len − R·S`` filler tokens and ``R`` copies as ``seq_len − R·S + R`` slots; choose
    the ``R`` copy slots uniformly; a copy in slot ``p`` after ``j`` earlier copies starts at token
    ``p + j·(S − 1)`` (each earlier copy is ``S`` tokens wide, not one).
    """
    S, R = segment_len, repeats
    n_slots = seq_len - R * S + R
    slots = torch.rand(batch, n_slots, generator=g).argsort(dim=-1)[:, :R]  # [B, R] distinct
    return slots.sort(dim=-1).values + torch.arange(R) * (S - 1)  # [B, R] ascending


def make_probe(
    vocab: int,
    seq_len: int,
    batch: int,
    generator: torch.Generator,
    segment_len: int | None = None,
    repeats: int = 2,
) -> RepeatProbe:
    """``batch`` random sequences with one segment written ``repeats`` times at random places.

    Filler and segment tokens are uniform over ``vocab``; every arrangement of the copies among
    the filler tokens is equally likely (copies may touch). ``segment_len`` defaults to a
    quarter of ``seq_len`` (at least 2). Everything is drawn from ``generator`` (CPU).
    """
    S = max(2, seq_len // 4) if segment_len is None else int(segment_len)
    if repeats < 2 or repeats * S > seq_len or vocab < 2:
        raise ValueError(
            f"cannot write {repeats} copies of a {S}-token segment into {seq_len} tokens of a "
            f"{vocab}-token vocabulary; need repeats >= 2, repeats * segment_len <= seq_len"
        )
    tokens = torch.randint(0, vocab, (batch, seq_len), generator=generator)  # [B, T] filler
    segment = torch.randint(0, vocab, (batch, S), generator=generator)  # [B, S]
    starts = copy_starts(batch, seq_len, S, repeats, generator)  # [B, R]
    pos = starts[:, :, None] + torch.arange(S)  # [B, R, S]
    rows = torch.arange(batch)[:, None, None].expand(batch, repeats, S)  # [B, R, S]
    tokens[rows, pos] = segment[:, None, :].expand(batch, repeats, S)
    return RepeatProbe(tokens, starts, S)


def occurrences(probe: RepeatProbe) -> tuple[Tensor, Tensor]:
    """``copy [B, T]`` (0 filler, k for the k-th copy, 1-based), ``offset [B, T]`` (−1 filler)."""
    T = probe.tokens.shape[1]
    rel = torch.arange(T, device=probe.starts.device) - probe.starts[:, :, None]  # [B, R, T]
    inside = (rel >= 0) & (rel < probe.segment_len)  # [B, R, T], at most one copy per position
    k = torch.arange(1, probe.starts.shape[1] + 1, device=probe.starts.device)  # [R]
    copy = (inside * k[None, :, None]).sum(dim=1)  # [B, T]
    offset = torch.where(inside, rel, 0).sum(dim=1)  # [B, T]
    return copy, torch.where(copy > 0, offset, -1)


def _targets(probe: RepeatProbe, shift: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """(sequence, query, key) index triples: query ``s_k + o``, key ``s_j + o + shift`` for every
    later copy k, earlier copy j < k and offset o; and the number of queries ``B·(R−1)·S``."""
    starts, S = probe.starts, probe.segment_len
    B, R = starts.shape
    later, earlier = torch.tril_indices(R, R, offset=-1, device=starts.device)  # pairs j < k
    o = torch.arange(S, device=starts.device)
    query = starts[:, later, None] + o  # [B, P, S]
    key = starts[:, earlier, None] + o + shift  # [B, P, S]
    seq = torch.arange(B, device=starts.device)[:, None, None].expand_as(query)  # [B, P, S]
    return seq.reshape(-1), query.reshape(-1), key.reshape(-1), B * (R - 1) * S


def _target_score(patterns: Tensor, probe: RepeatProbe, shift: int) -> Tensor:
    seq, query, key, n = _targets(probe, shift)
    by_head = patterns.transpose(-4, -3)  # [..., H, B, T, T]
    return by_head[..., seq, query, key].sum(dim=-1) / n  # [..., H, N] -> [..., H]


def induction_score(patterns: Tensor, probe: RepeatProbe) -> Tensor:
    """Induction score ``[..., H]`` of patterns ``[..., B, H, T, T]``."""
    return _target_score(patterns, probe, shift=1)


def duplicate_token_score(patterns: Tensor, probe: RepeatProbe) -> Tensor:
    """Duplicate-token score ``[..., H]`` of patterns ``[..., B, H, T, T]``."""
    return _target_score(patterns, probe, shift=0)


def prev_token_score(patterns: Tensor) -> Tensor:
    """Previous-token score ``[..., H]`` of patterns ``[..., B, H, T, T]``."""
    diag = patterns.diagonal(offset=-1, dim1=-2, dim2=-1)  # [..., B, H, T−1], A[i, i−1]
    return diag.mean(dim=-1).mean(dim=-2)  # [..., H]


def attention_entropy(patterns: Tensor) -> Tensor:
    """Mean entropy (nats) of attention rows ``i ≥ 1``: ``[..., B, H, T, T]`` -> ``[..., H]``."""
    rows = patterns[..., 1:, :].double()  # [..., B, H, T−1, T]
    ent = -torch.xlogy(rows, rows).sum(dim=-1)  # [..., B, H, T−1]
    return ent.mean(dim=-1).mean(dim=-2).to(patterns.dtype)  # [..., H]


def sink_mass(patterns: Tensor) -> Tensor:
    """Mean attention to position 0 from rows ``i ≥ 1``: ``[..., B, H, T, T]`` -> ``[..., H]``."""
    return patterns[..., 1:, 0].mean(dim=-1).mean(dim=-2)  # [..., B, H, T−1] -> [..., H]


def copying_score(W_E: Tensor, W_U: Tensor, W_V: Tensor, W_O: Tensor) -> Tensor:
    """Copying score ``[..., H]`` of OV circuits ``W_E W_V W_O W_U`` (eigenvalues in float64).

    ``W_E [V, D]``, ``W_U [D, V]``, ``W_V [..., H, D, dh]``, ``W_O [..., H, dh, D]``. The Gram-like
    ``W_U W_E`` is formed in float64 when small (≤ ``F64_GRAM_LIMIT`` multiply-adds) and in the
    weights' own (at least float32) precision otherwise (GPT-2 small: 3·10¹⁰).
    """
    f64 = torch.float64
    V, D = W_E.shape
    if V * D * D <= F64_GRAM_LIMIT:
        EU = W_U.to(f64) @ W_E.to(f64)  # [D, V] @ [V, D] -> [D, D]
    else:
        wide = torch.promote_types(W_E.dtype, torch.float32)
        EU = (W_U.to(wide) @ W_E.to(wide)).to(f64)  # [D, D]
    core = W_O.to(f64) @ EU @ W_V.to(f64)  # [..., H, dh, dh]
    lam = torch.linalg.eigvals(core)  # [..., H, dh] complex
    return lam.real.sum(dim=-1) / lam.abs().sum(dim=-1)  # [..., H]


def token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy ``[B, T−1]``: entry i is the loss of predicting token i+1."""
    V = logits.shape[-1]
    loss = nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, V).float(),  # [B·(T−1), V]
        tokens[:, 1:].reshape(-1),  # [B·(T−1)]
        reduction="none",
    )
    return loss.view(tokens.shape[0], -1)  # [B, T−1]


def split_losses(losses: Tensor, probe: RepeatProbe) -> dict[str, Tensor]:
    """Mean next-token loss overall, on first-occurrence, repeated and filler tokens.

    ``losses`` is ``[B, T−1]`` from ``token_losses``; ``icl_score`` is repeated minus first.
    """
    copy, offset = occurrences(probe)  # [B, T] each
    copy, offset = copy[:, 1:], offset[:, 1:]  # [B, T−1], of the predicted token
    first = (copy == 1) & (offset >= 1)
    repeated = (copy >= 2) & (offset >= 1)
    out = {
        "loss": losses.mean(),
        "loss_first": losses[first].mean(),
        "loss_repeated": losses[repeated].mean(),
        "loss_filler": losses[copy == 0].mean(),
    }
    out["icl_score"] = out["loss_repeated"] - out["loss_first"]
    return out


def uniform_chance(probe: RepeatProbe) -> dict[str, float]:
    """Closed-form scores of a head attending uniformly to every position ``j ≤ i``.

    Previous-token: mean of 1/(i+1) over i ≥ 1. Induction and duplicate-token: (k−1)/(i+1)
    averaged over the queries i = s_k + o of every later copy k (one target per earlier copy).
    Entropy: mean of ln(i+1). Sink mass: the previous-token value.
    """
    T = probe.tokens.shape[1]
    prev = sum(1.0 / (i + 1) for i in range(1, T)) / (T - 1)
    starts, S = probe.starts.tolist(), probe.segment_len
    total, n = 0.0, 0
    for row in starts:
        for k, s in enumerate(row):  # k earlier copies before this one
            for o in range(S):
                if k:
                    total += k / (s + o + 1)
                    n += 1
    ind = total / n
    ent = sum(math.log(i + 1) for i in range(1, T)) / (T - 1)
    return {
        "prev_token_score": prev,
        "induction_score": ind,
        "duplicate_token_score": ind,
        "attn_entropy": ent,
        "sink_mass": prev,
    }
