"""Grokking pack: a one-layer transformer learns (a op b) mod p, memorises, then generalises.

Reproduces the progress measures of Nanda et al. (2023) — Fourier sparsity (Gini), restricted and
excluded loss, weight norm — and their three phases (memorisation, circuit formation, cleanup)
with dynmon's per-head spectra, subspace stability and curvature watching the same run, and
reports how many steps before grokking each signal moved.

    from dynmon.experiments import grokking
    summary = grokking.run(grokking.PRESETS["quick"], "runs/grok")

Modules: ``config`` (``GrokkingConfig``, presets), ``data`` (task and split), ``model`` (the
TransformerLens model), ``progress`` (progress measures), ``phases`` (phase boundaries, lead
times), ``train`` (the loop).
"""

from __future__ import annotations

from typing import Any

from .config import DEFAULT_PRESET, PRESETS, Config, GrokkingConfig

__all__ = ["DEFAULT_PRESET", "PRESETS", "Config", "GrokkingConfig", "run"]


def __getattr__(name: str) -> Any:
    """``run`` loads on first use: the loop imports torch; listing presets must not wait for it."""
    if name == "run":
        from .train import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
