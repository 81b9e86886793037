"""Hessian of a model's loss: operator against dense Hessians, diagnostics, no side effects,
monitor metrics (sharpness, per-block sharpness, edge of stability, trace)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import TinyLM, lm_loss, tiny_tl
from side_effects import Untouched, noisy_loss, trained_noisy
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

import dynmon
from dynmon import hessian
from dynmon.hessian import (
    HessianOperator,
    hessian_density,
    hessian_eigenvalues,
    hessian_trace,
    select_params,
)
from dynmon.linalg import lanczos_eigenvalues
from dynmon.metrics.curvature import (
    HESSIAN_TRACE,
    SHARPNESS,
    hessian_trace_metric,
    sharpness_metric,
)
from dynmon.metrics.spec import LookContext

F64 = torch.float64


class Quadratic(nn.Module):
    """``loss = ½ θᵀAθ + bᵀθ`` with ``θ = [a; b]`` split over two parameters: Hessian ``A``."""

    def __init__(self, A: torch.Tensor, split: int) -> None:
        super().__init__()
        n = A.shape[0]
        g = torch.Generator().manual_seed(0)
        self.register_buffer("A", A)
        self.register_buffer("b", torch.randn(n, generator=g, dtype=F64))
        self.first = nn.Parameter(torch.randn(split, generator=g, dtype=F64))
        self.second = nn.Parameter(torch.randn(n - split, generator=g, dtype=F64))

    def forward(self, _batch) -> torch.Tensor:
        theta = torch.cat([self.first, self.second])
        return 0.5 * theta @ self.A @ theta + self.b @ theta


def quad_loss(model: nn.Module, batch) -> torch.Tensor:
    return model(batch)


def _with_spectrum(eigs, seed: int = 0) -> torch.Tensor:
    eigs = torch.as_tensor(eigs, dtype=F64)
    n = eigs.numel()
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64)).Q
    return U @ torch.diag(eigs) @ U.T


def dense_hessian(model: nn.Module, loss_fn, batch, names: list[str]) -> torch.Tensor:
    """Reference Hessian over the named parameters by ``torch.autograd.functional.hessian``."""
    model = copy.deepcopy(model).eval()
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(x):
        new = {n: c.view(s) for n, c, s in zip(names, x.split(sizes), shapes, strict=True)}
        full = {**{k: v.detach() for k, v in params.items()}, **new}

        class Call(nn.Module):  # the loss closure sees a module whose parameters are `full`
            def forward(self, *args):
                return torch.func.functional_call(model, full, args)

        return loss_fn(Call(), batch)

    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(f, flat, vectorize=True)


def _tiny_lm() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyLM(vocab=8, d_model=8, n_heads=2, n_layers=1, dropout=0.1).double()
    tokens = torch.randint(0, 8, (4, 9), generator=torch.Generator().manual_seed(0))
    return model, tokens


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x):
        return {"logits": self.net(x), "hidden": None}  # HF-style dict output


def mlp_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x)["logits"], y)


def _mlp() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(1)
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 4, generator=g, dtype=F64), torch.randint(0, 3, (16,), generator=g))
    return MLP().double(), batch


# --------------------------------------------------------------------------------------------
# exact Hessians


def test_quadratic_exact_eigenvalues_and_trace():
    eigs = [6.0, 4.0, 2.5, -3.0, *np.linspace(-1, 1, 26)]
    model = Quadratic(_with_spectrum(eigs), split=12)
    res = hessian_eigenvalues(model, quad_loss, None, k=3, tol=1e-10)
    np.testing.assert_allclose(res.eigenvalues.numpy(), [6.0, 4.0, 2.5], rtol=1e-9)
    low = hessian_eigenvalues(model, quad_loss, None, k=1, which="SA", tol=1e-10)
    assert low.eigenvalues.item() == pytest.approx(-3.0, rel=1e-9)
    power = hessian_eigenvalues(model, quad_loss, None, method="power", tol=1e-10, max_iter=400)
    assert power.eigenvalues.item() == pytest.approx(6.0, rel=1e-6)
    trace, se = hessian_trace(model, quad_loss, None, num_probes=200)
    assert abs(trace - sum(eigs)) < 3 * se
    op = HessianOperator(model, quad_loss, None)
    v = torch.randn(30, generator=torch.Generator().manual_seed(3), dtype=F64)
    torch.testing.assert_close(op.matvec(v), model.A @ v)
    block = op.restrict("second")
    torch.testing.assert_close(block.matvec(v[12:]), model.A[12:, 12:] @ v[12:])
    assert op.names == ["first", "second"] and block.shape == (18, 18)


def test_mlp_with_dict_output_against_dense():
    model, batch = _mlp()
    names = [n for n, _ in model.named_parameters()]
    H = dense_hessian(model, mlp_loss, batch, names)
    ref = torch.linalg.eigvalsh(H)
    res = hessian_eigenvalues(model, mlp_loss, batch, k=2)
    np.testing.assert_allclose(res.eigenvalues.numpy(), ref[-2:].flip(0).numpy(), rtol=1e-3)
    trace, se = hessian_trace(model, mlp_loss, batch, num_probes=300)
    assert abs(trace - H.trace()) < 3 * se
    theory = torch.sqrt(2 * (H.square().sum() - H.diag().square().sum()) / 300)
    assert 0.7 < se / theory < 1.4
    t_pp, se_pp = hessian_trace(model, mlp_loss, batch, method="hutch++", num_probes=60)
    assert abs(t_pp - H.trace()) < 4 * se_pp
    nodes, weights = hessian_density(model, mlp_loss, batch, num_probes=3, num_steps=20)
    assert weights.sum().item() == pytest.approx(1.0)
    assert nodes.max().item() == pytest.approx(ref[-1].item(), rel=1e-6)


def test_tiny_transformer_against_dense_and_per_block():
    model, tokens = _tiny_lm()
    model.train()  # dropout on in training: the diagnostics evaluate in eval mode by default
    names = [n for n, _ in model.named_parameters()]
    H = dense_hessian(model, lm_loss, tokens, names)
    top = torch.linalg.eigvalsh(H)[-1].item()
    assert hessian_eigenvalues(model, lm_loss, tokens).eigenvalues.item() == pytest.approx(
        top, rel=1e-3
    )
    trace, se = hessian_trace(model, lm_loss, tokens, num_probes=100)
    assert abs(trace - H.trace()) < 3 * se
    assert 0 < se < abs(H.trace())
    # per-block sharpness is the top eigenvalue of the dense Hessian's diagonal sub-block
    block_names = [n for n in names if n.startswith("layers.0.self_attn.")]
    idx = torch.cat(
        [
            torch.arange(o, o + p.numel())
            for (n, p), o in zip(
                model.named_parameters(),
                np.cumsum([0] + [p.numel() for p in model.parameters()])[:-1],
                strict=True,
            )
            if n in block_names
        ]
    )
    sub = torch.linalg.eigvalsh(H[idx][:, idx])[-1].item()
    ctx = LookContext(
        step=0,
        model=model,
        loss_fn=lm_loss,
        probe_batch=tokens,
        generator=torch.Generator().manual_seed(0),
        options={"blocks": ["layers.0.self_attn"], "tol": 1e-6},
    )
    out = sharpness_metric(ctx)
    assert out.scalars["dynmon/sharpness/layers.0.self_attn"].item() == pytest.approx(sub, rel=1e-4)
    assert out.scalars["dynmon/sharpness"].item() == pytest.approx(top, rel=1e-4)
    assert model.training


def test_transformer_lens_bridge_block():
    pytest.importorskip("transformer_lens")
    model = tiny_tl(d_model=16, n_heads=2, n_layers=1, n_ctx=16, d_vocab=16)
    tokens = torch.randint(0, 16, (4, 10), generator=torch.Generator().manual_seed(0))

    def loss_fn(m, batch):
        logits = m(batch)  # [B, T, V]
        return nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 16), batch[:, 1:].reshape(-1))

    chosen = select_params(model, "blocks.0.attn")  # a bridge alias resolves to the module
    assert len(chosen) == 8 and all("attn" in n for n in chosen)
    H = dense_hessian(model, loss_fn, tokens, list(chosen))
    res = hessian_eigenvalues(model, loss_fn, tokens, params="blocks.0.attn", tol=1e-6)
    assert res.eigenvalues.item() == pytest.approx(torch.linalg.eigvalsh(H)[-1].item(), rel=1e-4)


# --------------------------------------------------------------------------------------------
# parameter selection


def test_select_params_by_prefix_module_list_and_errors():
    model, _ = _tiny_lm()
    everything = select_params(model)
    assert list(everything) == [n for n, _ in model.named_parameters()]
    attn = select_params(model, "layers.0.self_attn")
    assert attn == select_params(model, model.layers[0].self_attn)
    assert all(n.startswith("layers.0.self_attn.") for n in attn)
    assert list(select_params(model, "unembed.weight")) == ["unembed.weight"]
    assert list(select_params(model, [model.embed.weight, "unembed"])) == [
        "embed.weight",
        "unembed.weight",
        "unembed.bias",
    ]
    with pytest.raises(ValueError, match="no module or parameter named 'blocks'.*embed"):
        select_params(model, "blocks")
    with pytest.raises(ValueError, match="not a model parameter"):
        select_params(model, [torch.zeros(3)])
    model.embed.weight.requires_grad_(False)
    assert "embed.weight" not in select_params(model)
    with pytest.raises(ValueError, match="do not require grad"):
        select_params(model, "embed")


def test_unused_parameters_and_bad_losses():
    model, batch = _mlp()
    model.extra = nn.Linear(2, 2).double()  # never used by the loss
    op = HessianOperator(model, mlp_loss, batch)
    assert not any(n.startswith("extra") for n in op.names)
    explicit = HessianOperator(model, mlp_loss, batch, params=["net.2", "extra"])
    v = torch.ones(explicit.shape[0], dtype=F64)
    assert (explicit.matvec(v)[-6:] == 0).all()  # zero rows for what the loss ignores
    with pytest.raises(ValueError, match="does not depend"):
        HessianOperator(model, mlp_loss, batch, params="extra")
    with pytest.raises(TypeError, match="scalar"):
        HessianOperator(model, lambda m, b: m(b[0])["logits"], batch)


# --------------------------------------------------------------------------------------------
# no side effects


@pytest.mark.parametrize("dropout", [False, True])
def test_no_side_effects(dropout):
    model, batch, opt = trained_noisy()
    opt_state = copy.deepcopy(opt.state_dict())
    model.bn.train()  # BN in train mode would update its running stats if run as-is
    untouched = Untouched(model)

    hessian_eigenvalues(model, noisy_loss, batch, k=2, dropout=dropout)
    hessian_trace(model, noisy_loss, batch, num_probes=4, dropout=dropout)
    hessian_density(model, noisy_loss, batch, num_probes=1, num_steps=4, dropout=dropout)
    ctx = LookContext(step=0, model=model, loss_fn=noisy_loss, probe_batch=batch, optimizer=opt)
    ctx.options = {"dropout": dropout, "blocks": ["lin"], "num_probes": 3}
    sharpness_metric(ctx)
    hessian_trace_metric(ctx)

    untouched.check()
    assert str(opt.state_dict()) == str(opt_state)


def test_dropout_masks_are_fixed_and_seeded():
    model, tokens = _tiny_lm()
    on = HessianOperator(model, lm_loss, tokens, dropout=True)
    off = HessianOperator(model, lm_loss, tokens)
    g = torch.Generator().manual_seed(5)
    u, v = (torch.randn(on.shape[0], generator=g, dtype=F64) for _ in range(2))
    assert torch.dot(u, on.matvec(v)).item() == pytest.approx(torch.dot(v, on.matvec(u)).item())
    assert not torch.allclose(on.matvec(v), off.matvec(v))
    again = HessianOperator(model, lm_loss, tokens, dropout=True)
    torch.testing.assert_close(again.matvec(v), on.matvec(v), rtol=0, atol=0)
    other = HessianOperator(model, lm_loss, tokens, dropout=True, generator=g)
    assert not torch.allclose(other.matvec(v), on.matvec(v))


# --------------------------------------------------------------------------------------------
# monitor metrics


def test_sharpness_metric_keys_eos_and_blocks():
    model = Quadratic(_with_spectrum([5.0, 3.0, 1.0, *np.linspace(0, 0.5, 17)]), split=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    ctx = LookContext(
        step=3,
        model=model,
        loss_fn=quad_loss,
        probe_batch=0,
        optimizer=opt,
        generator=torch.Generator().manual_seed(0),
        options={"k": 2, "tol": 1e-8, "blocks": {"head": "first", "tail": model.second}},
    )
    out = sharpness_metric(ctx)
    s = out.scalars
    assert s["dynmon/sharpness"].item() == pytest.approx(5.0, rel=1e-8)
    assert s["dynmon/hessian_eig/0"].item() == pytest.approx(5.0, rel=1e-8)
    assert s["dynmon/hessian_eig/1"].item() == pytest.approx(3.0, rel=1e-8)
    for name, sl in (("head", slice(0, 8)), ("tail", slice(8, 20))):
        ref = torch.linalg.eigvalsh(model.A[sl, sl])[-1].item()
        assert s[f"dynmon/sharpness/{name}"].item() == pytest.approx(ref, rel=1e-6)
    assert s["dynmon/eos/sharpness_x_lr"].item() == pytest.approx(1.5)
    assert s["dynmon/eos/ratio"].item() == pytest.approx(0.75)
    ctx.options = {}
    ctx.optimizer = None
    plain = sharpness_metric(ctx).scalars
    assert set(plain) == {"dynmon/sharpness"}


def test_trace_metric_and_missing_inputs():
    model, batch = _mlp()
    ctx = LookContext(step=0, model=model, loss_fn=mlp_loss, probe_batch=batch)
    out = hessian_trace_metric(ctx)
    assert set(out.scalars) == {"dynmon/hessian_trace", "dynmon/hessian_trace_stderr"}
    ctx.options = {"trace_method": "hutch++", "num_probes": 9}
    assert hessian_trace_metric(ctx).scalars["dynmon/hessian_trace_stderr"] > 0
    ctx.options = {"trace_method": "exact"}
    with pytest.raises(ValueError, match="trace_method"):
        hessian_trace_metric(ctx)
    for metric in (sharpness_metric, hessian_trace_metric):
        with pytest.raises(ValueError, match="loss_fn=.*probe_batch="):
            metric(LookContext(step=0, model=model, loss_fn=mlp_loss))
    assert SHARPNESS.needs == HESSIAN_TRACE.needs == frozenset({"curvature"})
    assert SHARPNESS.cost == HESSIAN_TRACE.cost == "opt-in"
    assert "preconditioned" in SHARPNESS.doc
    assert dynmon.hessian_eigenvalues is hessian.hessian_eigenvalues


def test_monitor_logs_sharpness_with_eos(tmp_path):
    model, tokens = _tiny_lm()
    model = model.float()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    with dynmon.Monitor(
        model,
        run_dir=tmp_path,
        schedule=[],
        metrics={"sharpness": dynmon.every(2), "hessian_trace": dynmon.every(2)},
        loss_fn=lm_loss,
        probe_batch=tokens,
        optimizer=opt,
        options={"blocks": ["layers.0.self_attn"], "num_probes": 4},
        strict=True,
    ) as mon:
        for step in range(3):
            opt.zero_grad()
            lm_loss(model, tokens).backward()
            opt.step()
            mon.step(step)
    run = dynmon.load_run(tmp_path)
    rows = [r for r in run.metrics if "dynmon/sharpness" in r]
    assert [r["step"] for r in rows] == [0, 2]
    for key in (
        "dynmon/sharpness/layers.0.self_attn",
        "dynmon/eos/sharpness_x_lr",
        "dynmon/eos/ratio",
        "dynmon/hessian_trace",
    ):
        assert key in rows[0]
    assert rows[0]["dynmon/eos/ratio"] == pytest.approx(rows[0]["dynmon/sharpness"] * 1e-3 / 2)


def test_eigenvalue_solver_on_the_operator_reports_cost():
    model, batch = _mlp()
    op = HessianOperator(model, mlp_loss, batch)
    res = lanczos_eigenvalues(op, 1, generator=torch.Generator().manual_seed(0))
    assert res.converged and 1 <= res.num_matvecs <= 100
    assert op.loss.dim() == 0 and not op.loss.requires_grad


# --------------------------------------------------------------------------------------------
# batched Hessian-vector products


def test_matmat_against_dense_hessian_columns():
    model, tokens = _tiny_lm()
    names = [n for n, _ in model.named_parameters()]
    H = dense_hessian(model, lm_loss, tokens, names)
    op = HessianOperator(model, lm_loss, tokens, batched=True)
    V = torch.randn(op.shape[0], 6, generator=torch.Generator().manual_seed(2), dtype=F64)
    torch.testing.assert_close(op.matmat(V), H @ V, rtol=1e-9, atol=1e-10)
    block = op.restrict("unembed")
    Vb = V[: block.shape[0]]
    idx = torch.cat(
        [torch.arange(s, s + n) for s, n in _offsets(op, block.names)]
    )  # the block's rows of θ
    torch.testing.assert_close(block.matmat(Vb), H[idx][:, idx] @ Vb, rtol=1e-9, atol=1e-10)


def _offsets(op: HessianOperator, names: list[str]) -> list[tuple[int, int]]:
    starts = np.cumsum([0, *op.sizes])
    return [(int(starts[op.names.index(n)]), op.sizes[op.names.index(n)]) for n in names]


def test_matmat_falls_back_to_matvecs_when_batching_fails(no_batched_grads):
    model, tokens = _tiny_lm()
    op = HessianOperator(model, lm_loss, tokens, batched=True)
    V = torch.randn(op.shape[0], 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    want = torch.stack([op.matvec(v) for v in V.T], 1)
    with pytest.warns(RuntimeWarning, match="one matvec per vector"):
        got = op.matmat(V)
    torch.testing.assert_close(got, want)
    op.matmat(V)  # switched off for this operator: no second warning, no second try


def test_batched_trace_and_density_match_the_per_vector_loop():
    model, batch = _mlp()
    loop = dict(block_size=1, batched=False)
    t1 = hessian_trace(model, mlp_loss, batch, num_probes=24, **loop)
    t2 = hessian_trace(model, mlp_loss, batch, num_probes=24, block_size=8, batched=True)
    torch.testing.assert_close(t2, t1, rtol=1e-9, atol=1e-12)
    d1 = hessian_density(model, mlp_loss, batch, num_probes=3, num_steps=15, **loop)
    d2 = hessian_density(model, mlp_loss, batch, num_probes=3, num_steps=15, batched=True)
    torch.testing.assert_close(d2, d1, rtol=1e-7, atol=1e-9)
    assert not HessianOperator(model, mlp_loss, batch)._batched  # CPU default: the loop
