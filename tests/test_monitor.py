"""The Monitor's contract: non-interference, keys, fault isolation, state, bounded memory."""

from __future__ import annotations

import gc
import json
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyLM, lm_loss
from torch import nn

import dynmon
from dynmon.metrics.spec import MetricSpec, Output
from dynmon.monitor import MetricError


def _batches(n: int, seed: int = 1, vocab: int = 32, batch: int = 8, length: int = 12):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (batch, length), generator=g) for _ in range(n)]


def _train(model: nn.Module, batches, monitor=None, lr: float = 3e-3):
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step, tokens in enumerate(batches):
        opt.zero_grad()
        loss = lm_loss(model, tokens)
        loss.backward()
        opt.step()
        if monitor is not None:
            monitor.step(step, loss=loss)
    return model


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_monitor_leaves_training_bitwise_identical(tmp_path):
    batches = _batches(25)
    torch.manual_seed(0)
    plain = _train(TinyLM(), batches)
    torch.manual_seed(0)
    model = TinyLM()
    with dynmon.Monitor(
        model,
        run_dir=tmp_path,
        schedule=dynmon.every(3),
        metrics={"full": None, "sharpness": dynmon.every(10), "hessian_trace": dynmon.every(10)},
        loss_fn=lm_loss,
        probe_batch=batches[0],
        options={"max_iter": 20, "tol": 1e-2, "num_probes": 4},
        strict=True,
    ) as mon:
        watched = _train(model, batches, mon)
    for (name, a), b in zip(plain.state_dict().items(), watched.state_dict().values(), strict=True):
        assert torch.equal(a, b), f"{name} differs with the monitor attached"
    # the training RNG stream continues identically too (dropout used it every step)
    assert mon.disabled == {}
    rows = _lines(tmp_path / "metrics.jsonl")
    assert any("dynmon/sharpness" in r for r in rows)


def test_keys_per_head_layer_and_overall(tmp_path):
    model = TinyLM()
    with dynmon.Monitor(model, run_dir=tmp_path, schedule=dynmon.every(5), strict=True) as mon:
        _train(model, _batches(11), mon)
    rows = {r["step"]: r for r in _lines(tmp_path / "metrics.jsonl")}
    assert sorted(rows) == list(range(11))
    look = rows[5]
    for circuit in ("QK", "OV"):
        for layer in range(2):
            for head in range(4):
                assert f"dynmon/erank/L{layer}.H{head}.{circuit}" in look
            per_head = [look[f"dynmon/erank/L{layer}.H{h}.{circuit}"] for h in range(4)]
            assert look[f"dynmon/erank/L{layer}.{circuit}"] == pytest.approx(np.mean(per_head))
        assert f"dynmon/erank/{circuit}" in look
        assert f"dynmon/subspace_dist/L1.H3.{circuit}" in look  # vs the look at step 0
    assert "dynmon/weight_norm" in look and "dynmon/grad_norm" in look
    assert not any(k.startswith("dynmon/") for k in rows[4])  # no look, only the loss
    assert rows[4]["loss"] > 0


def test_erank_matches_dense_circuits(tmp_path):
    """The logged erank of a head equals the erank of its dense W_Q W_Kᵀ, computed with numpy."""
    model = TinyLM()
    with dynmon.Monitor(model, run_dir=tmp_path, schedule=[0], strict=True) as mon:
        mon.step(0)
    row = _lines(tmp_path / "metrics.jsonl")[0]
    layer = model.layers[1].self_attn
    D, H = 32, 4
    Wq = layer.in_proj_weight[:D].detach().double().numpy()  # [out, in]
    Wk = layer.in_proj_weight[D : 2 * D].detach().double().numpy()
    dh = D // H
    qk = Wq[2 * dh : 3 * dh].T @ Wk[2 * dh : 3 * dh]  # head 2: x W_Q[h] W_K[h]ᵀ xᵀ
    s = np.linalg.svd(qk, compute_uv=False)
    s = s[s > 1e-12 * s[0]]
    p = s / s.sum()
    assert row["dynmon/erank/L1.H2.QK"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-4)


def test_failing_metric_reported_once_and_switched_off(tmp_path):
    calls = []

    def broken(ctx):
        calls.append(ctx.step)
        raise RuntimeError("boom")

    spec = MetricSpec("broken", broken, frozenset(), "opt-in")
    model = TinyLM()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with dynmon.Monitor(
            model, run_dir=tmp_path, schedule=dynmon.every(2), metrics=["economy", spec]
        ) as mon:
            _train(model, _batches(7), mon)
    assert calls == [0]
    assert len([w for w in caught if "broken" in str(w.message)]) == 1
    assert "broken" in mon.disabled
    events = _lines(tmp_path / "events.jsonl")
    assert [e["kind"] for e in events if e.get("metric") == "broken"] == ["metric_error"]
    rows = {r["step"]: r for r in _lines(tmp_path / "metrics.jsonl")}
    assert "dynmon/erank/QK" in rows[6]  # the other metrics went on


def test_strict_raises(tmp_path):
    spec = MetricSpec("broken", lambda ctx: 1 / 0, frozenset(), "opt-in")
    mon = dynmon.Monitor(TinyLM(), run_dir=tmp_path, metrics=[spec], strict=True)
    with pytest.raises(MetricError, match="broken"):
        mon.step(0)


def test_custom_metric_and_own_schedule(tmp_path):
    spec = MetricSpec("n_params", lambda ctx: Output(scalars={"dynmon/n_params": 7.0}))
    model = TinyLM()
    with dynmon.Monitor(
        model,
        run_dir=tmp_path,
        schedule=dynmon.every(100),
        metrics={"economy": None, spec: dynmon.every(3)},
        strict=True,
    ) as mon:
        for s in range(7):
            mon.step(s, loss=1.0)
    rows = {r["step"]: r for r in _lines(tmp_path / "metrics.jsonl")}
    assert [s for s, r in rows.items() if "dynmon/n_params" in r] == [0, 3, 6]
    assert [s for s, r in rows.items() if "dynmon/erank/QK" in r] == [0]


def test_bad_configuration_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown metric 'erank2'.*economy"):
        dynmon.Monitor(TinyLM(), run_dir=tmp_path, metrics=["erank2"])
    with pytest.raises(ValueError, match="loss_fn=.*probe_batch="):
        dynmon.Monitor(TinyLM(), run_dir=tmp_path, metrics=["sharpness"])
    with pytest.raises(TypeError, match="schedule"):
        dynmon.Monitor(TinyLM(), run_dir=tmp_path, schedule=object())


def test_bad_scalar_is_skipped_not_lost(tmp_path):
    mon = dynmon.Monitor(TinyLM(), run_dir=tmp_path, schedule=[])
    mon.step(0, loss=1.0)
    with pytest.warns(RuntimeWarning, match="'note' is a str"):
        mon.step(1, loss=0.5, note="hello")
    mon.close()
    rows = _lines(tmp_path / "metrics.jsonl")
    assert [r["loss"] for r in rows] == [1.0, 0.5]
    with pytest.raises(TypeError, match="note"):
        dynmon.Monitor(TinyLM(), run_dir=tmp_path / "b", schedule=[], strict=True).step(0, note="x")


def test_model_without_attention_keeps_weight_metrics(tmp_path):
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.warns(RuntimeWarning, match="per-head metrics"):
        mon = dynmon.Monitor(mlp, run_dir=tmp_path, schedule=[0], metrics="full")
    mon.step(0)
    mon.close()
    row = _lines(tmp_path / "metrics.jsonl")[0]
    assert "dynmon/erank/0.weight" in row and "dynmon/weight_norm" in row
    with pytest.raises(ValueError, match="register_adapter"):
        dynmon.Monitor(mlp, run_dir=tmp_path / "s", strict=True)


def test_resume_continues_histories(tmp_path):
    """A run stopped and resumed from state_dict logs what an uninterrupted run logs."""
    batches = _batches(16)
    sched = dynmon.every(4)

    torch.manual_seed(0)
    model = TinyLM()
    with dynmon.Monitor(model, run_dir=tmp_path / "a", schedule=sched, strict=True) as mon:
        _train(model, batches, mon)

    torch.manual_seed(0)
    model = TinyLM()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    mon = dynmon.Monitor(model, run_dir=tmp_path / "b", schedule=sched, strict=True)
    for tokens in batches[:10]:
        opt.zero_grad()
        loss = lm_loss(model, tokens)
        loss.backward()
        opt.step()
        mon.step(loss=loss)
    state = {
        "model": model.state_dict(),
        "opt": opt.state_dict(),
        "mon": mon.state_dict(),
        "rng": torch.get_rng_state(),
    }
    torch.save(state, tmp_path / "ckpt.pt")
    mon.close()

    state = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    model2 = TinyLM()
    model2.load_state_dict(state["model"])
    opt2 = torch.optim.AdamW(model2.parameters(), lr=3e-3)
    opt2.load_state_dict(state["opt"])
    torch.set_rng_state(state["rng"])
    mon2 = dynmon.Monitor(model2, run_dir=tmp_path / "b", schedule=sched, strict=True)
    mon2.load_state_dict(state["mon"])
    model2.train()
    for tokens in batches[10:]:
        opt2.zero_grad()
        loss = lm_loss(model2, tokens)
        loss.backward()
        opt2.step()
        mon2.step(loss=loss)  # step numbers continue from the state
    mon2.close()

    a = {r["step"]: r for r in _lines(tmp_path / "a" / "metrics.jsonl")}
    b = {r["step"]: r for r in _lines(tmp_path / "b" / "metrics.jsonl")}
    assert sorted(a) == sorted(b) == list(range(16))
    for key in ("dynmon/subspace_dist_ref/QK", "dynmon/subspace_dist/OV", "dynmon/erank/QK"):
        assert b[12][key] == pytest.approx(a[12][key], rel=1e-6), key


def _live_tensors() -> int:
    with warnings.catch_warnings():  # gc walks into deprecated torch.distributed aliases
        warnings.simplefilter("ignore")
        return sum(isinstance(o, torch.Tensor) for o in gc.get_objects())


def test_memory_stays_flat(tmp_path):
    model = TinyLM(d_model=16, n_layers=1)
    mon = dynmon.Monitor(model, run_dir=tmp_path, schedule=dynmon.every(10), metrics="full")
    x = torch.zeros(())

    def run(n, start):
        for s in range(start, start + n):
            mon.step(s, loss=x + 1.0 / (1 + s), acc=min(1.0, s / 2000))

    run(500, 0)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    tensors_before = _live_tensors()
    run(3000, 500)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    tensors_after = _live_tensors()
    mon.close()
    assert after - before < 512 * 1024, f"python memory grew by {after - before} bytes"
    assert tensors_after - tensors_before <= 5


def test_inactive_rank_writes_nothing(tmp_path):
    mon = dynmon.Monitor(TinyLM(), run_dir=tmp_path / "r1", rank=1)
    mon.step(0, loss=1.0)
    mon.close()
    assert not (tmp_path / "r1").exists()


def test_look_restores_thread_count(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        mon = dynmon.Monitor(TinyLM(), run_dir=tmp_path, schedule=[0], strict=True)
        mon.step(0)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_learning_curve_measures_match_batch_functions(tmp_path):
    from dynmon.metrics.timeseries import autocorr_curvature

    rng = np.random.default_rng(0)
    losses = 1.0 + 0.1 * rng.standard_normal(200)
    model = TinyLM(d_model=16, n_layers=1)
    with dynmon.Monitor(
        model,
        run_dir=tmp_path,
        schedule=dynmon.every(20),
        metrics=["norms"],
        options={"autocorr_window": 30},
    ) as mon:
        for s, x in enumerate(losses):
            with torch.no_grad():  # a weight norm that grows quadratically with the look index
                model.unembed.bias.fill_((s / 20) ** 2 / 10)
            mon.step(s, loss=float(x))
    run = dynmon.load_run(tmp_path)
    steps, acorr = run.series("dynmon/loss_autocorr_curv")
    expected = autocorr_curvature(losses, 30)
    assert list(steps) == list(range(40, 200, 20))
    np.testing.assert_allclose(acorr, expected[steps], rtol=1e-9)
    steps, curv = run.series("dynmon/norm_curvature")
    assert len(steps) >= 3 and steps[0] == 60  # the middle of the first 7 looks (0..120)
    assert np.all(np.isfinite(curv))
