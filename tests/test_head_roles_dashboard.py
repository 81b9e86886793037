"""The W&B dashboard's "Head roles" section shows every key head_roles logs, and nothing else."""

from __future__ import annotations

import re

import torch
from dynmon.integrations.wandb_dashboard import dashboard_spec

from dynmon.metrics.head_roles import outputs
from dynmon.metrics.spec import Output
from dynmon.sinks.heatmap import heatmap_key


def _keys() -> tuple[set[str], set[str]]:
    """Scalar and array keys of one head_roles look on a 2-layer, 3-head model."""
    s = {
        name: torch.rand(2, 3)
        for name in (
            "prev_token_score",
            "induction_score",
            "duplicate_token_score",
            "attn_entropy",
            "sink_mass",
            "copying_score",
        )
    }
    s.update({k: torch.tensor(1.0) for k in ("loss", "loss_first", "loss_repeated", "icl_score")})
    out = outputs(s, Output())
    return set(out.scalars), {heatmap_key(k) for k in out.arrays}


def test_head_roles_section_covers_every_key_and_reads_only_logged_ones():
    (section,) = [s for s in dashboard_spec() if s.name == "Head roles"]
    scalars, images = _keys()
    lines = [p for p in section.panels if p.kind == "line"]
    media = {k for p in section.panels if p.kind == "media" for k in p.keys}
    for p in lines:
        assert any(re.search(p.regex, k) for k in scalars), p.title
    per_head = re.compile(r"/L\d+\.H\d+\.")
    uncovered = [
        k
        for k in scalars
        if not per_head.search(k) and not any(re.search(p.regex, k) for p in lines)
    ]
    assert uncovered == []
    assert not any(per_head.search(k) and re.search(p.regex, k) for p in lines for k in scalars)
    assert media == images  # every per-head array is a heatmap on the section
