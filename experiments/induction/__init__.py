"""Induction pack: attention-only transformers (1 to 4 layers) learn to copy repeated segments.

A TransformerLens 4 native attention-only model trains on random tokens with a random segment
written twice (REFERENCE.md §7). Once a previous-token head and an induction head compose, the
loss on the repeated tokens falls off a cliff (in-context learning). The pack measures the task
(losses on first vs repeated tokens, ICL score, induction / previous-token / copying score per
head), detects the emergence online with dynmon's event detectors, and measures when the heads'
QK and OV subspaces settle and how long before the emergence (the seed paper's Figure 5 claim).

    from dynmon.experiments import induction
    summary = induction.run(induction.PRESETS["quick"], "runs/induction")

or ``dynmon run induction --preset quick --out runs/induction``.

Modules: ``config`` (``InductionConfig``, presets), ``data`` (sequences), ``model`` (the
TransformerLens model, patterns), ``scores`` (task metrics), ``timing`` (emergence,
stabilisation, lead), ``train`` (the loop), ``plots`` (``plots/induction.png``).
"""

from __future__ import annotations

from .config import DEFAULT_PRESET, PRESETS, Config, InductionConfig
from .train import run

__all__ = ["DEFAULT_PRESET", "PRESETS", "Config", "InductionConfig", "run"]
