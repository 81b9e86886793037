"""Grokking pack end to end: a smoke run that writes a run folder, and the issue's "must show":
the quick preset groks (seed 0 by default, seeds 1 and 2 with ``-m slow``)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from dynmon.experiments.grokking import PRESETS, Config, run

from dynmon.metrics.table import METRICS


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _curve(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pairs = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
    return [s for s, _ in pairs], [v for _, v in pairs]


def _first(steps, values, threshold):
    return next((s for s, v in zip(steps, values, strict=True) if v >= threshold), None)


@pytest.mark.parametrize("op", ["add", "mul"])
def test_smoke_run_writes_a_run_folder(tmp_path, op):
    cfg = Config(
        p=11,
        op=op,
        d_model=16,
        n_heads=2,
        d_mlp=32,
        steps=40,
        log_every=5,
        look_every=10,
        sharpness_every=40,
    )
    summary = run(cfg, tmp_path / "run")
    folder = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "summary.json"):
        assert (folder / name).is_file(), name
    config = json.loads((folder / "config.json").read_text())
    assert config["run"] == dataclasses.asdict(cfg)
    rows = _jsonl(folder / "metrics.jsonl")
    logged = [r["step"] for r in rows if "train/acc" in r]
    assert logged == list(range(0, 41, 5))
    keys = set().union(*rows)
    assert {"train/loss", "test/loss", "train/acc", "test/acc", "weight_norm"} <= keys
    assert "dynmon/erank/QK" in keys and "dynmon/subspace_dist/OV" in keys
    assert any(k.startswith("dynmon/erank/") and "mlp" in k for k in keys)
    if "sharpness" in METRICS:  # curvature is an optional dynmon module
        assert "dynmon/sharpness" in keys
    on_disk = json.loads((folder / "summary.json").read_text())
    for k in ("memorization_step", "grokking_step", "delay_ratio", "final_test_acc", "lead_times"):
        assert k in summary and k in on_disk
    assert summary["steps_run"] == 40 and summary["steps_per_s"] > 0
    if op == "add":
        assert {"gini/W_E", "gini/W_L", "n_key_freqs"} <= keys
        assert (folder / "hindsight.jsonl").is_file()
        assert "circuit_formation_step" in summary and "cleanup_step" in summary
    else:
        assert "gini/W_E" not in keys and "progress_measures" in summary


def _check_groks(seed: int, tmp_path: Path) -> dict:
    """The quick preset groks; events match the curves; restricted loss falls before test loss."""
    # the quick preset, stopped 200 steps after grokking instead of 600 (to save test time)
    cfg = dataclasses.replace(PRESETS["quick"], seed=seed, stop_after_grok=200)
    summary = run(cfg, tmp_path / f"seed{seed}")
    folder = tmp_path / f"seed{seed}"
    rows = _jsonl(folder / "metrics.jsonl")
    steps, train_acc = _curve(rows, "train/acc")
    _, test_acc = _curve(rows, "test/acc")
    assert steps == sorted(steps) and steps[1] - steps[0] == PRESETS["quick"].log_every
    # truth from the logged curves at the finest logging granularity
    memorized, perfect = _first(steps, train_acc, 0.95), _first(steps, train_acc, 1.0)
    grokked = _first(steps, test_acc, 0.95)
    assert memorized is not None and perfect is not None and grokked is not None
    assert test_acc[-1] >= 0.95
    assert grokked >= 5 * perfect, (perfect, grokked)
    events = _jsonl(folder / "events.jsonl")
    first, about = {}, {}
    for e in events:  # the step an event was detected at, and the step it is about
        first.setdefault(e["kind"], e["step"])
        about.setdefault(e["kind"], e.get("at", e["step"]))
    for kind, truth in (("memorization", memorized), ("grokking", grokked)):
        assert abs(first[kind] - truth) <= 100 and abs(about[kind] - truth) <= 100, kind
    # restricted loss (final key frequencies) falls before the test loss: each curve's first
    # step after memorisation below half its largest value between memorisation and grokking
    # (the test loss is the logged curve, the restricted loss the hindsight one)
    hind = _jsonl(folder / "hindsight.jsonl")
    rs, rl = _curve(hind, "restricted_loss_final_keys")
    ts, tl = _curve(rows, "test/loss")

    def half_fall(s, v):
        top = max(x for t, x in zip(s, v, strict=True) if memorized <= t <= grokked)
        return next(t for t, x in zip(s, v, strict=True) if t >= memorized and x < top / 2)

    assert half_fall(rs, rl) < half_fall(ts, tl)
    assert summary["restricted_loss_half_step"] == half_fall(rs, rl)
    assert summary["test_loss_half_step"] == half_fall(ts, tl)
    for kind in ("circuit_formation", "cleanup"):
        assert kind in first
    assert memorized <= first["circuit_formation"] <= first["cleanup"] <= grokked
    # no false cliff or plateau: the training loss falls exponentially after memorisation (no
    # cliff, no plateau); the test loss's one cliff is the grokking drop; every event names its
    # curve and no onset sits at the first log
    train = [e for e in events if e.get("key") == "train/loss"]
    assert not [e for e in train if e["kind"].startswith("plateau") or e["kind"] == "cliff"]
    cliffs = [e for e in events if e.get("key") == "test/loss" and e["kind"] == "cliff"]
    assert len(cliffs) == 1 and cliffs[0]["start"] <= grokked <= cliffs[0]["end"], cliffs
    assert cliffs[0]["to"] < 1e-3 * cliffs[0]["from"]
    for e in events:
        if e["kind"] in ("cliff", "rise", "onset", "saturation", "plateau_start", "plateau_end"):
            assert e["key"] in e["message"]
        if e["kind"] == "onset":
            assert e["at"] > 0
    print(
        f"seed {seed}: memorised {memorized} (100% at {perfect}), grokked {grokked}, "
        f"ratio {grokked / perfect:.1f}, circuit {first['circuit_formation']}, cleanup "
        f"{first['cleanup']}, {summary['steps_per_s']} steps/s, leads {summary['lead_steps']}"
    )
    return summary


def test_quick_preset_groks_seed0(tmp_path):
    _check_groks(0, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_quick_preset_groks_more_seeds(tmp_path, seed):
    _check_groks(seed, tmp_path)
