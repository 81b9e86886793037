"""The one intra-op thread guard: run a block with ``n`` CPU threads, restore the count after.

The Monitor's looks use it (1 thread by default: batched small LAPACK calls gain nothing from
threads and, on a busy machine, MKL/OpenMP barriers make them hundreds of times slower;
measured: 24 SVDs of 64 x 64 took 5.8 s with 2 threads on a loaded 2-core machine, 7 ms with
1), and so do the packs' training loops (``dynmon.experiments.threads``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (None: leave the count), restoring it after,
    also on an error."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)
