"""Online event detection: plateaus, cliffs, onsets, saturation, grokking (dynmon.events).

Synthetic curves with known change points and realistic noise (multiplicative, heavy-tailed,
irregular logging), the linear-ICL staircase of docs/packs.md#linear-icl, and a grokking curve
recorded by training a one-layer transformer (``tests/data/make_grokking_curve.py``).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from detector_families import match

from dynmon.events import (
    Detector,
    GrokkingDetector,
    OnsetConfig,
    OnsetDetector,
    PlateauCliffDetector,
    PlateauConfig,
    SaturationDetector,
    default_detectors,
    is_accuracy_key,
    is_loss_key,
)

DATA = Path(__file__).parent / "data" / "grokking_curve.json"
W = PlateauConfig().window
ICL_LEVELS = [1.0, 0.640580, 0.377372, 0.209805, 0.135995]  # docs/packs.md#linear-icl, D=4, N=31


# -- synthetic learning curves ----------------------------------------------------------------


def _logistic(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(x / 2.0))


def staircase(levels, centers, scales, steps, sigma, rng, df=5):
    """Plateaus at ``levels`` joined by logistic drops; lognormal noise with Student-t tails."""
    t = np.asarray(steps, dtype=float)
    clean = np.full_like(t, levels[0])
    for j, (c, s) in enumerate(zip(centers, scales, strict=True)):
        clean -= (levels[j] - levels[j + 1]) * _logistic((t - c) / s)
    eps = rng.standard_t(df, len(t)) / math.sqrt(df / (df - 2))
    return clean * np.exp(sigma * eps)


def truth(levels, centers, scales):
    """Known events: plateaus start 3 scales after a drop's centre and end 3 scales before."""
    out = [("plateau_start", 0.0)]
    for c, s in zip(centers, scales, strict=True):
        out += [("plateau_end", c - 3 * s), ("cliff", c), ("plateau_start", c + 3 * s)]
    return out


def random_case(seed: int, window: int = W):
    """2–5 plateaus of 4–12 windows, drops of 20–60 %, noise 0.5–5 %, regular or jittered steps."""
    rng = np.random.default_rng(seed)
    every = int(rng.choice([1, 1, 5, 10]))
    k = int(rng.integers(2, 6))
    lengths = rng.integers(4 * window, 12 * window, k) * every
    levels = [float(np.exp(rng.uniform(np.log(0.3), np.log(5.0))))]
    for _ in range(k - 1):
        levels.append(levels[-1] * (1 - rng.uniform(0.2, 0.6)))
    scales = list(rng.uniform(0.5, window / 5, k - 1) * every)
    centers = list(np.cumsum(lengths[:-1]).astype(float))
    total = int(sum(lengths))
    steps = np.arange(0, total, every)
    if rng.random() < 0.3:  # irregular logging: the same number of logs at random steps
        steps = np.unique(rng.integers(0, total, len(steps)))
    values = staircase(levels, centers, scales, steps, float(rng.uniform(0.005, 0.05)), rng)
    drop_end = {c: c + 3 * s for c, s in zip(centers, scales, strict=True)}
    return steps, values, truth(levels, centers, scales), every, drop_end


def feed(det, steps, values, key: str = "loss", split: int | None = None):
    """Feed a series, optionally resuming at log ``split`` from a JSON round trip of the state."""
    events = []
    for i, (s, v) in enumerate(zip(steps, values, strict=True)):
        if split is not None and i == split:
            state = json.loads(json.dumps(det.state_dict()))
            det = type(det)(det.key, det.config)
            det.load_state_dict(state)
        events += det.update(int(s), {key: float(v)})
    return events + det.finalize(int(steps[-1])), det


def _logs_between(steps: np.ndarray, a: float, b: float) -> int:
    return int(np.searchsorted(steps, b) - np.searchsorted(steps, a))


# -- plateaus and cliffs ----------------------------------------------------------------------


def test_random_staircases_precision_recall_and_latency():
    """Over many seeds: precision and recall ≥ 0.9 within one window; cliffs and plateau ends
    known within a window, a plateau after a drop within 1.5 windows, one from the first log
    within two (the stretch it takes to tell a flat start from a slow steady decline)."""
    kinds = ("plateau_start", "plateau_end", "cliff")
    tp = n_true = n_found = 0
    late: dict[str, list[float]] = {k: [] for k in (*kinds, "first_plateau")}
    for seed in range(60):
        steps, values, expected, every, drop_end = random_case(seed)
        events, _ = feed(PlateauCliffDetector("loss"), steps, values)
        found = [e for e in events if e["kind"] in kinds and not e.get("open")]
        pairs, _ = match(found, expected, tol=W * every)
        tp, n_true, n_found = tp + len(pairs), n_true + len(expected), n_found + len(found)
        for kind, t, e in pairs:
            if kind == "cliff":  # a cliff is known once the drop is over: 3 scales after its centre
                t = drop_end[t]
            which = "first_plateau" if kind == "plateau_start" and t == 0 else kind
            late[which].append(_logs_between(steps, t, e["step"]) / W)
    precision, recall = tp / n_found, tp / n_true
    assert precision >= 0.9 and recall >= 0.9, (precision, recall)
    assert precision >= 0.99 and recall >= 0.99, "measured 0.999 / 0.999 when written"
    assert max(late["plateau_end"]) <= 1.0
    assert np.mean(np.array(late["cliff"]) <= 1.0) >= 0.97
    assert np.mean(np.array(late["plateau_start"]) <= 1.5) >= 0.95  # measured: 95% by 1.32
    assert max(late["first_plateau"]) <= 2.0
    assert max(max(v) for k, v in late.items() if k != "first_plateau") <= 1.6


def test_cliff_latency_from_steepest_point_for_sharp_drops():
    """A drop much sharper than the window is reported within one window of its steepest point."""
    rng = np.random.default_rng(7)
    for trial in range(10):
        centers = [1000.0 + 37 * trial, 2600.0]
        scales = [2.0, 1.0]
        steps = np.arange(0, 4000)
        values = staircase([2.0, 1.2, 0.5], centers, scales, steps, 0.02, rng)
        events, _ = feed(PlateauCliffDetector("loss"), steps, values)
        cliffs = [e for e in events if e["kind"] == "cliff"]
        assert len(cliffs) == 2
        for c, e in zip(centers, cliffs, strict=True):
            assert abs(e["at"] - c) <= 5
            assert 0 < e["step"] - c <= W


def test_icl_staircase_levels_and_drops():
    """The linear-ICL loss staircase: every plateau found at its level, every drop found."""
    centers = [1500.0, 3500.0, 5500.0, 7500.0]
    for seed, (every, scale, sigma) in enumerate(
        [(1, 40.0, 0.02), (1, 64.0, 0.01), (5, 60.0, 0.03), (1, 100.0, 0.0)]
    ):
        rng = np.random.default_rng(seed)
        steps = np.arange(0, 9500, every)
        values = staircase(ICL_LEVELS, centers, [scale] * 4, steps, sigma, rng)
        events, _ = feed(PlateauCliffDetector("loss"), steps, values)
        starts = [e for e in events if e["kind"] == "plateau_start"]
        ends = [e for e in events if e["kind"] == "plateau_end"]
        cliffs = [e for e in events if e["kind"] == "cliff"]
        assert len(starts) == len(ends) == 5 and len(cliffs) == 4, [e["message"] for e in events]
        assert ends[-1]["open"] and not any(e["open"] for e in ends[:-1])
        for lv, s, e in zip(ICL_LEVELS, starts, ends, strict=True):
            assert e["level"] == pytest.approx(lv, rel=0.02)  # the plateau's mean
            assert s["level"] == pytest.approx(lv, rel=0.08)  # its first window, maybe a tail
        for j, (c, e) in enumerate(zip(centers, cliffs, strict=True)):
            assert abs(e["at"] - c) <= W * every
            assert e["from"] == pytest.approx(ICL_LEVELS[j], rel=0.03)
            assert e["to"] == pytest.approx(ICL_LEVELS[j + 1], rel=0.1)
            assert e["start"] <= e["at"] <= e["end"]
            assert e["size"] == pytest.approx(e["from"] - e["to"])


def test_event_fields_and_message():
    rng = np.random.default_rng(0)
    steps = np.arange(0, 3000)
    values = staircase([1.0, 0.64], [2000.0], [5.0], steps, 0.01, rng)
    events, _ = feed(PlateauCliffDetector("loss"), steps, values)
    start, end, cliff = events[0], events[1], events[2]
    assert start["kind"] == "plateau_start" and start["start"] == start["at"] == 0
    assert start["message"] == "loss plateau started at step 0 at 1.00"
    assert set(end) >= {"step", "kind", "key", "at", "message", "start", "end", "level", "duration"}
    assert end["duration"] == end["end"] - end["start"] and end["step"] >= end["end"]
    assert set(cliff) >= {"from", "to", "size", "start", "end", "steepest", "relative_size"}
    assert cliff["relative_size"] == pytest.approx(0.36, abs=0.02)
    pattern = r"loss fell 1\.00 → 0\.6\d\d \(-3\d%\) between steps 1,9\d\d and 2,0\d\d \(steepest"
    assert re.match(pattern, cliff["message"]), cliff["message"]
    for e in events:
        json.dumps(e)  # plain, serialisable
        assert e["step"] >= e["at"]


def test_noise_alone_is_one_plateau_and_no_cliff():
    rng = np.random.default_rng(3)
    steps = np.arange(20_000)
    values = 2.0 * np.exp(0.05 * rng.standard_t(5, len(steps)) / math.sqrt(5 / 3))
    events, _ = feed(PlateauCliffDetector("loss"), steps, values)
    assert [e["kind"] for e in events] == ["plateau_start", "plateau_end"]
    assert events[1]["open"] and events[1]["level"] == pytest.approx(2.0, rel=0.01)


def test_power_law_decline_gives_no_late_cliff():
    """A steady power-law decline is not a cliff once its early fall is over."""
    rng = np.random.default_rng(4)
    steps = np.arange(1, 20_000)
    values = 4.0 * steps**-0.3 * np.exp(0.03 * rng.standard_normal(len(steps)))
    events, _ = feed(PlateauCliffDetector("loss"), steps, values)
    assert not [e for e in events if e["kind"] == "cliff" and e["at"] > 1000]


def test_rise_and_nan_events():
    steps = np.arange(600)
    values = np.where(steps < 300, 0.5, 1.5)  # a loss that jumps up, then turns NaN once
    det = PlateauCliffDetector("loss")
    events, det = feed(det, steps, values)
    assert any(e["kind"] == "rise" and abs(e["at"] - 300) <= 2 for e in events)
    nan = det.update(600, {"loss": float("nan")}) + det.update(601, {"loss": float("inf")})
    assert [e["kind"] for e in nan] == ["nan"] and det.skipped == 2
    json.dumps(nan)
    quiet = PlateauCliffDetector("loss", PlateauConfig(report_rises=False))
    assert not [e for e in feed(quiet, steps, values)[0] if e["kind"] == "rise"]


def test_loss_heading_to_zero_and_linear_scale():
    """Log scale with a floor: a loss reaching exactly 0 still counts; linear relative works."""
    steps = np.arange(1000)
    values = np.where(steps < 500, 2.0, 0.0)
    events, det = feed(PlateauCliffDetector("loss"), steps, values)
    assert det.skipped == 0
    assert any(e["kind"] == "cliff" and e["to"] == pytest.approx(0.0, abs=1e-9) for e in events)
    lin = PlateauCliffDetector("loss", PlateauConfig(log_scale=False))
    events, _ = feed(lin, steps, np.where(steps < 500, 2.0, 1.0))
    cliff = [e for e in events if e["kind"] == "cliff"]
    assert len(cliff) == 1 and cliff[0]["relative_size"] == pytest.approx(0.5)


def test_irregular_steps_use_step_numbers():
    """Logged every 1 or every 7 steps with jitter: the same change points, in steps."""
    rng = np.random.default_rng(5)
    dense = np.arange(0, 14_000)
    sparse = np.unique(np.sort(rng.choice(dense, 2000, replace=False)))
    found = []
    for steps in (dense, sparse):
        values = staircase([1.0, 0.5, 0.3], [5000.0, 10_000.0], [10.0, 10.0], steps, 0.01, rng)
        events, _ = feed(PlateauCliffDetector("loss"), steps, values)
        found.append([e["at"] for e in events if e["kind"] == "cliff"])
    assert len(found[0]) == len(found[1]) == 2
    for a, b in zip(*found, strict=True):
        assert abs(a - b) <= 7 * W // 2


def test_min_length_delays_the_plateau():
    steps = np.arange(2000)
    values = np.where(steps < 1000, 1.0, 0.5)
    events, _ = feed(PlateauCliffDetector("loss", PlateauConfig(min_length=300)), steps, values)
    starts = [e for e in events if e["kind"] == "plateau_start"]
    assert [e["at"] for e in starts][0] == 0 and starts[0]["step"] >= 300
    assert starts[1]["step"] - starts[1]["at"] >= 300


# -- state and memory -------------------------------------------------------------------------


@pytest.mark.parametrize("split", [10, 49, 50, 51, 777, 1403, 2222, 4000])
def test_state_round_trip_mid_stream(split):
    """A detector resumed from a JSON round trip of its state emits exactly the same events."""
    steps, values, *_ = random_case(11)
    whole, _ = feed(PlateauCliffDetector("loss"), steps, values)
    resumed, _ = feed(PlateauCliffDetector("loss"), steps, values, split=split)
    assert resumed == whole and whole


def test_state_round_trip_onset_saturation_grokking():
    rows, cols = _curve()
    for split in (5, 12, 40, 75, 120):
        dets = default_detectors(cols)
        copies = default_detectors(cols)
        a, b = [], []
        for i, row in enumerate(rows):
            if i == split:
                for d, c in zip(dets, copies, strict=True):
                    c.load_state_dict(json.loads(json.dumps(d.state_dict())))
                dets_b = copies
            values = dict(zip(cols, row[1:], strict=True))
            a += [e for d in dets for e in d.update(row[0], values)]
            if i >= split:
                b += [e for d in dets_b for e in d.update(row[0], values)]
        assert b == [e for e in a if e["step"] >= rows[split][0]]


def test_state_of_version_1_still_loads():
    """A checkpoint saved before the trend fields existed resumes (they start afresh)."""
    steps, values, *_ = random_case(11)
    half = len(steps) // 2
    _, det = feed(PlateauCliffDetector("loss"), steps[:half], values[:half])
    state = json.loads(json.dumps(det.state_dict()))
    state["version"] = 1
    new = ("slopes", "t_origin", "h0", "move_end_n", "trend_slope", "base_slope", "trend_from")
    for k in new:
        state["trend"].pop(k)
    if state["trend"]["plateau"] is not None:
        state["trend"]["plateau"] = {
            k: v for k, v in state["trend"]["plateau"].items() if k not in ("s", "after_move")
        }
    resumed = PlateauCliffDetector("loss")
    resumed.load_state_dict(state)
    events, _ = feed(resumed, steps[half:], values[half:])
    assert all(e["at"] >= steps[half] - 2 * W * 10 for e in events)
    json.dumps(resumed.state_dict())


def test_state_rejects_a_foreign_version():
    det = SaturationDetector("acc")
    with pytest.raises(ValueError, match="version"):
        det.load_state_dict({"version": 99})


def test_memory_is_bounded_over_200k_steps():
    """Buffers and the saved state stay the same size however long the run."""
    det = PlateauCliffDetector("loss")
    rng = np.random.default_rng(0)
    noise = np.exp(0.05 * rng.standard_normal(200_000))
    sizes = {}
    for i, v in enumerate(noise.tolist()):
        det.update(i, {"loss": (1.0 + (i // 40_000) * 0.5) * v})  # with cliffs up and down
        if i in (50_000, 199_999):
            tr = det._trend
            sizes[i] = (len(tr.ts), len(tr.ys), len(json.dumps(det.state_dict())))
    assert sizes[50_000][:2] == sizes[199_999][:2] == (2 * W, 2 * W)
    assert abs(sizes[50_000][2] - sizes[199_999][2]) < 400  # digits of numbers only


# -- accuracies: onset, saturation, grokking ---------------------------------------------------


def _curve():
    data = json.loads(DATA.read_text())
    return data["rows"], data["columns"][1:]


def _series(rows, cols, key):
    j = cols.index(key) + 1
    return np.array([r[0] for r in rows]), np.array([r[j] for r in rows])


def test_grokking_detector_on_a_recorded_curve():
    """Memorisation and grokking within ±100 steps of the real crossings; the right delay."""
    rows, cols = _curve()
    steps, train = _series(rows, cols, "train/acc")
    _, test = _series(rows, cols, "test/acc")
    mem_true = steps[np.argmax(train >= 0.95)]
    grok_true = steps[np.argmax(test >= 0.95)]
    assert 50 <= mem_true <= 150 and 500 <= grok_true <= 1300  # a real grokking run
    det = GrokkingDetector("train/acc", "test/acc", threshold=0.95)
    assert isinstance(det, Detector)
    events = []
    for row in rows:
        events += det.update(row[0], dict(zip(cols, row[1:], strict=True)))
    mem, grok = events
    assert mem["kind"] == "memorization" and grok["kind"] == "grokking"
    assert abs(mem["at"] - mem_true) <= 100 and abs(grok["at"] - grok_true) <= 100
    assert grok["delay_ratio"] == pytest.approx(grok["at"] / mem["at"])
    assert grok["delay_ratio"] == pytest.approx(grok_true / mem_true, rel=0.05)
    assert grok["delay_ratio"] > 5
    for e in events:  # emitted once held for 3 logs: 20 steps, well inside a window
        assert 0 <= e["step"] - e["at"] <= 2 * 10 < OnsetConfig().window * 10
    assert "grokking" in grok["message"] and "7.8×" in grok["message"]


def test_default_detectors_on_the_recorded_curve():
    rows, cols = _curve()
    dets = default_detectors(cols)
    names = sorted(f"{type(d).__name__}:{','.join(d.keys)}" for d in dets)
    assert "GrokkingDetector:train/acc,test/acc" in names
    assert "PlateauCliffDetector:test/loss" in names and "OnsetDetector:test/acc" in names
    events = []
    for row in rows:
        values = dict(zip(cols, row[1:], strict=True))
        events += [e for d in dets for e in d.update(row[0], values)]
    events += [e for d in dets for e in d.finalize(rows[-1][0])]
    by = {(e["kind"], e["key"]): e for e in reversed(events)}  # the first of each
    assert 80 <= by[("saturation", "train/acc")]["at"] <= 120
    onset = by[("onset", "test/acc")]
    assert onset["at"] < by[("grokking", "test/acc")]["at"]
    for e in events:
        json.dumps(e)


def test_generalization_without_delay():
    det = GrokkingDetector(min_delay_ratio=2.0, hold=1)
    e1 = det.update(100, {"train/acc": 0.97, "test/acc": 0.5})
    e2 = det.update(120, {"train/acc": 0.99, "test/acc": 0.96})
    assert [e["kind"] for e in e1 + e2] == ["memorization", "generalization"]
    assert e2[0]["delay_ratio"] == pytest.approx(1.2)
    early = GrokkingDetector(hold=1)
    assert early.update(5, {"test/acc": 0.99})[0]["delay_ratio"] is None


def test_saturation_hold_and_percent_units():
    det = SaturationDetector("acc", threshold=0.999, hold=3)
    values = [0.5, 0.9995, 0.9, 1.0, 1.0, 1.0, 1.0]
    events = [e for i, v in enumerate(values) for e in det.update(i * 10, {"acc": v})]
    assert len(events) == 1 and events[0]["at"] == 30 and events[0]["step"] == 50
    pct = SaturationDetector("acc")
    events = [
        e for i, v in enumerate([5.0, 50.0, 99.95, 99.95, 99.95]) for e in pct.update(i, {"acc": v})
    ]
    assert len(events) == 1 and events[0]["threshold"] == pytest.approx(99.9)


def test_onset_of_a_rising_accuracy():
    """An accuracy leaving a floor: onset where the rise begins, found within a window."""
    rng = np.random.default_rng(1)
    window = OnsetConfig().window
    for start in (300, 650, 1000):
        steps = np.arange(0, 2000, 5)
        acc = (
            0.1
            + 0.85 * _logistic((steps - start - 40) / 10.0)
            + 0.01 * rng.standard_normal(len(steps))
        )
        events, _ = feed(OnsetDetector("acc"), steps, acc, key="acc")
        assert len(events) == 1, [e["message"] for e in events]
        e = events[0]
        assert abs(e["at"] - start) <= window * 5
        assert _logs_between(steps, start, e["step"]) <= 2 * window
        assert e["from"] == pytest.approx(0.1, abs=0.03)
    flat = 0.5 + 0.01 * rng.standard_normal(2000)
    assert feed(OnsetDetector("acc"), np.arange(2000), flat, key="acc")[0] == []


def test_detectors_ignore_missing_keys_and_replayed_steps():
    det = PlateauCliffDetector("loss")
    assert det.update(0, {"acc": 1.0}) == []
    det.update(5, {"loss": 1.0})
    det.update(5, {"loss": 100.0})  # the same step again: ignored
    det.update(3, {"loss": 100.0})  # an earlier one: ignored
    assert det._trend.n == 1


# -- defaults and configuration ----------------------------------------------------------------


def test_default_detectors_from_keys():
    keys = [
        "loss",
        "train/loss",
        "val_loss",
        "train_acc",
        "val_acc",
        "grad_accum",
        "lr",
        "dynmon/erank/L0.H0.QK",
        "accuracy",
    ]
    dets = default_detectors(keys)
    kinds = sorted((type(d).__name__, d.keys) for d in dets)
    assert ("PlateauCliffDetector", ("loss",)) in kinds
    assert ("PlateauCliffDetector", ("val_loss",)) in kinds
    assert ("GrokkingDetector", ("train_acc", "val_acc")) in kinds
    assert not [k for k in kinds if "grad_accum" in k[1] or "lr" in k[1] or "dynmon" in k[1][0]]
    assert ("SaturationDetector", ("accuracy",)) in kinds
    assert kinds == sorted((type(d).__name__, d.keys) for d in default_detectors(reversed(keys)))
    assert all(isinstance(d, Detector) for d in dets)
    assert is_loss_key("test/loss") and not is_loss_key("acc")
    assert is_accuracy_key("top1_acc") and not is_accuracy_key("accum_steps")
    assert not [d for d in default_detectors(["train/acc"]) if isinstance(d, GrokkingDetector)]
    tuned = default_detectors(["loss", "train/acc", "test/acc"], plateau=PlateauConfig(window=10))
    assert tuned[-1].threshold == 0.95 and tuned[0].config.window == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"window": 3},
        {"flat_tol": 0.1, "fast_tol": 0.05},
        {"min_drop": 1.5},
        {"z_flat": 5.0},
        {"min_length": -1},
        {"drift_tol": 0.0},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        PlateauConfig(**kwargs)


def test_monitor_writes_detected_events(tmp_path):
    """Wired into the Monitor: default detectors pick the keys up, events reach events.jsonl."""
    dynmon = pytest.importorskip("dynmon")
    from conftest import TinyLM

    rng = np.random.default_rng(0)
    steps = np.arange(600)
    values = staircase([2.0, 1.0], [300.0], [3.0], steps, 0.01, rng)
    with dynmon.Monitor(TinyLM(), run_dir=tmp_path, metrics=[], strict=True) as mon:
        for s, v in zip(steps, values, strict=True):
            mon.step(int(s), loss=float(v))
        state = mon.state_dict()
    kinds = [json.loads(x)["kind"] for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert kinds[:2] == ["plateau_start", "plateau_end"] and "cliff" in kinds
    json.dumps(state["detectors"])
