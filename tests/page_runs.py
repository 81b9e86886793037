"""Small run folders for the page tests: a loss with a cliff, an accuracy, per-head erank and
subspace distance (keys and arrays), a sharpness, events and a config with a seed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dynmon.sinks.local import RunFolderSink


def write_run(
    path: Path,
    steps: int = 200,
    seed: int = 0,
    lr: float = 0.01,
    layers: int = 2,
    heads: int = 3,
    look_every: int = 10,
    arrays: bool = True,
    head_keys: bool = True,
) -> Path:
    """Write a run folder; the cliff sits at ``steps // 2`` and every seed shifts the curves."""
    rng = np.random.default_rng(seed)
    sink = RunFolderSink(path)
    sink.write_config({"run": {"seed": seed, "lr": lr, "steps": steps}, "dynmon": {"every": 10}})
    cliff = steps // 2
    base = 2 + rng.uniform(0, 1, (layers, heads))
    for s in range(steps):
        rise = 1 / (1 + np.exp(-(s - cliff) / 5))
        scalars: dict[str, float] = {"loss": float(3 - 2 * rise + 0.05 * rng.normal() + 0.1 * seed)}
        if s % 5 == 0:
            scalars["test/acc"] = float(0.1 + 0.8 * rise)
        out_arrays = {}
        if s % look_every == 0:
            for circuit, lift in (("QK", 2.0), ("OV", 1.0)):
                erank = base + lift * rise + 0.01 * s / steps  # [L, H]
                dist = np.clip(0.1 + 0.5 * np.exp(-(((s - cliff) / 10) ** 2)) + 0 * base, 0, 1)
                for metric, grid in (("erank", erank), ("subspace_dist", dist)):
                    if head_keys:
                        for layer in range(layers):
                            for head in range(heads):
                                key = f"dynmon/{metric}/L{layer}.H{head}.{circuit}"
                                scalars[key] = float(grid[layer, head])
                            scalars[f"dynmon/{metric}/L{layer}.{circuit}"] = float(
                                grid[layer].mean()
                            )
                        scalars[f"dynmon/{metric}/{circuit}"] = float(grid.mean())
                    if arrays:
                        out_arrays[f"dynmon/{metric}/{circuit}"] = grid
            scalars["dynmon/sharpness"] = float(10 + 5 * rise)
            scalars["dynmon/grad_norm"] = float(np.exp(-s / 50) + 0.1)
        sink.write(s, scalars, out_arrays)
    sink.write_event({"kind": "plateau_start", "step": 20, "at": 10, "start": 10, "key": "loss",
                      "message": "loss flat"})  # fmt: skip
    sink.write_event({"kind": "plateau_end", "step": cliff, "at": cliff - 8, "end": cliff - 8,
                      "key": "loss", "message": "loss moves"})  # fmt: skip
    sink.write_event({"kind": "cliff", "step": cliff + 10, "at": cliff, "key": "loss",
                      "value": 1.5, "message": f"loss fell off a cliff (seed {seed})"})  # fmt: skip
    sink.write_summary({"final_loss": 1.0 + 0.1 * seed, "cliff_step": cliff})
    sink.close()
    return path
