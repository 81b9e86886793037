"""Lead of subspace stabilisation over induction emergence, for 1 to 4 layers and several seeds.

Runs the induction pack's depth presets (``1-layer`` ... ``4-layer``) for each seed into
``OUT/<preset>/seed<k>`` and prints one table row per run plus per-depth medians; writes the
rows to ``OUT/depth_study.json``. Usage::

    python scripts/induction_depth_study.py --out runs/depth --seeds 0 1 2 [--steps 3000]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

FIELDS = (
    "emergence_step",
    "steepest_drop_step",
    "induction_score_max",
    "icl_score",
    "subspace_stabilisation_step",
    "subspace_lead",
    "subspace_stabilisation_step_final_ref",
    "subspace_lead_final_ref",
    "steps_per_s",
)


def main(argv: list[str] | None = None) -> None:
    import torch
    from dynmon.experiments.induction import PRESETS, run

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--steps", type=int, default=None, help="override the presets' step count")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    for n in args.layers:
        for seed in args.seeds:
            cfg = dataclasses.replace(PRESETS[f"{n}-layer"], seed=seed)
            if args.steps:
                cfg = dataclasses.replace(cfg, steps=args.steps)
            s = run(cfg, args.out / f"{n}-layer" / f"seed{seed}")
            row = {"layers": n, "seed": seed, **{k: s.get(k) for k in FIELDS}}
            rows.append(row)
            print(json.dumps(row), flush=True)
            (args.out / "depth_study.json").write_text(json.dumps(rows, indent=1))
    for n in args.layers:
        mine = [r for r in rows if r["layers"] == n]
        for k in ("emergence_step", "subspace_lead", "subspace_lead_final_ref"):
            vals = [r[k] for r in mine if r[k] is not None]
            med = statistics.median(vals) if vals else None
            print(f"{n} layers: {k} median {med} over {len(vals)}/{len(mine)} runs: {vals}")


if __name__ == "__main__":
    main()
