"""The task: random tokens with one random segment written several times, drawn on the fly.

Each sequence holds ``seq_len`` tokens drawn uniformly from ``vocab``; a segment of
``segment_len`` uniform tokens is then written ``repeats`` times at random non-overlapping
positions (every arrangement of the copies among the filler tokens equally likely; copies may
touch). The only way to predict a token inside a later copy is to find the previous occurrence
of the current token and copy what followed it: an induction head.

Everything is drawn from a ``torch.Generator`` the caller seeds, so a run's training stream and
its fixed probe set are reproducible and never touch the global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Batch:
    """Token sequences and where the segment's copies start."""

    tokens: Tensor  # [B, T] int64
    starts: Tensor  # [B, R] start of each copy, ascending
    segment_len: int

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.tokens.to(device), self.starts.to(device), self.segment_len)

    def head(self, n: int) -> Batch:
        """The first ``n`` sequences."""
        return Batch(self.tokens[:n], self.starts[:n], self.segment_len)


def copy_starts(batch: int, seq_len: int, segment_len: int, repeats: int, g: torch.Generator):
    """Start positions ``[B, R]`` of ``repeats`` non-overlapping copies, uniform over arrangements.

    Lay out ``seq_len − R·S`` filler tokens and ``R`` copies as ``seq_len − R·S + R`` slots; choose
    the ``R`` copy slots uniformly; a copy in slot ``p`` after ``j`` earlier copies starts at token
    ``p + j·(S − 1)`` (each earlier copy is ``S`` tokens wide, not one).
    """
    S, R = segment_len, repeats
    n_slots = seq_len - R * S + R
    slots = torch.rand(batch, n_slots, generator=g).argsort(dim=-1)[:, :R]  # [B, R] distinct
    slots = slots.sort(dim=-1).values  # [B, R] ascending
    return slots + torch.arange(R) * (S - 1)  # [B, R]


def make_batch(cfg, g: torch.Generator, batch: int | None = None) -> Batch:
    """``batch`` (default ``cfg.batch``) sequences drawn from ``g`` (``cfg``: InductionConfig)."""
    B = cfg.batch if batch is None else batch
    T, S, R = cfg.seq_len, cfg.segment_len, cfg.repeats
    tokens = torch.randint(0, cfg.vocab, (B, T), generator=g)  # [B, T] filler
    segment = torch.randint(0, cfg.vocab, (B, S), generator=g)  # [B, S]
    starts = copy_starts(B, T, S, R, g)  # [B, R]
    pos = starts[:, :, None] + torch.arange(S)  # [B, R, S] positions of every copy
    rows = torch.arange(B)[:, None, None].expand(B, R, S)  # [B, R, S]
    tokens[rows, pos] = segment[:, None, :].expand(B, R, S)
    return Batch(tokens, starts, S)


def occurrences(batch: Batch) -> tuple[Tensor, Tensor]:
    """Which copy each position belongs to and where in the segment it sits.

    Returns ``copy [B, T]`` (0 for filler, k for the k-th copy, 1-based) and ``offset [B, T]``
    (0..S−1 inside a copy, −1 for filler).
    """
    B, T = batch.tokens.shape
    S = batch.segment_len
    rel = torch.arange(T, device=batch.starts.device) - batch.starts[:, :, None]  # [B, R, T]
    inside = (rel >= 0) & (rel < S)  # [B, R, T], at most one copy per position
    k = torch.arange(1, batch.starts.shape[1] + 1, device=batch.starts.device)  # [R]
    copy = (inside * k[None, :, None]).sum(dim=1)  # [B, T]
    offset = torch.where(inside, rel, 0).sum(dim=1)  # [B, T]
    offset = torch.where(copy > 0, offset, -1)
    return copy, offset
