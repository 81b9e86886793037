"""The layer-streamed look: Gram-path spectra and carried-forward drift against dense float64.

Independent references: ``torch.linalg.svdvals`` of the formed product in float64, and the
subspace distance of float64 QR bases (``subspace.subspace_distance``, itself checked against
``scipy.linalg.subspace_angles`` in test_subspace.py).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import dynmon
from dynmon.adapters.layout import head_weights
from dynmon.metrics import inputs, spectral, subspace
from dynmon.metrics.gram import gram_eigvals_svdvals
from dynmon.metrics.inputs import drift_from_blocks, head_pass, layer_pass
from dynmon.threads import intra_op_threads


def _factor(H: int, D: int, dh: int, kappa: float, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """``[H, D, dh]`` with singular values log-spaced from 1 to 1/kappa."""
    g = torch.Generator().manual_seed(seed)
    Q1 = torch.linalg.qr(torch.randn(H, D, dh, dtype=torch.float64, generator=g)).Q
    Q2 = torch.linalg.qr(torch.randn(H, dh, dh, dtype=torch.float64, generator=g)).Q
    s = torch.logspace(0, -math.log10(kappa), dh, dtype=torch.float64)
    return ((Q1 * s) @ Q2.mT).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kappa", [1.0, 10.0, 30.0, 1e3, 1e5, 1e8])
def test_circuit_spectra_match_dense_float64(dtype, kappa):
    """Every singular value above 1e-3·σ₁ within 1e-4 relative, Gram path or QR fallback."""
    A = _factor(6, 96, 16, kappa, dtype, 0)
    B = _factor(6, 96, 16, 4.0, dtype, 1)
    dense = torch.linalg.svdvals(A.double() @ B.double().mT)[..., :16]  # [H, 16]
    for s in (
        layer_pass(head_weights(A, B, B, A.mT)).spectra["QK"],
        spectral.circuit_svdvals(A, B),
    ):
        keep = dense > 1e-3 * dense[..., :1]
        rel = ((s.double() - dense).abs() / dense)[keep]
        assert rel.max() < 1e-4, (kappa, dtype, rel.max())


def test_circuit_svdvals_keep_dtype_and_nan_masking():
    A, B = torch.randn(3, 20, 4), torch.randn(3, 20, 4)
    A[1, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning, match="1 of 3"):
        s = spectral.circuit_svdvals(A, B)
    assert s.dtype == torch.float32 and s[1].isnan().all() and s[[0, 2]].isfinite().all()


def _explicit(A: torch.Tensor, B: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    U, _, V = spectral.circuit_svd(A.double(), B.double())
    return U, V


def _reference_distance(old, new, k: int) -> torch.Tensor:
    (U0, V0), (U1, V1) = _explicit(*old), _explicit(*new)
    return 0.5 * (
        subspace.subspace_distance(U1[..., :k], U0[..., :k])
        + subspace.subspace_distance(V1[..., :k], V0[..., :k])
    )


@pytest.mark.parametrize("kappa", [2.0, 1e4])  # Gram path, and the QR fallback
@pytest.mark.parametrize("scale", [1e-5, 1e-3, 1e-1, 1.0])
def test_carried_drift_matches_explicit_bases(kappa, scale):
    """Previous- and reference-look distances, from Δ alone, equal explicit float64 bases."""
    H, D, dh = 4, 80, 8
    g = torch.Generator().manual_seed(3)
    Q0, K0 = _factor(H, D, dh, kappa, torch.float32, 5), _factor(H, D, dh, 3.0, torch.float32, 6)
    V0, O0 = _factor(H, D, dh, 2.0, torch.float32, 7), _factor(H, D, dh, kappa, torch.float32, 8)
    traj = [(Q0, K0, V0, O0)]
    for _ in range(3):
        traj.append(tuple(t + scale * torch.randn(t.shape, generator=g) / D**0.5 for t in traj[-1]))
    states, ref = None, None
    for t, (Q, K, V, O) in enumerate(traj):
        res = layer_pass(
            head_weights(Q, K, V, O.mT), track=True, prev=states, ref=ref, is_reference=t == 0
        )
        if t == 0:
            ref = res.state
        else:
            for circuit, (a, b) in (("QK", (0, 1)), ("OV", (2, 3))):
                for which, old in (("prev", traj[t - 1]), ("ref", traj[0])):
                    b_U, b_V = res.blocks[circuit][which]
                    got = drift_from_blocks(b_U[None], b_V[None], dh, [dh])[0]
                    want = _reference_distance((old[a], old[b]), (traj[t][a], traj[t][b]), dh)
                    tol = 2e-3 * want + 2e-6
                    assert ((got.double() - want).abs() <= tol).all(), (which, got, want)
        states = res.state


def _drift_chain(layers: list, threads: int = 1) -> list:
    """Spectra and drift block sums of ``layer_pass`` over a trajectory of one layer's heads."""
    out, prev, ref = [], None, None
    with intra_op_threads(threads):
        for t, hw in enumerate(layers):
            res = layer_pass(hw, track=True, prev=prev, ref=ref, is_reference=t == 0)
            ref = res.state if t == 0 else ref
            prev = res.state
            out.append((res.spectra, res.blocks))
    return out


@pytest.mark.parametrize("column_major", [False, True])  # TransformerLens's / nn.Linear's layout
def test_half_precision_and_threaded_looks_equal_the_plain_float32_look(column_major, monkeypatch):
    """bfloat16 factors take the side-by-side products (converted copies, one matmul for
    A₀ᵀΔ, ΔᵀΔ, A_refᵀΔ) and two threads the parallel circuits; both give the values of the
    separate float32 products on the same numbers (bitwise with MKL)."""
    H, D, dh = 6, 96, 16
    g = torch.Generator().manual_seed(11)

    def factor() -> torch.Tensor:
        if column_major:  # [H, dh, D] storage seen as [H, D, dh]
            return torch.randn(H, dh, D, generator=g).mT
        return torch.randn(H, D, dh, generator=g)

    Q, K, V, O = factor(), factor(), factor(), factor()
    traj = []
    for _ in range(4):
        Q, K, V, O = (t + 0.05 * torch.randn(t.shape, generator=g) for t in (Q, K, V, O))
        traj.append(tuple(t.to(torch.bfloat16) for t in (Q, K, V, O)))
    half = [head_weights(q, k, v, o.mT) for q, k, v, o in traj]
    plain = [head_weights(*(t.float() for t in (q, k, v)), o.float().mT) for q, k, v, o in traj]
    want = _drift_chain(plain)
    monkeypatch.setattr(inputs, "PARALLEL_CIRCUITS_WORK", 0)  # parallel even at this size
    for got in (_drift_chain(half), _drift_chain(plain, threads=2)):
        assert len(got[-1][1]["QK"]) == 2  # previous and reference drift
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_look_threads_end_with_the_look_and_pass_errors_on(monkeypatch):
    """Side-by-side circuits leave no worker thread behind, restore the thread count, and an
    error in a worker reaches the caller (the Monitor's fault isolation sees it)."""
    import threading

    monkeypatch.setattr(inputs, "PARALLEL_CIRCUITS_WORK", 0)
    hw = [head_weights(*(torch.randn(3, 24, 4) for _ in range(3)), torch.randn(3, 4, 24))]

    def looks() -> list:
        return [t for t in threading.enumerate() if t.name.startswith("dynmon-look")]

    with intra_op_threads(2):
        res = head_pass(hw, track=True)
        assert torch.get_num_threads() == 2 and not looks()
        assert res.spectra["QK"].isfinite().all()

        def broken(*args, **kwargs):
            raise RuntimeError("circuit failed")

        monkeypatch.setattr(inputs, "_circuit_pass", broken)
        with pytest.raises(RuntimeError, match="circuit failed"):
            head_pass(hw, track=True)
        assert torch.get_num_threads() == 2 and not looks()


def _mixed_model() -> nn.Module:
    """Two nn.MultiheadAttention layers with different head counts and widths."""
    torch.manual_seed(0)
    return nn.ModuleList(
        [nn.MultiheadAttention(32, 4, batch_first=True), nn.MultiheadAttention(48, 3)]
    )


def test_streamed_look_equals_per_layer_stacked_values_with_ragged_layers(tmp_path):
    """A model whose layers differ in head count and width gets every per-head value, equal to
    computing each layer alone with the stacked (QR) functions."""
    model = _mixed_model()
    mon = dynmon.Monitor(model, run_dir=tmp_path, schedule=lambda s: True, strict=True)
    mon.step(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    mon.step(1)
    mon.close()
    run = dynmon.load_run(tmp_path)
    heads = dynmon.heads(model)
    assert [h.n_heads for h in heads] == [4, 3]
    for layer, hw in enumerate(heads):
        for circuit, (A, B) in (("QK", (hw.W_Q, hw.W_K)), ("OV", (hw.W_V, hw.W_O.mT))):
            er = spectral.erank(spectral.circuit_svdvals(A, B))
            for h in range(hw.n_heads):
                steps, values = run.series(f"dynmon/erank/L{layer}.H{h}.{circuit}")
                assert list(steps) == [0, 1]
                assert values[1] == pytest.approx(float(er[h]), rel=1e-5)
            assert f"dynmon/erank/L{layer}.H{hw.n_heads}.{circuit}" not in run.keys()
            steps, d = run.series(f"dynmon/subspace_dist/L{layer}.H{hw.n_heads - 1}.{circuit}")
            assert list(steps) == [1] and 0 < d[0] < 0.5


def test_gqa_factors_are_not_duplicated():
    """Grouped K/V heads enter once: the streamed spectra equal the expanded computation."""
    H, H_kv, D, dh = 8, 2, 64, 8
    torch.manual_seed(1)
    Q, K, V, O = (torch.randn(n, D, dh) for n in (H, H_kv, H_kv, H))
    from dataclasses import replace

    hw = replace(
        head_weights(Q, K.repeat_interleave(4, 0), V.repeat_interleave(4, 0), O.mT),
        n_kv_heads=H_kv,
    )
    got = layer_pass(hw).spectra
    want = spectral.circuit_svdvals(Q, K.repeat_interleave(4, 0))
    torch.testing.assert_close(got["QK"], want, rtol=1e-5, atol=0)


def test_head_pass_pads_missing_heads_with_nan():
    hw = [
        head_weights(*(torch.randn(h, 16, 4) for _ in range(3)), torch.randn(h, 4, 16))
        for h in (2, 3)
    ]
    res = head_pass(hw)
    assert res.n_heads == [2, 3] and res.spectra["QK"].shape == (2, 3, 4)
    assert res.spectra["QK"][0, 2].isnan().all() and res.spectra["QK"][1].isfinite().all()


@pytest.mark.parametrize(
    "shape,rank", [((300, 40), 40), ((40, 300), 40), ((64, 64), 64), ((3000, 200), 60)]
)
def test_gram_weight_spectra_rank_measures_match_svdvals(shape, rank):
    """erank and stable rank from the small Gram side equal svdvals' within 1e-4 relative,
    also for a rank-deficient tall matrix (whose zero singular values the Gram rounds up)."""
    torch.manual_seed(2)
    W = torch.randn(shape[0], rank) @ torch.randn(rank, shape[1]) / rank
    W = W @ torch.diag(torch.logspace(0, -1.5, shape[1]))
    s_ref = torch.linalg.svdvals(W.double())
    s = gram_eigvals_svdvals(W)
    for fn in (spectral.erank, spectral.stable_rank):
        assert float(fn(s)) == pytest.approx(float(fn(s_ref)), rel=1e-4)


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.TransformerEncoderLayer(32, 4, 64, batch_first=True),
        nn.TransformerEncoderLayer(32, 4, 64, batch_first=True),
    )


def test_no_host_transfer_between_looks(monkeypatch, tmp_path):
    """Tensor losses wait on their device; a look (or a flush) makes exactly one transfer."""
    from dynmon import monitor as monitor_mod

    calls: list[int] = []
    real = monitor_mod._to_host
    monkeypatch.setattr(monitor_mod, "_to_host", lambda t: calls.append(t.numel()) or real(t))
    mon = dynmon.Monitor(
        _small_model(), run_dir=tmp_path, schedule=dynmon.every(10), options={"flush_every": 7}
    )
    per_step = []
    for step in range(26):
        before = len(calls)
        mon.step(step, loss=torch.tensor(1.0 / (step + 1)), acc=torch.tensor(step / 30))
        per_step.append(len(calls) - before)
    mon.close()
    # looks at 0, 10, 20; flushes when 7 rows wait: after 1..7 (step 7), 11..17 (step 17)
    assert [s for s, n in enumerate(per_step) if n] == [0, 7, 10, 17, 20]
    assert max(per_step) == 1
    run = dynmon.load_run(tmp_path)
    steps, loss = run.series("loss")
    assert list(steps) == list(range(26))
    np_loss = torch.tensor(loss)
    torch.testing.assert_close(np_loss, 1.0 / torch.arange(1, 27, dtype=torch.float64))


def test_float_scalars_are_written_at_once(tmp_path):
    """Rows of plain Python numbers need no transfer, so they are written on the same call."""
    mon = dynmon.Monitor(_small_model(), run_dir=tmp_path, schedule=dynmon.every(100))
    for step in range(5):
        mon.step(step, loss=float(step))
    assert list(dynmon.load_run(tmp_path).series("loss")[0]) == [0, 1, 2, 3, 4]
    mon.close()


def test_huge_python_loss_is_logged_as_infinite(tmp_path):
    mon = dynmon.Monitor(_small_model(), run_dir=tmp_path, schedule=dynmon.every(100))
    with pytest.warns(RuntimeWarning, match="overflows a float"):
        mon.step(0, loss=10**400)
    mon.step(1, loss=-(10**400))
    mon.close()
    assert list(dynmon.load_run(tmp_path).series("loss")[1]) == [math.inf, -math.inf]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_steps_between_looks_never_sync(tmp_path):
    model = _small_model().cuda()
    mon = dynmon.Monitor(model, run_dir=tmp_path, schedule=dynmon.every(50))
    mon.step(0, loss=torch.tensor(1.0, device="cuda"))
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 20):
            mon.step(step, loss=torch.tensor(1.0 / step, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    mon.close()
    assert len(dynmon.load_run(tmp_path).series("loss")[0]) == 20


def _state_bytes(obj) -> int:
    """Bytes of every tensor reachable through dicts, lists and tuples."""
    if isinstance(obj, torch.Tensor):
        return obj.nbytes
    if isinstance(obj, dict):
        return sum(_state_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_state_bytes(v) for v in obj)
    return 0


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_memory_is_flat_over_looks(tmp_path):
    """The drift state is a copy of the factors per kept look (previous and reference), in the
    weights' dtype, and neither it nor the process grows from look to look."""
    model = _small_model()
    heads = dynmon.heads(model)
    attn_bytes = sum(
        t.nbytes for h in heads for t in (h.W_Q, h.W_K, h.W_V, h.W_O)
    )  # the attention weights
    mon = dynmon.Monitor(model, run_dir=tmp_path, schedule=lambda s: True, sinks=[])
    sizes, rss = [], []
    for step in range(14):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(1.001)
        mon.step(step, loss=torch.tensor(1.0))
        state = mon.state_dict()
        sizes.append(_state_bytes(state["snapshots"]) + _state_bytes(state["references"]))
        rss.append(_rss())
    prev, ref = state["snapshots"]["subspace_dist"], state["references"]["subspace_dist"]
    mon.close()
    assert len(set(sizes[2:])) == 1  # flat after the second look
    copies = sum(_state_bytes(layer["F"]) for layer in prev + ref)
    assert copies == 2 * attn_bytes  # the previous and the reference look's factors, once each
    dh = heads[0].d_head
    small = 2 * len(heads) * heads[0].n_heads * (12 * dh * dh * 8 + 6)  # G, C, X + flags
    assert sizes[-1] - copies <= small
    assert rss[-1] - rss[3] < 0.05 * rss[3]


def test_previous_copy_is_rewritten_in_place_and_reference_kept(tmp_path):
    """From the third look on, the previous look's factor copies are overwritten in place (no
    large allocation per look), while the reference copies keep the reference weights."""
    model = _small_model()
    mon = dynmon.Monitor(model, sinks=[], schedule=lambda s: True, strict=True)
    at_reference: list[dict[str, torch.Tensor]] = []
    ptrs = []
    for step in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        mon.step(step, loss=torch.tensor(1.0))
        state = mon.state_dict()
        if step == 0:
            at_reference = [
                {f: F.clone() for f, F in layer["F"].items()}
                for layer in state["references"]["subspace_dist"]
            ]
        prev = state["snapshots"]["subspace_dist"]
        ptrs.append([F.data_ptr() for layer in prev for F in layer["F"].values()])
    ref = state["references"]["subspace_dist"]
    for layer, saved in zip(ref, at_reference, strict=True):
        assert all(torch.equal(layer["F"][f], F) for f, F in saved.items())
    assert ptrs[2] == ptrs[3] == ptrs[4] != ptrs[0]  # reused storage after the second look
    assert torch.equal(
        prev[0]["F"]["Q"], dynmon.heads(model)[0].W_Q
    )  # and it holds the latest weights
    mon.close()


def test_snapshot_device_and_dtype(tmp_path):
    model = _small_model().to(torch.bfloat16)
    mon = dynmon.Monitor(
        model, sinks=[], schedule=lambda s: True, strict=True, options={"snapshot_device": "meta"}
    )
    mon.step(0)
    with pytest.raises(dynmon.monitor.MetricError):  # meta copies cannot be read back: the
        mon.step(1)  # option decides where the snapshot lives
    mon = dynmon.Monitor(
        model, sinks=[], schedule=lambda s: True, options={"snapshot_device": "cpu"}
    )
    mon.step(0)
    state = mon.state_dict()["snapshots"]["subspace_dist"]
    assert all(F.dtype == torch.bfloat16 for layer in state for F in layer["F"].values())
    mon.close()


def test_nonfinite_heads_are_nan_and_recover(tmp_path):
    """A NaN weight makes that head's values NaN (one warning), the others stay, and the
    drift restarts cleanly once the weights are finite again."""
    model = _small_model()
    mon = dynmon.Monitor(model, run_dir=tmp_path, schedule=lambda s: True, strict=True)
    mon.step(0)
    attn = model[0].self_attn
    keep = attn.in_proj_weight.detach().clone()
    with torch.no_grad():
        attn.in_proj_weight[0, 0] = float("nan")  # head 0's W_Q in layer 0
    with pytest.warns(RuntimeWarning, match="NaN/Inf"):
        mon.step(1)
    with torch.no_grad():
        attn.in_proj_weight.copy_(keep)
    mon.step(2)
    mon.step(3)
    mon.close()
    run = dynmon.load_run(tmp_path)
    assert math.isnan(run.series("dynmon/erank/L0.H0.QK")[1][1])
    assert not math.isnan(run.series("dynmon/erank/L0.H1.QK")[1][1])
    assert not math.isnan(run.series("dynmon/erank/L0.H0.QK")[1][2])
    steps, d = run.series("dynmon/subspace_dist/L0.H0.QK")
    assert steps[-1] == 3 and d[-1] == pytest.approx(0.0, abs=1e-6)
