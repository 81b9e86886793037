"""Local learning coefficient by SGLD: a quadratic's d/2, convergence warnings, no side effects."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from conftest import TinyLM, lm_loss
from side_effects import Untouched
from torch import nn

import dynmon
from dynmon.linalg import ConvergenceWarning
from dynmon.metrics.llc import LLC, SGLDConfig, estimate_llc, llc_metric
from dynmon.metrics.spec import LookContext

F64 = torch.float64


class Quadratic(nn.Module):
    """``L(w) = ½ Σ h_i (w_i − c_i)²`` with its minimum at ``c`` (a regular minimum: λ = d/2)."""

    def __init__(self, h: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("h", h)
        self.register_buffer("c", torch.linspace(-1, 1, h.numel(), dtype=h.dtype))
        self.w = nn.Parameter(self.c.clone())

    def forward(self, _batch) -> torch.Tensor:
        return 0.5 * (self.h * (self.w - self.c) ** 2).sum()


def quad_loss(model, batch):
    return model(batch)


def exact_discrete(h: np.ndarray, nbeta: float, gamma: float, lr: float) -> float:
    """nβ E[L] under the stationary law of the discretised chain, per coordinate an AR(1):
    w ← (1 − εa/2) w + √ε ξ with a = nβh + γ, of variance 1 / (a (1 − εa/4))."""
    a = nbeta * h + gamma
    return float(np.sum(nbeta * h / (2 * a * (1 - lr * a / 4))))


def test_quadratic_regular_minimum_gives_half_the_dimension():
    d = 10
    h = torch.linspace(1, 3, d, dtype=F64)
    model = Quadratic(h)
    cfg = SGLDConfig(
        lr=3e-5, nbeta=1000.0, localization=1.0, num_chains=4, num_draws=2000, num_burnin=300
    )
    res = estimate_llc(model, quad_loss, torch.zeros(2), config=cfg)
    assert res.init_loss == 0.0 and res.nbeta == 1000.0
    assert res.llc == pytest.approx(d / 2, rel=0.1)
    want = exact_discrete(h.numpy(), 1000.0, 1.0, 3e-5)
    assert abs(res.llc - want) < 4 * res.stderr + 0.02 * want
    assert res.converged and res.losses.shape == (4, 2000)


def test_vmap_and_loop_chains_agree():
    torch.manual_seed(0)
    model = TinyLM(vocab=16, d_model=16, n_heads=2, n_layers=1).double()
    tokens = torch.randint(0, 16, (6, 9), generator=torch.Generator().manual_seed(3))
    cfg = SGLDConfig(lr=1e-4, localization=100.0, num_chains=3, num_draws=6)
    runs = [
        estimate_llc(
            model, lm_loss, tokens, config=cfg, vmap=v, generator=torch.Generator().manual_seed(1)
        )
        for v in (True, False)
    ]
    torch.testing.assert_close(runs[0].losses, runs[1].losses, rtol=1e-9, atol=1e-12)
    assert runs[0].nbeta == pytest.approx(6 / math.log(6))


def test_drifting_chain_warns():
    model = Quadratic(torch.linspace(1, 3, 10, dtype=F64))
    slow = SGLDConfig(lr=1e-6, nbeta=1000.0, localization=1.0, num_chains=4, num_draws=200)
    with pytest.warns(ConvergenceWarning, match="not converged"):
        res = estimate_llc(model, quad_loss, torch.zeros(2), config=slow)
    assert not res.converged and res.drift > 0


def test_bad_settings_and_divergence_raise_clearly():
    model = Quadratic(torch.linspace(1, 3, 4, dtype=F64))
    with pytest.raises(ValueError, match="lr > 0"):
        estimate_llc(model, quad_loss, torch.zeros(2), config=SGLDConfig(lr=0))
    with pytest.raises(ValueError, match="exactly one"):
        estimate_llc(model, quad_loss)
    with pytest.raises(FloatingPointError, match="non-finite"):
        huge = SGLDConfig(lr=10.0, nbeta=1e6, num_chains=2, num_draws=50)
        estimate_llc(model, quad_loss, torch.zeros(2), config=huge)
    with pytest.raises(ValueError, match="probe batch"):
        llc_metric(LookContext(step=0, model=model, loss_fn=quad_loss))


def test_loader_cycles_and_sets_init_loss_from_its_batches():
    torch.manual_seed(0)
    model = TinyLM(vocab=16, d_model=16, n_heads=2, n_layers=1).double()
    g = torch.Generator().manual_seed(4)
    loader = [torch.randint(0, 16, (4, 9), generator=g) for _ in range(3)]
    cfg = SGLDConfig(num_chains=2, num_draws=7)  # 7 steps over 3 batches: cycles twice
    res = estimate_llc(model, lm_loss, loader=loader, config=cfg, init_batches=2)
    with torch.no_grad():
        init = (lm_loss(model.eval(), loader[0]) + lm_loss(model, loader[1])) / 2
    assert res.init_loss == pytest.approx(float(init), rel=1e-12)
    assert res.nbeta == pytest.approx(4 / math.log(4))


@pytest.mark.parametrize("dropout", [False, True])
def test_leaves_model_grads_rng_and_mode_alone(dropout):
    torch.manual_seed(0)
    model = TinyLM(vocab=16, d_model=16, n_heads=2, n_layers=1)
    tokens = torch.randint(0, 16, (8, 9))
    lm_loss(model, tokens).backward()
    model.unembed.bias.grad = None
    model.train()
    model.layers[0].eval()
    before = Untouched(model)
    ctx = LookContext(step=0, model=model, loss_fn=lm_loss, probe_batch=tokens)
    ctx.generator = torch.Generator().manual_seed(0)
    ctx.options = {"dropout": dropout, "llc_chains": 2, "llc_draws": 4}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # 4 draws: whatever the drift
        out = llc_metric(ctx)
    before.check()
    assert set(out.scalars) == {
        "dynmon/llc",
        "dynmon/llc/stderr",
        "dynmon/llc/drift",
        "dynmon/llc/init_loss",
    }
    assert all(math.isfinite(float(v)) for v in out.scalars.values())


def test_monitor_runs_llc_and_training_stays_bitwise(tmp_path):
    from side_effects import train_tiny_lm

    run = tmp_path / "run"
    plain = train_tiny_lm(run)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        watched = train_tiny_lm(
            run,
            {
                "metrics": {"llc": dynmon.every(2)},
                "options": {"llc_chains": 2, "llc_draws": 4},
            },
        )
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    rows = dynmon.load_run(tmp_path / "run").metrics
    assert LLC.name == "llc"
    assert sum("dynmon/llc" in r for r in rows) == 2
