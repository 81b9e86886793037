"""The task: every input ``[a, b, =]`` of (a op b) mod p, split into train and test.

Operand ranges, decided here:

- ``add``, ``sub``: all p² pairs, a, b in Z_p; labels (a + b) mod p and (a - b) mod p.
- ``mul``, ``div``: a, b in Z_p* = {1, ..., p-1}, so both tasks are the cyclic group Z_p*
  ((p-1)² pairs, p prime); ``div`` is a · b⁻¹ mod p with b⁻¹ = b^(p-2) mod p. Power et al. keep
  a = 0 for division; a zero operand only adds rows whose answer is 0 and breaks the group
  structure (multiplication becomes addition mod p-1 through the discrete logarithm), so we drop
  it for both.

Tokens 0..p-1 are the numbers and token p is "="; the vocabulary is p + 1 and the model predicts
one of p classes at the last position. Rows are ordered a-major (row = a·n_b + b for add/sub),
so for add/sub the full dataset is the p × p input grid the progress measures use.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .config import OPS


def operands(p: int, op: str) -> tuple[Tensor, Tensor]:
    """All valid operand pairs ``(a, b)``, a-major."""
    if op not in OPS:
        raise ValueError(f"op must be one of {OPS}, got {op!r}")
    values = torch.arange(p) if op in ("add", "sub") else torch.arange(1, p)
    a = values.repeat_interleave(len(values))  # [n²]
    b = values.repeat(len(values))  # [n²]
    return a, b


def apply_op(a: Tensor, b: Tensor, p: int, op: str) -> Tensor:
    """(a op b) mod p, elementwise."""
    if op == "add":
        return (a + b) % p
    if op == "sub":
        return (a - b) % p
    if op == "mul":
        return (a * b) % p
    if op == "div":
        if bool((b % p == 0).any()):
            raise ValueError("division by zero mod p")
        inv = torch.tensor([pow(int(x), p - 2, p) for x in range(p)])  # b⁻¹ by Fermat
        return (a * inv[b % p]) % p
    raise ValueError(f"op must be one of {OPS}, got {op!r}")


@dataclass(frozen=True)
class Dataset:
    """All inputs of the task with a fixed train/test split."""

    p: int
    op: str
    tokens: Tensor  # [N, 3] rows [a, b, =]
    labels: Tensor  # [N]
    train_idx: Tensor  # [N_train] row indices into tokens
    test_idx: Tensor  # [N_test]

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        return self.tokens[self.train_idx], self.labels[self.train_idx]

    @property
    def test(self) -> tuple[Tensor, Tensor]:
        return self.tokens[self.test_idx], self.labels[self.test_idx]

    def to(self, device: str | torch.device) -> Dataset:
        return Dataset(
            self.p,
            self.op,
            self.tokens.to(device),
            self.labels.to(device),
            self.train_idx.to(device),
            self.test_idx.to(device),
        )


def make_dataset(p: int, op: str, train_frac: float, seed: int) -> Dataset:
    """Every input, and a train split of ``round(train_frac · N)`` rows drawn by a private,
    seeded generator (the global RNG is left alone)."""
    a, b = operands(p, op)
    equals = torch.full_like(a, p)
    tokens = torch.stack([a, b, equals], dim=1)  # [N, 3]
    labels = apply_op(a, b, p, op)  # [N]
    n = len(labels)
    n_train = round(train_frac * n)
    if not 0 < n_train < n:
        raise ValueError(f"train_frac={train_frac} leaves an empty train or test set (N={n})")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    train_idx, _ = perm[:n_train].sort()
    test_idx, _ = perm[n_train:].sort()
    return Dataset(p, op, tokens, labels, train_idx, test_idx)
