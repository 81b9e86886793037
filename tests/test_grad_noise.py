"""Gradient noise scale and SNR from per-sample gradients, against an explicit per-sample loop."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from conftest import TinyLM, lm_loss
from side_effects import Untouched
from torch import nn

import dynmon
from dynmon.metrics.gradnoise import (
    GRAD_NOISE,
    GradMoments,
    grad_noise_metric,
    gradient_noise,
    per_sample_grad_moments,
)
from dynmon.metrics.spec import LookContext

F64 = torch.float64


def by_hand(model: nn.Module, loss_fn, batch: torch.Tensor) -> np.ndarray:
    """Per-sample gradients ``[n, P]``: a copy of the model, ``.backward()`` per sample."""
    m = copy.deepcopy(model).eval()
    rows = []
    for i in range(batch.shape[0]):
        m.zero_grad(set_to_none=False)
        loss_fn(m, batch[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in m.parameters()]).double().numpy())
    return np.stack(rows)


def noise_by_hand(g: np.ndarray) -> dict[str, float]:
    """The definitions in numpy: Σ with n − 1 (np.var ddof=1), G the mean gradient."""
    n = g.shape[0]
    G = g.mean(0)
    var = g.var(0, ddof=1)
    trace, g2 = var.sum(), G @ G
    mean_sq = (g**2).mean(0)
    varies = (var > 0) & (mean_sq > 1e-12 * mean_sq.mean())
    return {
        "b_simple": trace / g2,
        "b_simple_unbiased": trace / (g2 - trace / n),
        "trace_cov": trace,
        "grad_sq_norm": g2,
        "snr": np.mean(G[varies] ** 2 / var[varies]),
    }


@pytest.fixture
def lm64():
    torch.manual_seed(0)
    model = TinyLM(vocab=16, d_model=16, n_heads=2, n_layers=1, dropout=0.1).double()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 16, (12, 9), generator=g)
    return model, tokens


@pytest.mark.parametrize("method", ["vmap", "loop"])
def test_matches_per_sample_loop(lm64, method):
    model, tokens = lm64
    want = noise_by_hand(by_hand(model, lm_loss, tokens))
    m = per_sample_grad_moments(model, lm_loss, tokens, chunk_size=5, method=method)
    got = gradient_noise(m)
    for k, v in want.items():
        assert float(got[k]) == pytest.approx(v, rel=1e-9), k


def test_mean_gradient_is_the_batch_gradient(lm64):
    model, tokens = lm64
    m = per_sample_grad_moments(model, lm_loss, tokens)
    batch_grad = torch.autograd.grad(lm_loss(model.eval(), tokens), list(model.parameters()))
    flat = torch.cat([g.reshape(-1) for g in batch_grad])
    torch.testing.assert_close(m.sum / m.n, flat, rtol=1e-10, atol=1e-12)


def test_moments_of_explicit_matrix_and_errors():
    g = torch.tensor([[1.0, 2.0], [3.0, 2.0], [5.0, 2.0]], dtype=F64)
    out = gradient_noise(GradMoments.of(g))
    # G = (3, 2), var = (4, 0): tr Σ = 4, |G|² = 13, snr over the varying coordinate: 9/4
    assert float(out["trace_cov"]) == 4 and float(out["grad_sq_norm"]) == 13
    assert float(out["b_simple"]) == pytest.approx(4 / 13)
    assert float(out["b_simple_unbiased"]) == pytest.approx(4 / (13 - 4 / 3))
    assert float(out["snr"]) == pytest.approx(9 / 4)
    pure_noise = gradient_noise(GradMoments.of(torch.tensor([[1.0], [-1.0]], dtype=F64)))
    assert math.isnan(float(pure_noise["b_simple"]))  # |G|² = 0
    assert math.isnan(float(pure_noise["b_simple_unbiased"]))
    with pytest.raises(ValueError, match="at least 2"):
        gradient_noise(GradMoments.of(g[:1]))


class ItemModel(nn.Module):
    """A forward pass with a host read (``.item()``), which vmap cannot batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, x):
        scale = 1.0 + 0.0 * x.abs().max().item()
        return self.lin(x) * scale


def mse(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean()


def test_falls_back_to_loop_when_vmap_cannot_batch():
    torch.manual_seed(0)
    model = ItemModel().double()
    batch = (torch.randn(6, 3, dtype=F64), torch.randn(6, 2, dtype=F64))
    with pytest.warns(RuntimeWarning, match="vmap failed"):
        auto = per_sample_grad_moments(model, mse, batch)
    loop = per_sample_grad_moments(model, mse, batch, method="loop")
    torch.testing.assert_close(auto.sum, loop.sum)
    torch.testing.assert_close(auto.sum_sq, loop.sum_sq)
    with pytest.raises(ValueError, match="share dim 0"):
        per_sample_grad_moments(model, mse, (batch[0], batch[1][:3]))
    with pytest.raises(ValueError, match="at least 2"):
        per_sample_grad_moments(model, mse, (batch[0][:1], batch[1][:1]))


@pytest.mark.parametrize("dropout", [False, True])
def test_leaves_model_grads_rng_and_mode_alone(dropout):
    torch.manual_seed(0)
    model = TinyLM(vocab=16, d_model=16, n_heads=2, n_layers=1)
    tokens = torch.randint(0, 16, (8, 9))
    lm_loss(model, tokens).backward()
    model.unembed.bias.grad = None
    model.train()
    model.layers[0].eval()  # mixed modes
    before = Untouched(model)
    ctx = LookContext(step=0, model=model, loss_fn=lm_loss, probe_batch=tokens)
    ctx.options = {"dropout": dropout, "grad_noise_chunk": 3}
    out = grad_noise_metric(ctx)
    before.check()
    names = ("b_simple", "b_simple_unbiased", "trace_cov", "grad_sq_norm", "snr")
    assert set(out.scalars) == {f"dynmon/grad_noise/{k}" for k in names}
    assert all(np.isfinite(float(v)) for v in out.scalars.values())


def test_monitor_runs_grad_noise_and_training_stays_bitwise(tmp_path):
    from side_effects import train_tiny_lm

    run = tmp_path / "run"
    plain = train_tiny_lm(run)
    watched = train_tiny_lm(run, {"schedule": dynmon.every(2), "metrics": ["grad_noise"]})
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    rows = dynmon.load_run(tmp_path / "run").metrics
    assert GRAD_NOISE.name == "grad_noise"
    assert any(np.isfinite(r.get("dynmon/grad_noise/b_simple", np.nan)) for r in rows)


def _tl_model_and_loss():
    from conftest import tiny_tl

    def loss(m, batch):
        logits = m(batch)  # [B, T, V]
        return nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1)
        )

    return tiny_tl(d_vocab=12), loss


def _hf_model_and_loss():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(
        n_embd=16, n_layer=2, n_head=2, vocab_size=12, n_positions=8, attn_implementation="eager"
    )
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).eval(), lambda m, b: m(b, labels=b).loss


@pytest.mark.parametrize("build", [_tl_model_and_loss, _hf_model_and_loss], ids=["tl", "hf"])
def test_vmap_runs_on_adapter_models(build):
    """TransformerLens bridges and HF GPT-2 batch under vmap (no fallback) and agree with the
    per-sample loop."""
    model, loss = build()
    x = torch.randint(0, 12, (5, 8), generator=torch.Generator().manual_seed(0))
    before = Untouched(model)
    fast = per_sample_grad_moments(model, loss, x, method="vmap", chunk_size=2)
    slow = per_sample_grad_moments(model, loss, x, method="loop")
    torch.testing.assert_close(fast.sum, slow.sum, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fast.sum_sq, slow.sum_sq, rtol=1e-4, atol=1e-8)
    before.check()
