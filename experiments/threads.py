"""CPU intra-op threads for a pack's training loop, picked from the model's size.

torch starts with one intra-op thread per core. On the packs' small models a step's kernels are
too short to share: the threads spend the step waiting for each other, and on a busy machine
for a free core as well, so a pack trains with one thread unless its model is large
(``benchmarks/bench_pack_threads.py`` measures steps/s at 1 thread and at torch's default for
each pack, side by side; the README gives the figures). ``threads`` in a pack's config
overrides the choice; 0 means "pick".
"""

from __future__ import annotations

import torch

from dynmon.threads import intra_op_threads

# Models up to this many trainable parameters train with one thread on CPU. The quick presets
# (50k-120k parameters) run 1.4x (idle) to 10x (loaded) faster on 1 thread than on 2 on a 2-core
# machine; nothing the packs ship is large enough for the split to pay, so the bound is generous.
ONE_THREAD_MAX_PARAMS = 5_000_000


def pick_threads(requested: int, n_params: int, device: str | torch.device = "cpu") -> int:
    """Threads for the loop: ``requested`` if > 0, else 1 for a small model on CPU, else torch's
    current count (a GPU run keeps it: its kernels do not run on these threads)."""
    if requested < 0:
        raise ValueError(f"threads must be >= 0 (0: pick from the model size), got {requested}")
    if requested:
        return requested
    if torch.device(device).type == "cpu" and n_params <= ONE_THREAD_MAX_PARAMS:
        return 1
    return torch.get_num_threads()


torch_threads = intra_op_threads  # the one thread guard, shared with the Monitor's looks
