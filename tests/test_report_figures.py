"""The report's figure helpers: phases as bands, events on their own curve's panel and named,
log axes past two decades, sharpness against 2/lr, one copy of a curve logged twice, short
parameter names, robust heatmap scales, subspace drift per 100 steps."""

from __future__ import annotations

import numpy as np
import pytest

from dynmon.report import (
    _draw_curvature,
    _draw_loss,
    _loss_groups,
    _per_100_steps,
    _phases,
    _robust_limits,
    _same_curves,
    short_param_name,
)
from dynmon.runfolder import load_run
from dynmon.sinks.local import RunFolderSink


def _run(tmp_path, rows: dict[int, dict], events: list[dict] = (), config: dict | None = None):
    sink = RunFolderSink(tmp_path)
    sink.write_config(config or {"run": {"lr": 0.01}})
    for step, scalars in sorted(rows.items()):
        sink.write(step, scalars, {})
    for e in events:
        sink.write_event(e)
    sink.close()
    return load_run(tmp_path)


def test_subspace_distance_between_looks_is_a_rate_per_100_steps():
    steps = np.array([0, 13, 62])
    d = np.array([[np.nan], [0.069], [0.159]])
    rate = _per_100_steps(steps, d)
    assert np.isnan(rate[0, 0])
    assert rate[1, 0] == pytest.approx(0.069 * 100 / 13) and rate[2, 0] == pytest.approx(
        0.159 * 100 / 49
    )


def test_robust_heatmap_limits_ignore_an_early_flash_over_dense_looks():
    """Looks at steps 1, 2, 3, 5, 8, ... then every 50: the early flash covers many columns but
    few steps; limits are percentiles weighted by the steps each column spans."""
    steps = np.array([1, 2, 3, 5, 8, 13, 21, 34] + list(range(50, 2001, 50)))
    rng = np.random.default_rng(0)
    values = rng.uniform(0.02, 0.08, size=(8, len(steps)))
    values[:, :6] = 1.0  # looks 1-13: every head moved far from its initialisation
    widths = np.gradient(steps.astype(float))
    lo, hi = _robust_limits(values, widths)
    later = values[:, 6:]
    assert hi < 0.1 and lo > 0.0  # the fixed 0-1 scale would show all of this as black
    assert np.mean((later >= lo) & (later <= hi)) > 0.9
    assert _robust_limits(values) == pytest.approx(tuple(np.percentile(values, [2, 98])), rel=0.05)


def test_short_parameter_names():
    name = "layers.0._original_component.attn._original_component.q._original_component.weight"
    assert short_param_name(name) == "layers.0.attn.q"
    assert short_param_name("_orig_mod.module.head.bias") == "head.bias"
    assert short_param_name("weight") == "weight"


def test_phases_from_grokking_events():
    events = [
        {"kind": "memorization", "step": 100},
        {"kind": "circuit_formation", "step": 110},
        {"kind": "cleanup", "step": 690},
        {"kind": "grokking", "step": 830},
    ]
    spans = [(name, a, b) for name, _, a, b in _phases(events, 0.0)]
    assert spans == [
        ("memorisation", 0.0, 100),
        ("circuit formation", 110, 690),
        ("cleanup", 690, 830),
    ]
    assert [n for n, *_ in _phases(events[:1], 0.0)] == ["memorisation"]  # never closed: none


def test_loss_figure_draws_a_curve_logged_twice_once_and_no_learning_rate(tmp_path):
    rows = {}
    for s in range(0, 400, 10):
        loss = 4.0 * np.exp(-s / 30)  # spans decades: log axis
        rows[s] = {"loss": loss, "train/loss": loss, "test/acc": min(1.0, s / 300),
                   "gini/W_E": 0.2 + s / 1000, "lr": 0.01}  # fmt: skip
    run = _run(tmp_path, rows, [
        {"kind": "cliff", "key": "train/loss", "step": 200, "at": 60, "message": "m"},
        {"kind": "onset", "key": "test/acc", "step": 90, "at": 40, "message": "m"},
        {"kind": "grokking", "key": "test/acc", "step": 320, "at": 300, "message": "m"},
    ])  # fmt: skip
    assert list(_same_curves(run, ["loss", "train/loss"])) == ["train/loss"]
    groups = _loss_groups(run)
    assert [g[2] for g in groups] == [["loss", "train/loss"], ["test/acc"], ["gini/W_E"]]
    fig = _draw_loss(run)
    loss_ax, acc_ax, gini_ax = fig.axes[:3]
    assert loss_ax.get_yscale() == "log" and acc_ax.get_yscale() == "linear"
    labels = [[t.get_text() for t in ax.get_legend().get_texts()] for ax in (loss_ax, acc_ax)]
    assert "train/loss (= loss)" in labels[0] and "loss" not in labels[0]
    assert "cliff (train/loss)" in labels[0] and "cliff (train/loss)" not in labels[1]
    assert "onset (test/acc)" in labels[1] and "onset (test/acc)" not in labels[0]
    assert "grokking" in labels[0] and "grokking" in labels[1]  # a run-level event: everywhere
    assert all(ax.get_legend() is not None for ax in (loss_ax, acc_ax, gini_ax))
    drawn = [line.get_label() for ax in fig.axes for line in ax.get_lines()]
    assert not [d for d in drawn if d.startswith("lr")]


def test_sharpness_is_drawn_against_two_over_lr_on_a_log_axis(tmp_path):
    rows = {
        s: {"dynmon/sharpness": 400.0 * np.exp(-s / 40), "lr": 0.003} for s in range(0, 500, 50)
    }
    fig = _draw_curvature(_run(tmp_path, rows))
    ax = fig.axes[0]
    line = next(x for x in ax.get_lines() if x.get_label().startswith("2/lr"))
    assert np.allclose(np.asarray(line.get_ydata(), dtype=float), 2 / 0.003)
    assert ax.get_yscale() == "log"  # 400 down to 0.02: four decades
    assert "sharpness against 2/lr" in fig.get_suptitle()
