"""Learning-curve series (dynmon.curves): the protocol, the rows they write, old saved states."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TinyLM

import dynmon
from dynmon.curves import LossAutocorrSeries, NormCurvatureSeries, Series, default_series
from dynmon.metrics.timeseries import DEFAULT_NORM_SMOOTHING, autocorr_curvature, norm_curvature


def test_default_series_follow_the_protocol():
    series = default_series({"autocorr_window": 9, "norm_window": 5, "norm_log_time": True})
    assert all(isinstance(s, Series) for s in series)
    assert [s.name for s in series] == ["loss_autocorr", "norm_curvature"]
    assert series[0].stream.window == 9 and series[1].stream.window == 5
    assert series[1].stream.log_time is True
    assert all(s.finalize(10) == {} for s in series)


def test_loss_autocorr_rows_match_the_batch_function_on_looks_only():
    rng = np.random.default_rng(3)
    losses = 1.0 + 0.1 * rng.standard_normal(60) + np.linspace(0, 0.5, 60)
    expected = autocorr_curvature(losses, 12)  # NaN during the warm-up
    series = LossAutocorrSeries(window=12)
    for step, x in enumerate(losses):
        look = step % 5 == 0
        rows = series.update(step, {"loss": float(x), "other": 1.0}, look=look)
        if look and step >= 11:
            assert list(rows) == [step]
            assert rows[step]["dynmon/loss_autocorr_curv"] == pytest.approx(expected[step])
        else:
            assert rows == {}
    assert series.update(99, {"train/loss": 1.0}, look=True) == {}  # not its key


@pytest.mark.parametrize("ema_span", [1, 4])
def test_autocorr_windows_skipped_between_looks_change_nothing(ema_span):
    """Rows that are not written fold their loss in without computing the window (ema_span 1)
    or still compute it (an EMA needs every value); the written values are the same."""
    from dynmon.curves import AutocorrCurvature

    losses = 1.0 + 0.1 * np.random.default_rng(4).standard_normal(80)
    every, lazy = AutocorrCurvature(10, ema_span=ema_span), AutocorrCurvature(10, ema_span=ema_span)
    for step, x in enumerate(losses):
        want = every.update(step, float(x))
        got = lazy.update(step, float(x), compute=step % 7 == 0)
        if step % 7 == 0 or ema_span > 1:
            assert got == want or (got is None and want is None)
        else:
            assert got is None
    assert lazy.state_dict()["ring"] == every.state_dict()["ring"]


def test_norm_curvature_rows_belong_to_the_window_middle():
    steps = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512])  # an irregular (log) grid
    norms = 3.0 + 1e-3 * steps**2 - 0.5 * np.sqrt(steps)
    expected = norm_curvature(norms, steps, smoothing=DEFAULT_NORM_SMOOTHING)
    series = NormCurvatureSeries(window=7)
    written: dict[int, float] = {}
    for s, n in zip(steps, norms, strict=True):
        for at, row in series.update(int(s), {"dynmon/weight_norm": float(n)}).items():
            assert at < s  # a centred estimate: never the row being written
            written[at] = row["dynmon/norm_curvature"]
    assert sorted(written) == [int(s) for s in steps[3:-3]]
    for at, value in written.items():
        i = int(np.flatnonzero(steps == at)[0])
        assert value == pytest.approx(expected[i], rel=1e-9)


def _run(run_dir, losses, stop=None, state=None):
    """Log ``losses`` (and a growing weight norm) from the state's step on; the state at stop."""
    torch.manual_seed(0)  # the same weights in every run: only the bias moves
    model = TinyLM(d_model=16, n_layers=1)
    mon = dynmon.Monitor(
        model,
        run_dir=run_dir,
        schedule=dynmon.every(10),
        metrics=["norms"],
        options={"autocorr_window": 20, "norm_window": 5},
    )
    start = 0
    if state is not None:
        mon.load_state_dict(state)
        start = state["next_step"]
    saved = None
    for s in range(start, len(losses)):
        with torch.no_grad():
            model.unembed.bias.fill_((s / 10) ** 2 / 10)
        mon.step(s, loss=float(losses[s]))
        if s == stop:
            saved = mon.state_dict()
            break
    mon.close()
    return saved


def _series(run_dir, key):
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    by_step = {r["step"]: r[key] for r in rows if key in r}  # the last row of a step wins
    return dict(sorted(by_step.items()))


def test_a_state_saved_before_the_series_list_resumes_both_series(tmp_path):
    """Version 2 kept the series at the top level ("loss_autocorr", "norm_curvature"): loading it
    continues both series as if the run had never stopped."""
    rng = np.random.default_rng(0)
    losses = 1.0 + 0.1 * rng.standard_normal(150)
    _run(tmp_path / "whole", losses)
    state = _run(tmp_path / "cut", losses, stop=74)
    old = {k: v for k, v in state.items() if k != "series"}
    old |= {"version": 2, **state["series"]}  # the layout dynmon wrote before dynmon.curves
    assert set(state["series"]) == {"loss_autocorr", "norm_curvature"}
    _run(tmp_path / "cut", losses, state=old)

    for key in ("dynmon/loss_autocorr_curv", "dynmon/norm_curvature"):
        whole, cut = _series(tmp_path / "whole", key), _series(tmp_path / "cut", key)
        assert list(cut) == list(whole) and any(s > 74 for s in whole), key
        np.testing.assert_allclose(list(cut.values()), list(whole.values()), rtol=1e-12)
    acorr = _series(tmp_path / "whole", "dynmon/loss_autocorr_curv")
    expected = autocorr_curvature(losses, 20)
    np.testing.assert_allclose(list(acorr.values()), expected[list(acorr)], rtol=1e-9)


def test_a_fresh_state_without_series_starts_them_empty(tmp_path):
    """Version 1 had no series state: they start over (warm-up again) instead of failing."""
    rng = np.random.default_rng(1)
    losses = 1.0 + 0.1 * rng.standard_normal(60)
    state = _run(tmp_path / "a", losses, stop=29)
    old = {k: v for k, v in state.items() if k != "series"} | {"version": 1}
    _run(tmp_path / "a", losses, state=old)
    acorr = _series(tmp_path / "a", "dynmon/loss_autocorr_curv")
    assert [s for s in acorr if s >= 30] == [50]  # the first look 20 losses after the resume
