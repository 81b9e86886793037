"""The loss detector on synthetic families (tests/detector_families.py), on the recorded grokking
curve, and the rules every event keeps: judged on the curve's own scale, a steady exponential or
power-law decay is neither a cliff nor a plateau, no onset at the first log, every event names
its curve.

These tests use seeds 0-19 of each family; ``benchmarks/bench_detectors.py`` reports precision
and recall on held-out seeds (1000 on) that no test uses.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from detector_families import FAMILIES, cases, detect, precision_recall

from dynmon.events import OnsetDetector, PlateauCliffDetector, PlateauConfig, default_detectors

SEEDS = range(20)
DATA = Path(__file__).parent / "data" / "grokking_curve.json"


def _loss_detector() -> PlateauCliffDetector:
    return PlateauCliffDetector("loss")


@pytest.mark.parametrize("family", ["exponential", "power_law"])
def test_steady_decays_give_no_event(family):
    """Decays of 1-6 decades, noisy, on any logging grid: no cliff, no plateau."""
    for case in cases(family, SEEDS):
        events = detect(case, _loss_detector)
        assert events == [], (family, case.every, len(case.steps), [e["message"] for e in events])


@pytest.mark.parametrize("family", ["sigmoid_step", "staircase", "noise", "grokking_like"])
def test_families_with_events_precision_and_recall(family):
    """Every expected event found within a window, nothing else (≥ 0.95 each; 1.0 measured)."""
    precision, recall, bad = precision_recall(cases(family, SEEDS), _loss_detector)
    detail = [
        (c.family, c.every, c.expected, [(e["kind"], e["at"]) for e in ev]) for c, ev in bad[:3]
    ]
    assert precision >= 0.95 and recall >= 0.95, (precision, recall, detail)


def test_families_are_what_they_say():
    """The generators' own shapes: decays span their decades, steps drop by their factor."""
    for case in cases("exponential", SEEDS):
        assert np.log10(case.values[:20].mean() / case.values[-20:].mean()) > 1.3
    for case in cases("power_law", SEEDS):
        assert np.log10(case.values[:5].mean() / case.values[-20:].mean()) > 0.8
    for case in cases("sigmoid_step", SEEDS):
        (_, end), (_, cliff) = case.expected[1], case.expected[2]
        before = case.values[case.steps < end].mean()
        after = case.values[case.steps > 2 * cliff - end].mean()
        assert 1.3 < before / after < 25
    assert set(FAMILIES) == {
        "exponential", "power_law", "sigmoid_step", "staircase", "noise", "grokking_like",
    }  # fmt: skip


def _recorded_events(plateau: PlateauConfig | None = None) -> list[dict]:
    data = json.loads(DATA.read_text())
    cols = data["columns"][1:]
    dets = default_detectors(cols, plateau=plateau)
    events = []
    for row in data["rows"]:
        values = dict(zip(cols, row[1:], strict=True))
        events += [e for d in dets for e in d.update(row[0], values)]
    return events + [e for d in dets for e in d.finalize(data["rows"][-1][0])]


@pytest.mark.parametrize("window", [50, 10])
def test_recorded_grokking_curve_has_no_false_cliff_or_plateau(window):
    """The training loss falls exponentially from 0.045 to 1.5e-7 after memorisation (step 100)
    and the test loss drops from ~2 to 1e-5 at grokking (steps 500-1000), then both spike at
    step 1400 (a float-precision blow-up). Right answer: no plateau on either loss, no cliff on
    the training loss after memorisation, one cliff on the test loss, at grokking; rises only
    for the spike. With the pack's window (10 logs) and the default (50 logs)."""
    events = _recorded_events(PlateauConfig(window=window))
    losses = [e for e in events if "loss" in e["key"]]
    assert not [e for e in losses if e["kind"].startswith("plateau")], losses
    train_cliffs = [e for e in losses if e["key"] == "train/loss" and e["kind"] == "cliff"]
    assert all(e["at"] <= 150 for e in train_cliffs), [e["message"] for e in train_cliffs]
    test_cliffs = [e for e in losses if e["key"] == "test/loss" and e["kind"] == "cliff"]
    assert len(test_cliffs) == 1 and 500 <= test_cliffs[0]["at"] <= 1000, test_cliffs
    assert test_cliffs[0]["from"] > 1.0 and test_cliffs[0]["to"] < 1e-4
    rises = [e for e in losses if e["kind"] == "rise"]
    assert all(e["at"] >= 1250 and e["end"] >= 1400 for e in rises), rises  # the spike


def test_every_event_names_its_curve_and_no_onset_at_the_first_log():
    events = _recorded_events()
    assert events
    for e in events:
        assert e["key"] in e["message"], e["message"]
        if e["kind"] == "onset":
            assert e["at"] > 0, e["message"]
    det = OnsetDetector("acc")  # rising from the first log on: where it took off is unknown
    steps = np.arange(0, 300)
    rising = [e for s in steps for e in det.update(int(s), {"acc": float(min(1.0, s / 100))})]
    assert all(e["at"] > 0 for e in rising)


def test_log_scale_sees_decades_a_floor_would_flatten():
    """A loss falling steadily from 1 to 1e-8 is a decline all the way down: no plateau where
    it is tiny (a floor at 1e-3 of the first value made it look flat below ~1e-3)."""
    steps = np.arange(3000)
    rng = np.random.default_rng(0)
    values = 10.0 ** (-8 * steps / 3000) * np.exp(0.01 * rng.standard_normal(len(steps)))
    det = PlateauCliffDetector("loss")
    events = [
        e for s, v in zip(steps, values, strict=True) for e in det.update(int(s), {"loss": v})
    ]
    assert events == [], [e["message"] for e in events]
