"""What the Monitor needs to know about torch.distributed: ranks, and sharded parameters.

Data parallel (DDP) replicates every parameter, so rank 0 looks on its own copy and no rank
ever takes part in a collective for dynmon. FSDP2 (``fully_shard``) keeps each rank's shard
only: a look needs the full matrices, which the engine's own ``FSDPModule.unshard()`` gathers
and ``reshard()`` frees. That all-gather is a collective, so every rank calls ``gathered`` on
the same steps (the looks) in the same module order, and on no other step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


def rank() -> int:
    """This process's rank in the default group (0 without torch.distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return 0


def fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """FSDP2 (``fully_shard``) modules of ``model``, in ``modules()`` order (alike on all ranks)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch built without distributed
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def _is_dtensor(t: object) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:
        return False
    return isinstance(t, DTensor)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``model`` holds sharded (DTensor) parameters that a look must gather first.

    Raises for sharding dynmon cannot gather (DTensor parameters outside any FSDP2 module,
    e.g. tensor parallelism), rather than computing spectra of one rank's shard.
    """
    if fsdp_modules(model):
        return True
    if any(_is_dtensor(p) for p in model.parameters()):
        raise ValueError(
            "the model has DTensor parameters outside any fully_shard (FSDP2) module, e.g. "
            "tensor parallelism; dynmon can only gather FSDP2 shards. Attach the Monitor to an "
            "unsharded copy of the model, or analyse saved checkpoints with `dynmon analyze`."
        )
    return False


@contextlib.contextmanager
def gathered(model: nn.Module) -> Iterator[None]:
    """Full, unsharded parameters inside the block (a collective: call it on every rank).

    Uses FSDP2's own ``unshard()``/``reshard()``, so between two training steps (where FSDP2
    has resharded everything) the block costs one all-gather per module. A no-op without FSDP2.
    """
    mods = fsdp_modules(model)
    for m in mods:
        m.unshard()  # blocking all-gather of this module's parameter group
    try:
        yield
    finally:
        for m in mods:
            m.reshard()
