"""Linear-ICL pack end to end: a smoke run of the run folder and the CLI, and the issue's "must
show" on configurations small enough for the default run (the quick presets with ``-m slow``).

Shrunk configs keep the physics: the staircase at twice the preset's learning rate (the plateaus
halve in steps). The rank sweep is in ``test_linear_icl_sweep.py``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from dynmon.experiments.linear_icl import PRESETS, Config, run

from dynmon.cli import main


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _cliffs(folder: Path) -> list[dict]:
    return [
        e
        for e in _jsonl(folder / "events.jsonl")
        if e["kind"] == "cliff" and e["key"] == "test/loss"
    ]


def test_smoke_run_writes_a_run_folder(tmp_path):
    cfg = Config(
        model="attn_s",
        D=3,
        N=7,
        H=2,
        R=1,
        P=500,
        P_test=500,
        steps=60,
        log_every=5,
        look_every=10,
        sharpness_every=30,
        lr=0.05,
        init=0.3,
    )
    summary = run(cfg, tmp_path / "run")
    folder = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (folder / name).is_file(), name
    assert (folder / "plots" / "linear_icl.png").is_file()
    assert json.loads((folder / "config.json").read_text())["run"] == dataclasses.asdict(cfg)
    rows = _jsonl(folder / "metrics.jsonl")
    assert [r["step"] for r in rows if "test/loss" in r] == list(range(0, 61, 5))
    keys = set().union(*rows)
    for k in (
        "loss",
        "test/loss",
        "dynmon/erank/KQ",
        "dynmon/erank/KQ.H1",
        "dynmon/numerical_rank/KQ",
        "dynmon/subspace_dist/KQ",
        "dynmon/sharpness",
    ):
        assert k in keys, k
    on_disk = json.loads((folder / "summary.json").read_text())
    for k in (
        "plateaus",
        "theory_plateaus",
        "plateau_rel_errors",
        "final_test_loss",
        "final_theory_loss",
        "final_rel_error",
        "steps_per_s",
    ):
        assert k in on_disk and on_disk[k] == summary[k], k
    assert [t["m"] for t in summary["theory_plateaus"]] == [0, 1, 2]


def test_cli_presets_and_run_with_overrides(tmp_path, capsys):
    assert main(["presets", "linear-icl"]) == 0
    listed = capsys.readouterr().out
    for name in ("merged-quick", "staircase-quick", "rank-sweep-quick", "linear-transformer"):
        assert name in listed
    out = tmp_path / "cli"
    sets = ["steps=20", "P=200", "P_test=200", "D=4", "spectrum=[.4,.3,.2,.1]", "sharpness_every=0"]
    args = ["run", "linear-icl", "--preset", "staircase-quick", "--out", str(out)]
    assert main(args + [x for s in sets for x in ("--set", s)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eigenvalues"] == pytest.approx([0.4, 0.3, 0.2, 0.1])
    assert (out / "index.html").is_file()
    with pytest.raises(SystemExit, match="spectrum"):
        main(["run", "linear-icl", "--set", "spectrum=[.4,.3]", "--out", str(tmp_path / "x")])


def test_merged_kq_one_drop_onto_theory(tmp_path):
    """ATTN_M: one drop; fresh-data loss within 2% of theory; σ̃ within 5% of σ(t)."""
    s = run(PRESETS["merged-quick"], tmp_path / "m")
    assert len(_cliffs(tmp_path / "m")) == 1
    assert abs(s["final_rel_error"]) < 0.02
    assert s["sigma_max_error"] < 0.05  # vertical, as a fraction of σ̃∞
    assert s["sigma_max_time_error"] < 0.05  # horizontal, relative to the step
    assert abs(s["half_drop_rel_error"]) < 0.02
    assert s["plateaus"][-1]["kq_numerical_rank"] == 4  # full rank after the drop


def _check_staircase(s: dict, folder: Path, D: int) -> None:
    """D drops onto L(M_m) within 3%, numerical rank m and an erank step at each."""
    assert len(_cliffs(folder)) == D
    errors = s["plateau_rel_errors"]
    assert len(errors) == D + 1 and all(e is not None and abs(e) < 0.03 for e in errors)
    by_m = {p["m"]: p for p in s["plateaus"] if p["m"] is not None}
    assert sorted(by_m) == list(range(D + 1))
    for m in range(1, D + 1):
        assert by_m[m]["kq_numerical_rank"] == m
        if m > 1:
            assert by_m[m]["kq_erank"] > by_m[m - 1]["kq_erank"] + 0.5


def test_separate_kq_staircase(tmp_path):
    cfg = dataclasses.replace(
        PRESETS["staircase-quick"], lr=0.04, steps=6000, P=20_000, P_test=20_000, sharpness_every=0
    )
    s = run(cfg, tmp_path / "s")
    _check_staircase(s, tmp_path / "s", 4)
    assert abs(s["final_rel_error"]) < 0.03


def test_linear_transformer_conserves_and_reaches_the_fixed_point(tmp_path):
    base = dataclasses.replace(
        PRESETS["linear-transformer-quick"], P=50_000, P_test=50_000, sharpness_every=0
    )
    small = run(dataclasses.replace(base, lr=0.002, steps=4000), tmp_path / "small")
    assert small["conserved_max_rel_drift"] < 1e-3
    assert small["theory_curve_max_rel_error"] < 0.03
    s = run(
        dataclasses.replace(base, lr=0.01, steps=20_000, log_every=100, look_every=100),
        tmp_path / "fixed",
    )
    assert s["gamma_rel_error"] < 0.03
    assert abs(s["final_rel_error"]) < 0.01
    assert s["theory_curve_max_rel_error"] < 0.03


@pytest.mark.slow
def test_quick_presets_must_show(tmp_path):
    s = run(PRESETS["staircase-quick"], tmp_path / "s")
    _check_staircase(s, tmp_path / "s", 4)
    lt = run(PRESETS["linear-transformer-quick"], tmp_path / "lt")
    assert lt["conserved_max_rel_drift"] < 1e-3 and lt["gamma_rel_error"] < 0.02
