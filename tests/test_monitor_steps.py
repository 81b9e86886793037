"""The Monitor's per-step path: which metrics are due, which inputs a look gathers, rows of plain
floats, the weights one step before, and where the Monitor's time goes (``Monitor.seconds``)."""

from __future__ import annotations

import numpy as np
import torch
from conftest import TinyLM, lm_loss

import dynmon
import dynmon.monitor as monitor_module
from dynmon.metrics.spec import MetricSpec, Output


def _recorder(name: str, needs: frozenset[str], seen: dict[str, list]) -> MetricSpec:
    """A metric that records, per call, its step and the inputs the look handed it."""

    def compute(ctx):
        seen.setdefault(name, []).append(
            {"step": ctx.step, "heads": len(ctx.heads), "spectra": sorted(ctx.spectra)}
        )
        return Output(scalars={f"{name}/calls": float(len(seen[name]))})

    return MetricSpec(name, compute, needs)


def test_due_metrics_follow_each_schedule_and_a_shared_schedule_is_asked_once(tmp_path):
    asked: list[int] = []

    def every_fourth(step: int) -> bool:  # a user schedule that counts its calls
        asked.append(step)
        return step % 4 == 0

    seen: dict[str, list] = {}
    specs = {
        "economy": False,
        _recorder("a", frozenset(), seen): None,  # the Monitor's schedule
        _recorder("b", frozenset(), seen): None,
        _recorder("c", frozenset(), seen): dynmon.every(3),
        _recorder("d", frozenset(), seen): dynmon.logspace(1, 20, 4),
    }
    with dynmon.Monitor(
        TinyLM(), run_dir=tmp_path, schedule=every_fourth, metrics=specs, strict=True
    ) as mon:
        for step in range(21):
            mon.step(step, loss=1.0)
    shared = [s for s in range(21) if s % 4 == 0]
    assert [r["step"] for r in seen["a"]] == shared
    assert [r["step"] for r in seen["b"]] == shared
    assert [r["step"] for r in seen["c"]] == [s for s in range(21) if s % 3 == 0]
    log_steps = [s for s in range(21) if dynmon.logspace(1, 20, 4)(s)]
    assert [r["step"] for r in seen["d"]] == log_steps
    # "a" and "b" share one schedule object: asked once per step (the memo), not twice
    assert asked == list(range(21))


def test_a_look_needing_only_heads_skips_the_head_pass(tmp_path, monkeypatch):
    calls: list[int] = []
    real = monitor_module.head_pass

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(monitor_module, "head_pass", counting)
    seen: dict[str, list] = {}
    heads_only = _recorder("heads_only", frozenset({"heads"}), seen)
    spectra = _recorder("with_spectra", frozenset({"heads", "head_spectra"}), seen)
    model = TinyLM()
    with dynmon.Monitor(
        model,
        run_dir=tmp_path,
        schedule=dynmon.every(2),
        metrics={"economy": False, heads_only: None, spectra: dynmon.every(4)},
        strict=True,
    ) as mon:
        for step in range(9):
            mon.step(step)
    # steps 0..8: heads_only at 0, 2, 4, 6, 8; spectra at 0, 4, 8 (the only passes)
    assert [r["step"] for r in seen["heads_only"]] == [0, 2, 4, 6, 8]
    assert len(calls) == 3
    by_step = {r["step"]: r for r in seen["heads_only"]}
    assert by_step[2]["heads"] == 2 and by_step[2]["spectra"] == []  # weights, no spectra
    assert by_step[4]["spectra"] == ["OV", "QK"]  # shared with the metric that needs them
    assert all(r["heads"] == 2 and r["spectra"] == ["OV", "QK"] for r in seen["with_spectra"])


def test_heads_only_metric_gets_the_adapters_weights(tmp_path):
    """The weights a heads-only look hands over are the model's own (dense QK = W_Q W_Kᵀ)."""
    model = TinyLM()
    got = {}

    def compute(ctx):
        got["QK"] = [h.W_Q @ h.W_K.mT for h in ctx.heads]  # [H, D, D] per layer
        return Output()

    with dynmon.Monitor(
        model, run_dir=tmp_path, metrics=[MetricSpec("qk", compute, frozenset({"heads"}))]
    ) as mon:
        mon.step(0)
    D, H = 32, 4
    dh = D // H
    for layer, qk in zip(model.layers, got["QK"], strict=True):
        Wq, Wk = layer.self_attn.in_proj_weight.detach().split(D, 0)[:2]  # [D, D] each
        W_Q = Wq.reshape(H, dh, D).transpose(1, 2)  # [H, D, dh]
        W_K = Wk.reshape(H, dh, D).transpose(1, 2)
        torch.testing.assert_close(qk, W_Q @ W_K.mT)


def test_float_rows_and_tensor_rows_write_the_same_values(tmp_path):
    g = torch.Generator().manual_seed(0)
    values = torch.rand(40, 3, generator=g, dtype=torch.float64)
    values[17, 1] = float("nan")
    runs = {}
    for kind in ("float", "tensor"):
        with dynmon.Monitor(
            torch.nn.Linear(3, 3), run_dir=tmp_path / kind, metrics=[], strict=True
        ) as mon:
            for step, row in enumerate(values):
                vals = row.tolist() if kind == "float" else list(row)
                mon.step(step, loss=vals[0], **{"test/loss": vals[1], "acc": vals[2]})
        runs[kind] = (dynmon.load_run(tmp_path / kind), mon.events)  # closed: all rows out
    (a, ev_a), (b, ev_b) = runs["float"], runs["tensor"]
    for k in ("loss", "test/loss", "acc"):
        sa, va = a.series(k)
        sb, vb = b.series(k)
        np.testing.assert_array_equal(sa, np.arange(40))
        np.testing.assert_array_equal(sa, sb)
        np.testing.assert_array_equal(va, vb)
    np.testing.assert_array_equal(a.series("test/loss")[1], values[:, 1].numpy())
    assert ev_a == ev_b


def test_update_ratio_still_gets_the_weights_one_step_before(tmp_path):
    torch.manual_seed(0)
    model = TinyLM(dropout=0.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(1)
    name = "unembed.weight"
    before: dict[int, torch.Tensor] = {}
    after: dict[int, torch.Tensor] = {}
    with dynmon.Monitor(
        model, run_dir=tmp_path, schedule=dynmon.every(3), metrics=["update_ratio"], strict=True
    ) as mon:
        for step in range(1, 8):
            before[step] = model.unembed.weight.detach().clone()
            opt.zero_grad()
            lm_loss(model, torch.randint(0, 32, (4, 9), generator=g)).backward()
            opt.step()
            after[step] = model.unembed.weight.detach().clone()
            mon.step(step)
    steps, ratio = dynmon.load_run(tmp_path).series(f"dynmon/update_ratio/{name}")
    assert steps.tolist() == [3, 6]
    for s, r in zip(steps.tolist(), ratio.tolist(), strict=True):
        expected = (after[s] - before[s]).norm() / before[s].norm()
        assert abs(r - float(expected)) <= 1e-5 * float(expected)


def test_seconds_splits_the_time_inside_step(tmp_path):
    model = TinyLM()
    with dynmon.Monitor(model, run_dir=tmp_path, schedule=dynmon.every(5), strict=True) as mon:
        assert mon.seconds == {}
        for step in range(11):
            mon.step(step, loss=torch.tensor(2.0))
        parts = mon.seconds
    assert {"step", "inputs", "rows", "metric/erank", "metric/subspace_dist"} <= parts.keys()
    assert all(v >= 0 for v in parts.values())
    inside = sum(v for k, v in parts.items() if k != "step")
    assert inside <= parts["step"]  # the parts are disjoint pieces of step()
