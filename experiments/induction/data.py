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

from dynmon.metrics.roles import copy_starts, make_probe  # noqa: F401 (copy_starts: the pack's API)
from dynmon.metrics.roles import occurrences as roles_occurrences


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


def make_batch(cfg, g: torch.Generator, batch: int | None = None) -> Batch:
    """``batch`` (default ``cfg.batch``) sequences drawn from ``g`` (``cfg``: InductionConfig),
    by dynmon's own probe builder (``dynmon.metrics.roles.make_probe``)."""
    B = cfg.batch if batch is None else batch
    p = make_probe(cfg.vocab, cfg.seq_len, B, g, segment_len=cfg.segment_len, repeats=cfg.repeats)
    return Batch(p.tokens, p.starts, p.segment_len)


def occurrences(batch: Batch) -> tuple[Tensor, Tensor]:
    """Which copy each position belongs to and where in the segment it sits.

    Returns ``copy [B, T]`` (0 for filler, k for the k-th copy, 1-based) and ``offset [B, T]``
    (0..S−1 inside a copy, −1 for filler); ``dynmon.metrics.roles.occurrences``.
    """
    return roles_occurrences(batch)
