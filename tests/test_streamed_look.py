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
from dynmon.metrics import spectral, subspace
from dynmon.metrics.gram import gram_eigvals_svdvals
from dynmon.metrics.inputs import drift_from_blocks, head_pass, layer_pass


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


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (64, 64)])
def test_gram_weight_spectra_rank_measures_match_svdvals(shape):
    """erank and stable rank from the small Gram side equal svdvals' within 1e-4 relative."""
    torch.manual_seed(2)
    W = torch.randn(*shape) @ torch.diag(torch.logspace(0, -2, shape[1]))
    s_ref = torch.linalg.svdvals(W.double())
    s = gram_eigvals_svdvals(W)
    for fn in (spectral.erank, spectral.stable_rank):
        assert float(fn(s)) == pytest.approx(float(fn(s_ref)), rel=1e-4)
