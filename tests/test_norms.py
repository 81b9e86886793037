"""Norms against direct numpy computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dynmon.metrics import norms

F64 = torch.float64


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def test_frobenius_norm_batched(gen):
    M = torch.randn(2, 3, 5, 4, generator=gen, dtype=F64)
    ref = np.sqrt((M.numpy() ** 2).sum(axis=(-2, -1)))
    np.testing.assert_allclose(norms.frobenius_norm(M).numpy(), ref, rtol=1e-13)
    v = torch.tensor([3.0, 4.0])
    assert norms.frobenius_norm(v).item() == 5.0  # a vector is one vector
    assert norms.frobenius_norm(torch.tensor(-2.0)).item() == 2.0


def test_frobenius_half_upcast(gen):
    M = torch.full((300, 300), 100.0, dtype=torch.float16)  # Σ entries² overflows fp16
    out = norms.frobenius_norm(M)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(30000.0)


def test_spectral_norm(gen):
    M = torch.randn(4, 7, 5, generator=gen, dtype=F64)
    ref = [np.linalg.norm(m, ord=2) for m in M.numpy()]
    np.testing.assert_allclose(norms.spectral_norm(M).numpy(), ref, rtol=1e-12)
    assert norms.spectral_norm(torch.zeros(3, 2)).item() == 0.0
    M[1, 0, 0] = float("nan")
    with pytest.warns(RuntimeWarning):
        out = norms.spectral_norm(M)
    assert out[1].isnan() and out[[0, 2, 3]].isfinite().all()


def test_global_norm(gen):
    ts = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen), torch.randn(())]
    ref = np.sqrt(sum((t.double().numpy() ** 2).sum() for t in ts))
    out = norms.global_norm(ts)
    assert out.shape == () and out.dtype == torch.float32
    assert out.item() == pytest.approx(ref, rel=1e-6)
    assert norms.global_norm(iter([*ts, None])).item() == pytest.approx(ref, rel=1e-6)
    assert norms.global_norm([]).item() == 0.0
    assert norms.global_norm([torch.ones(2, dtype=F64), torch.ones(2)]).dtype == F64


def test_global_norm_of_parameters_no_graph():
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    out = norms.global_norm(model.parameters())
    assert not out.requires_grad
    ref = torch.cat([p.detach().flatten() for p in model.parameters()]).norm()
    assert out.item() == pytest.approx(ref.item(), rel=1e-6)


def test_global_norm_nonfinite_propagates():
    assert norms.global_norm([torch.ones(3), torch.tensor([float("nan")])]).isnan()
    assert norms.global_norm([torch.ones(3), torch.tensor([float("inf")])]).isinf()


def test_update_ratio(gen):
    old = torch.randn(3, 6, 5, generator=gen, dtype=F64)
    new = old + 0.01 * torch.randn(3, 6, 5, generator=gen, dtype=F64)
    pairs = zip(new.numpy(), old.numpy(), strict=True)
    ref = [np.linalg.norm(n - o) / np.linalg.norm(o) for n, o in pairs]
    np.testing.assert_allclose(norms.update_ratio(new, old).numpy(), ref, rtol=1e-12)
    b_old, b_new = torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5])
    assert norms.update_ratio(b_new, b_old).item() == pytest.approx(0.1)  # 1-D: one vector
    zero = norms.update_ratio(torch.ones(2, 2), torch.zeros(2, 2))
    assert zero.isnan()
    same = norms.update_ratio(old, old)
    assert (same == 0).all()


def test_update_ratio_half_difference_exact():
    old = torch.tensor([[1.0, 2.0]], dtype=torch.float16)
    new = torch.tensor([[1.0009765625, 2.0]], dtype=torch.float16)  # one fp16 ulp at 1
    out = norms.update_ratio(new, old)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(2**-10 / np.sqrt(5), rel=1e-6)


@pytest.mark.parametrize("shape", [(2048, 2048), (3, 512, 1024), (1 << 19,)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_large_tensor_norms_match_float64(shape, dtype):
    """Millions of squares in one float32 reduction drift by 1e-4..1e-3 relative (torch's
    vector_norm); the norms sum rows in float32 and combine them in float64 instead."""
    x = (torch.randn(shape, generator=torch.Generator().manual_seed(0)) + 0.5).to(dtype)
    want = torch.linalg.vector_norm(x.double(), dim=(-2, -1) if x.dim() >= 2 else None)
    got = norms.frobenius_norm(x)
    assert got.dtype == torch.float32
    assert torch.allclose(got.double(), want, rtol=2e-6, atol=0)
    total = norms.global_norm([x, torch.ones(3)])
    want_total = (want.square().sum() + 3).sqrt()
    assert float(total) == pytest.approx(float(want_total), rel=2e-6)


def test_global_norm_reuses_known_norms_of_large_matrices_only():
    big, small = torch.randn(512, 512), torch.randn(8, 8)
    known = {norms.tensor_key(big): torch.tensor(3.0), norms.tensor_key(small): torch.tensor(4.0)}
    got = norms.global_norm([big, small], known)  # big's norm taken from known, small's computed
    want = (9.0 + float(torch.linalg.vector_norm(small.double())) ** 2) ** 0.5
    assert float(got) == pytest.approx(want, rel=1e-6)
    fresh = norms.global_norm([big.detach(), small], {})
    both = torch.cat([big.flatten(), small.flatten()]).double()
    assert float(fresh) == pytest.approx(float(both.norm()), rel=1e-6)
    assert norms.global_norm([big], {norms.tensor_key(big): norms.frobenius_norm(big)}) == (
        norms.global_norm([big])
    )  # the reused norm is the one global_norm would compute
