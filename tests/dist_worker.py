"""One rank of the two-process tests (launched by tests/test_distributed.py under torchrun).

``python -m torch.distributed.run --nproc-per-node 2 tests/dist_worker.py {ddp|fsdp} OUT``
trains a TinyLM for ``STEPS`` steps with a Monitor attached (DDP, or FSDP2 ``fully_shard`` on
every layer and the root), counts the collectives each rank makes inside ``Monitor.step`` per
step, and then, on rank 0, looks at the final full weights with a fresh single-process Monitor
as the independent reference. Writes ``OUT/rank{r}.json``.
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.distributed as dist
from conftest import TinyLM, lm_loss
from torch.nn.parallel import DistributedDataParallel

import dynmon

STEPS, EVERY = 10, 5
COLLECTIVE_WORDS = (
    "gather",
    "reduce",
    "scatter",
    "broadcast",
    "barrier",
    "all_to_all",
    "send",
    "recv",
)


def collective_names() -> list[str]:
    """Every public torch.distributed function that communicates (names vary across versions)."""
    return [
        n
        for n in dir(dist)
        if not n.startswith("_")
        and n[0].islower()
        and callable(getattr(dist, n))
        and any(w in n for w in COLLECTIVE_WORDS)
    ]


class CollectiveCounter:
    """Counts torch.distributed collective calls while ``on`` is set."""

    def __init__(self) -> None:
        self.on = False
        self.calls: Counter[str] = Counter()
        for name in collective_names():
            setattr(dist, name, self._wrap(name, getattr(dist, name)))

    def _wrap(self, name, fn):
        def counted(*args, **kwargs):
            if self.on:
                self.calls[name] += 1
            return fn(*args, **kwargs)

        return counted


def build(mode: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the model the loop trains, the plain module inside it)."""
    torch.manual_seed(0)
    model = TinyLM(dropout=0.0)
    if mode == "ddp":
        return DistributedDataParallel(model), model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    for layer in model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model, model


def main(mode: str, out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    counter = CollectiveCounter()
    trained, plain = build(mode)
    opt = torch.optim.AdamW(trained.parameters(), lr=3e-3)
    probe = torch.randint(0, 32, (4, 12), generator=torch.Generator().manual_seed(7))
    metrics: dict = {"economy": None}
    if mode == "ddp":
        metrics["sharpness"] = None
    mon = dynmon.Monitor(
        trained,
        run_dir=out / "run",
        schedule=dynmon.every(EVERY),
        metrics=metrics,
        loss_fn=lm_loss,
        probe_batch=probe,
        optimizer=opt,
    )
    g = torch.Generator().manual_seed(100 + rank)  # each rank its own data, as in real DP
    calls, seconds = {}, {}
    for step in range(1, STEPS + 1):
        tokens = torch.randint(0, 32, (8, 12), generator=g)
        loss = lm_loss(trained, tokens)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        counter.calls.clear()
        counter.on = True
        t0 = time.perf_counter()
        mon.step(step, loss=loss.detach())
        seconds[step] = time.perf_counter() - t0
        counter.on = False
        calls[step] = dict(counter.calls)
    mon.close()

    # the reference: the same final weights, unsharded, in one process with a fresh Monitor
    if mode == "fsdp":
        full = {n: p.full_tensor() for n, p in plain.named_parameters()}  # every rank joins
    else:
        full = {n: p.detach().clone() for n, p in plain.named_parameters()}
    result = {"rank": rank, "calls": calls, "seconds": seconds, "events": mon.events}
    result["run_dir_exists"] = (out / "run").exists()
    if rank == 0:
        ref = TinyLM(dropout=0.0)
        ref.load_state_dict(full, strict=False)
        ref_mon = dynmon.Monitor(
            ref,
            run_dir=out / "ref",
            schedule=[STEPS],
            metrics=metrics,
            loss_fn=lm_loss,
            probe_batch=probe,
        )
        ref_mon.step(STEPS)
        ref_mon.close()
    dist.barrier()
    (out / f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(sys.argv[1], Path(sys.argv[2]))
