"""Linear-ICL pack: the rank sweep's distinct plateaus (D/R of them for R = 2, 4, 8 at lr 0.04 in
the default run; the quick preset, R = 1 included, with ``-m slow``: R = 1's last plateaus sit on
the smallest eigenvalues and take ~33k steps at lr 0.04 to reach)."""

from __future__ import annotations

import dataclasses

import pytest
from dynmon.experiments.linear_icl import PRESETS, run


def test_rank_sweep_distinct_plateaus(tmp_path):
    cfg = dataclasses.replace(
        PRESETS["rank-sweep-quick"],
        lr=0.04,
        steps=12_000,
        P=20_000,
        P_test=20_000,
        sharpness_every=0,
        log_every=40,
        look_every=40,
        plateau_window=15,
        ranks="2,4,8",
    )
    s = run(cfg, tmp_path / "sweep")
    assert s["distinct_plateaus"] == {"R2": 4, "R4": 2, "R8": 1}
    for name in ("R2", "R4", "R8"):
        assert (tmp_path / "sweep" / name / "summary.json").is_file()
    assert (tmp_path / "sweep" / "plots" / "linear_icl_sweep.png").is_file()


@pytest.mark.slow
def test_rank_sweep_quick_preset(tmp_path):
    sweep = run(PRESETS["rank-sweep-quick"], tmp_path / "sweep")
    assert sweep["distinct_plateaus"] == {"R1": 8, "R2": 4, "R4": 2, "R8": 1}
