"""Precision and recall of the loss detector on held-out synthetic learning curves.

The families of ``tests/detector_families.py`` (exponential and power-law decays, a sigmoid step,
a staircase, noise, a grokking run's training and test loss), generated with seeds the tests
never use (1000 on), fed to a fresh ``PlateauCliffDetector`` each. An event counts when its
kind matches an expected one within one window of logs of it (one-to-one); precision is over
the events reported (closed ones: a plateau still open at the end is not scored), recall over
the expected ones. Prints a row per family and the totals.
Run: python benchmarks/bench_detectors.py [--seeds N] [--first 1000]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from detector_families import FAMILIES, cases, detect, score  # noqa: E402

from dynmon.events import PlateauCliffDetector  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=100, help="seeds per family")
    parser.add_argument("--first", type=int, default=1000, help="first held-out seed")
    args = parser.parse_args()
    seeds = range(args.first, args.first + args.seeds)
    total = [0, 0, 0]
    head = ("curves", "events", "found", "precision", "recall")
    print(f"{'family':22s} " + " ".join(f"{h:>9s}" for h in head))
    t0 = time.perf_counter()
    for family in FAMILIES:
        by_curve: dict[str, list[int]] = {}
        for case in cases(family, seeds):
            tp, n_true, n_found = score(case, detect(case, lambda: PlateauCliffDetector("loss")))
            row = by_curve.setdefault(case.family, [0, 0, 0, 0])
            row[0] += 1
            for i, v in enumerate((tp, n_true, n_found)):
                row[i + 1] += v
                total[i] += v
        for name, (n, tp, n_true, n_found) in by_curve.items():
            precision = tp / n_found if n_found else 1.0
            recall = tp / n_true if n_true else 1.0
            print(f"{name:22s} {n:9d} {n_true:9d} {n_found:9d} {precision:9.3f} {recall:9.3f}")
    tp, n_true, n_found = total
    print(
        f"{'all':22s} {'':9s} {n_true:9d} {n_found:9d} {tp / max(n_found, 1):9.3f} "
        f"{tp / max(n_true, 1):9.3f}   (seeds {seeds.start}-{seeds.stop - 1}, "
        f"{time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
