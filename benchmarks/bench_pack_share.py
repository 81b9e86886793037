"""Share of each pack's training wall time spent inside the Monitor (issue 11's pack item).

Runs the default quick preset of each pack (grokking ``quick``, induction ``quick``, linear-icl
``staircase-quick``) one after the other in this process, each into a temporary run folder, and
prints per pack ``seconds_in_monitor / seconds`` from its ``summary.json`` figures (time inside
``Monitor.step``, looks included, over the training loop's wall time), the total over the three,
and where the Monitor's time went (``Monitor.seconds``: the look's shared inputs, each metric,
the rows' conversion/series/detectors/sinks).

Timings on a machine other processes load are unreliable (both the numerator and the
denominator move): rerun on a quiet machine for the figures to quote.

    .venv/bin/python benchmarks/bench_pack_share.py [--packs grokking,induction,linear-icl]
        [--set KEY=VALUE ...]   # overrides applied to every pack that has the key
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

TARGET = 0.03  # the bound on the Monitor's share of training wall time


def run_pack(name: str, sets: list[str]) -> dict:
    """One pack's default preset into a temporary folder; its summary."""
    from dynmon.experiments import load_pack

    from dynmon.config import apply_overrides

    pack = load_pack(name)
    cfg = pack.PRESETS[pack.DEFAULT_PRESET]
    fields = {f.name for f in dataclasses.fields(cfg)}
    cfg = apply_overrides(cfg, [s for s in sets if s.split("=", 1)[0].strip() in fields])
    with tempfile.TemporaryDirectory() as tmp:
        return pack.run(cfg, Path(tmp) / "run")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--packs", default="grokking,induction,linear-icl")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE for every pack")
    args = ap.parse_args(argv)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# load average before: {load:.2f} on {os.cpu_count()} cores", flush=True)
    rows = []
    for name in [p.strip() for p in args.packs.split(",") if p.strip()]:
        t0 = time.perf_counter()
        s = run_pack(name, args.set)
        wall = time.perf_counter() - t0
        mon, train = float(s["seconds_in_monitor"]), float(s["seconds"])
        rows.append((name, mon, train))
        parts = s.get("seconds_in_monitor_by_part", {})
        split = ", ".join(
            f"{k} {v:.2f}"
            for k, v in sorted(parts.items(), key=lambda kv: -kv[1])
            if k != "step" and v >= 0.005
        )
        print(
            f"{name}: Monitor {mon:.2f} s of {train:.2f} s training = {mon / train:.1%} "
            f"(target <= {TARGET:.0%}: {'met' if mon / train <= TARGET else 'NOT met'}); "
            f"run with set-up {wall:.1f} s",
            flush=True,
        )
        print(f"    inside the Monitor: {split}", flush=True)
    total_mon = sum(r[1] for r in rows)
    total_train = sum(r[2] for r in rows)
    print(
        f"total: Monitor {total_mon:.2f} s of {total_train:.2f} s training = "
        f"{total_mon / total_train:.1%}"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# load average after: {load:.2f}; timings under load are unreliable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
