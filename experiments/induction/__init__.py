"""Induction pack: attention-only transformers (1 to 4 layers) learn to copy repeated segments.

A TransformerLens 4 native attention-only model trains on random tokens with a random segment
written twice (docs/packs.md#induction). When the layer-1 heads become induction heads (score
≈ 0.7), the loss on the repeated tokens falls off a cliff (in-context learning). No
previous-token head forms on this task: the layer-0 heads attend near-uniformly over the context
or to their own position (previous-token score ≈ 0.06, the level of uniform attention; the score
reads > 0.9 on a hand-built previous-token head, tests/test_head_roles.py), so the induction
heads find the earlier occurrence through that mixed context, not through a previous-token head.
The pack measures the task with dynmon's ``head_roles`` metric (losses on first vs repeated
tokens, ICL score, induction / previous-token / copying score per head), detects the emergence
online with dynmon's event detectors, and measures when the heads' QK and OV subspaces settle
and how long before the emergence (the seed paper's Figure 5 claim).

    from dynmon.experiments import induction
    summary = induction.run(induction.PRESETS["quick"], "runs/induction")

or ``dynmon run induction --preset quick --out runs/induction``.

Measured (2 CPU cores under load; ``scripts/induction_depth_study.py``, 3,000 steps, seeds 0-2):

=======  =============  ===============  ================  ==================  ==============
layers   emergence      induction max    ICL score         QK/OV settled       lead (steps)
=======  =============  ===============  ================  ==================  ==============
1        none           0.07             −1.0 (skip-trig)  975-1000            n/a
2        575/595/625    0.70-0.78        −3.8 to −3.95     750/750/800         −155/−175/−175
3        585/595/645    0.79-0.88        −4.0 to −4.1      750/775/825         −155/−180/−190
4        615/645/735    0.86-0.91        −4.05 to −4.1     800/825/875         −140/−180/−185
=======  =============  ===============  ================  ==================  ==============

The detected emergence sits 5-15 steps after the steepest drop of the repeated-token loss. The
per-look subspace distance spikes *during* the emergence (peak at the cliff) and settles 140-190
steps after it, at every depth: on this task the subspaces settle as, not before, in-context
learning appears, and not earlier in deeper models. The distance to the final matrices keeps
falling to the end (AdamW at a constant learning rate keeps rotating the heads), so its
stabilisation step (1,750-2,400) lags by 1,200-1,800 steps. The distance's earlier rise from its
minimum near step 200 is seen in the one-layer control too (its bigram/skip-trigram phase), so it
is no precursor of the induction head.

Modules: ``config`` (``InductionConfig``, presets), ``data`` (sequences), ``model`` (the
TransformerLens model, patterns), ``scores`` (task metrics), ``timing`` (emergence,
stabilisation, lead), ``train`` (the loop), ``plots`` (``plots/induction.png``).
"""

from __future__ import annotations

from typing import Any

from .config import DEFAULT_PRESET, PRESETS, Config, InductionConfig

__all__ = ["DEFAULT_PRESET", "PRESETS", "Config", "InductionConfig", "run"]


def __getattr__(name: str) -> Any:
    """``run`` loads on first use: the loop imports torch; listing presets must not wait for it."""
    if name == "run":
        from .train import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
