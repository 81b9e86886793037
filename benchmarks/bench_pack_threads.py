"""Training speed of each pack's quick preset with torch's default thread count and with one.

For each pack, runs the quick preset for a fixed number of steps in a fresh process (monitor
attached, as ``dynmon run`` does, but without drawing the report) with ``threads`` set to torch's
default (one per core) and to 1, interleaved so both see the same machine load, and prints the
steps/s of each (the pack's own ``steps_per_s``: the loop with its looks, after set-up) and
their ratio. Say whether the machine was busy when you quote the figures: the load average is
printed before and after.
Run: python benchmarks/bench_pack_threads.py [--repeats N] [--packs grokking,induction]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

# pack, preset, steps: enough steps for the looks of a real run, few enough for a busy machine
CASES = {
    "grokking": ("quick", 150),
    "induction": ("quick", 60),
    "linear-icl": ("staircase-quick", 1000),
}
CHILD = """
import dataclasses, json, sys
from dynmon.experiments import load_pack
pack = load_pack(sys.argv[1])
steps, threads = int(sys.argv[3]), int(sys.argv[4])
cfg = dataclasses.replace(pack.PRESETS[sys.argv[2]], steps=steps, threads=threads)
if hasattr(cfg, "stop_after_grok"):
    cfg = dataclasses.replace(cfg, stop_after_grok=0)
summary = pack.run(cfg, sys.argv[5])
print(json.dumps({"steps_per_s": summary["steps_per_s"]}))
"""


def steps_per_s(pack: str, preset: str, steps: int, threads: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        argv = [sys.executable, "-c", CHILD, pack, preset, str(steps), str(threads), out]
        env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(argv, check=True, capture_output=True, text=True, env=env)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["steps_per_s"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--packs", default=",".join(CASES))
    args = parser.parse_args()
    import torch

    default = torch.get_num_threads()
    packs = [p.strip() for p in args.packs.split(",") if p.strip()]
    print(f"load average before: {os.getloadavg()}, {os.cpu_count()} CPUs, default {default}")
    rates: dict[tuple[str, int], list[float]] = {}
    for _ in range(args.repeats):
        for pack in packs:
            preset, steps = CASES[pack]
            for threads in (default, 1):
                rate = steps_per_s(pack, preset, steps, threads)
                rates.setdefault((pack, threads), []).append(rate)
                print(f"  {pack} {preset} threads={threads}: {rate:.2f} steps/s", flush=True)
    print(f"load average after: {os.getloadavg()}")
    print(f"{'pack':12s} {'preset':16s} {f'{default} threads':>10s} {'1 thread':>9s} {'ratio':>6s}")
    for pack in packs:
        many = statistics.median(rates[(pack, default)])
        one = statistics.median(rates[(pack, 1)])
        print(f"{pack:12s} {CASES[pack][0]:16s} {many:10.2f} {one:9.2f} {one / many:6.2f}")


if __name__ == "__main__":
    main()
