"""Start-up time of ``dynmon presets PACK`` (and ``dynmon --help``) against ``import torch``.

Each command runs in a fresh interpreter (the way a user types it), alternating with a bare
``python -c "import torch"`` so both see the same machine load; prints the median wall time of
each and their ratio. The target is ``dynmon presets PACK`` in <= 2 s on a 2-core machine: it
imports only the pack's config, never torch or the model.
Run: python benchmarks/bench_startup.py [--repeats N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

PACKS = ("grokking", "induction", "linear-icl")


def wall(argv: list[str]) -> float:
    """Seconds one command takes from exec to exit (output discarded; a failure raises)."""
    t0 = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    py = sys.executable
    commands = {f"dynmon presets {p}": [py, "-m", "dynmon", "presets", p] for p in PACKS}
    commands["dynmon --help"] = [py, "-m", "dynmon", "--help"]
    commands["import torch"] = [py, "-c", "import torch"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.repeats):  # interleaved, so load changes hit every command alike
        for name, argv in commands.items():
            times[name].append(wall(argv))
    torch_s = statistics.median(times["import torch"])
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    print(f"{'command':28s} {'median s':>9s} {'max s':>7s} {'/ import torch':>15s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:28s} {med:9.2f} {max(ts):7.2f} {med / torch_s:15.2f}")


if __name__ == "__main__":
    main()
