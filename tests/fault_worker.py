"""A small deterministic training run driven from ``tests/test_faults.py`` in a subprocess.

``python fault_worker.py RUN_DIR [--steps N] [--save-every S] [--kill-at K] [--resume CKPT]
[--sleep-at K --sleep SECONDS] [--fill FILLER --fill-at A --free-at B]``: trains a tiny
transformer (no dropout, batches from a per-step generator, so a resumed run replays the same
numbers) with a Monitor on ``RUN_DIR``; saves model, optimizer and monitor state every ``S``
steps to ``RUN_DIR/../ckpt.pt``; SIGKILLs itself right after step ``K``; sleeps after step
``--sleep-at``; fills the disk holding ``RUN_DIR`` at step ``A`` (one big file written until
``ENOSPC``) and deletes that file at step ``B``.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from conftest import TinyLM, lm_loss  # noqa: E402

import dynmon  # noqa: E402


def fill(path: Path) -> None:
    """Write zeros into ``path`` until the file system is full."""
    block = b"\0" * 4096
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(block)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    return
                raise


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run_dir")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--save-every", type=int, default=0)
    p.add_argument("--kill-at", type=int, default=-1)
    p.add_argument("--resume")
    p.add_argument("--fill")
    p.add_argument("--fill-at", type=int, default=-1)
    p.add_argument("--free-at", type=int, default=-1)
    p.add_argument("--sleep-at", type=int, default=-1)
    p.add_argument("--sleep", type=float, default=0.0)
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = TinyLM(dropout=0.0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    mon = dynmon.Monitor(model, run_dir=args.run_dir, schedule=dynmon.every(5), metrics=["norms"])
    start = 0
    if args.resume:
        state = torch.load(args.resume, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        mon.load_state_dict(state["monitor"])
        start = state["step"] + 1
    ckpt = Path(args.run_dir).parent / "ckpt.pt"
    for step in range(start, args.steps):
        if step == args.fill_at:
            fill(Path(args.fill))
        if step == args.free_at:
            os.remove(args.fill)
        g = torch.Generator().manual_seed(step)
        tokens = torch.randint(0, 32, (8, 12), generator=g)
        opt.zero_grad()
        loss = lm_loss(model, tokens)
        loss.backward()
        opt.step()
        acc = 0.1 if step < 22 else 0.9  # a jump the default detectors report
        mon.step(step, loss=loss, **{"train/acc": acc})
        if step % 7 == 3:
            mon.log_event("probe", step, note=f"logged at {step}")
        if args.save_every and step % args.save_every == 0:
            state = {"model": model.state_dict(), "opt": opt.state_dict()}
            state.update(monitor=mon.state_dict(), step=step)
            torch.save(state, ckpt)
        if step == args.sleep_at:  # hold the folder while a test tries a second writer
            time.sleep(args.sleep)
        if step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    mon.update_summary(final_loss=float(loss.detach()))
    mon.close()


if __name__ == "__main__":
    main()
