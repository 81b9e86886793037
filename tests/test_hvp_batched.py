"""Batched Hessian-vector products (``HessianOperator.matmat``): both batched passes against a
dense float64 Hessian, for blocks of several sizes, a parameter subset and ``restrict``; dropout
masks as in the kept graph; bitwise non-interference; the fallback to the loop with one warning.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import TinyLM, lm_loss
from side_effects import Untouched, trained_noisy
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from dynmon.hessian import HessianOperator, hessian_density, hessian_trace

F64 = torch.float64


def _tiny_lm() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = TinyLM(vocab=8, d_model=8, n_heads=2, n_layers=1, dropout=0.1).double()
    tokens = torch.randint(0, 8, (4, 9), generator=torch.Generator().manual_seed(0))
    return model, tokens


def _dense(model: nn.Module, loss_fn, batch, names: list[str]) -> torch.Tensor:
    """The Hessian over ``names`` (flattened in that order) by ``torch.autograd.functional``."""
    model = copy.deepcopy(model).eval()
    params = {n: p.detach() for n, p in model.named_parameters()}
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]

    def f(x: torch.Tensor) -> torch.Tensor:
        new = {n: c.view(s) for n, c, s in zip(names, x.split(sizes), shapes, strict=True)}

        class Call(nn.Module):  # the loss closure sees a module whose parameters are swapped
            def forward(self, *args):
                return torch.func.functional_call(model, {**params, **new}, args)

        return loss_fn(Call(), batch)

    flat = torch.cat([params[n].reshape(-1) for n in names])
    with sdpa_kernel(SDPBackend.MATH):
        return torch.autograd.functional.hessian(f, flat, vectorize=True)


def _block(n: int, b: int, seed: int) -> torch.Tensor:
    return torch.randn(n, b, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _assert_rel(got: torch.Tensor, want: torch.Tensor, rel: float = 1e-6) -> None:
    err = (torch.linalg.matrix_norm(got - want) / torch.linalg.matrix_norm(want)).item()
    assert err <= rel, f"relative error {err:.2e}"
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9 * want.abs().max().item())


@pytest.fixture(scope="module")
def lm_and_hessian():
    model, tokens = _tiny_lm()
    names = [n for n, _ in model.named_parameters()]
    return model, tokens, _dense(model, lm_loss, tokens, names)


# --------------------------------------------------------------------------------------------
# values


@pytest.mark.parametrize("b", [2, 5, 32, 40])
def test_matmat_matches_dense_hessian_for_block_sizes(lm_and_hessian, b):
    model, tokens, H = lm_and_hessian
    op = HessianOperator(model, lm_loss, tokens, batched=True)
    assert op.names == [n for n, _ in model.named_parameters()]
    V = _block(op.shape[0], b, seed=b)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # neither pass may fall back here
        _assert_rel(op.matmat(V), H @ V)


@pytest.mark.parametrize("b", [2, 7])
def test_forward_over_reverse_on_small_blocks(lm_and_hessian, b):
    model, tokens, H = lm_and_hessian
    op = HessianOperator(model, lm_loss, tokens, batched=True)
    op.forward_min_block = 2  # every block forward-over-reverse
    V = _block(op.shape[0], b, seed=10 + b)
    _assert_rel(op._forward_over_reverse(V.mT).mT, H @ V)
    _assert_rel(op.matmat(V), H @ V)


@pytest.mark.parametrize("forward", [False, True])
def test_parameter_subset_restrict_and_unused_parameter(forward):
    model, tokens = _tiny_lm()
    model.extra = nn.Parameter(torch.randn(3, dtype=F64))  # selected but unused: zero rows
    chosen = ["layers.0.linear1.weight", "unembed.weight", "unembed.bias"]
    op = HessianOperator(model, lm_loss, tokens, params=[*chosen, "extra"], batched=True)
    op.forward_min_block = 2 if forward else 10**9
    H = _dense(model, lm_loss, tokens, chosen)
    n_used = H.shape[0]
    assert op.shape == (n_used + 3, n_used + 3)
    V = _block(op.shape[0], 6, seed=3)
    HV = op.matmat(V)
    _assert_rel(HV[:n_used], H @ V[:n_used])
    assert torch.equal(HV[n_used:], torch.zeros(3, 6, dtype=F64))

    block = op.restrict("unembed")  # H_BB over the unembedding only, on the same graph
    nb = block.shape[0]
    start = op.sizes[0]  # the unembedding follows linear1.weight in θ
    Vb = _block(nb, 5, seed=4)
    _assert_rel(block.matmat(Vb), H[start : start + nb, start : start + nb] @ Vb)


@pytest.mark.parametrize("forward", [False, True])
def test_dropout_masks_match_the_kept_graph(forward):
    model, tokens = _tiny_lm()
    op = HessianOperator(model, lm_loss, tokens, dropout=True, batched=True)
    op.forward_min_block = 2 if forward else 10**9
    V = _block(op.shape[0], 4, seed=5)
    loop = torch.stack([op.matvec(v) for v in V.T], 1)  # masks drawn once, at construction
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # with dropout: the kept graph, no retry
        torch.testing.assert_close(op.matmat(V), loop, rtol=1e-9, atol=1e-12)
    off = HessianOperator(model, lm_loss, tokens, batched=True)
    assert not torch.allclose(off.matmat(V), loop)  # the masks do change the Hessian


def test_tied_weights_are_swapped_together():
    model, tokens = _tiny_lm()
    model.unembed.weight = model.embed.weight  # [vocab, d] both: one parameter, two names
    op = HessianOperator(model, lm_loss, tokens, batched=True)
    assert "unembed.weight" not in op.names  # named_parameters lists a tied tensor once
    H = _dense(model, lm_loss, tokens, op.names)
    V = _block(op.shape[0], 32, seed=9)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the gradient check passes
        _assert_rel(op.matmat(V), H @ V)  # 32 vectors: forward-over-reverse


def test_float32_operator_keeps_its_dtype(lm_and_hessian):
    model, tokens, H = lm_and_hessian
    model32 = copy.deepcopy(model).float()
    op = HessianOperator(model32, lm_loss, tokens, batched=True)
    op.forward_min_block = 2
    V = _block(op.shape[0], 3, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # the float32 gradient check passes
        HV = op.matmat(V.float())
    assert HV.dtype == torch.float32 and HV.device == V.device
    err = torch.linalg.matrix_norm(HV.double() - H @ V) / torch.linalg.matrix_norm(H @ V)
    assert err.item() < 1e-4


def mlp_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def test_trace_and_density_on_large_blocks_match_the_loop():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(1)
    batch = (torch.randn(16, 4, generator=g, dtype=F64), torch.randint(0, 3, (16,), generator=g))
    loop = dict(block_size=1, batched=False)
    for method in ("hutchinson", "hutch++"):
        t1 = hessian_trace(model, mlp_loss, batch, num_probes=96, method=method, **loop)
        t2 = hessian_trace(
            model, mlp_loss, batch, num_probes=96, method=method, block_size=32, batched=True
        )
        torch.testing.assert_close(t2, t1, rtol=1e-9, atol=1e-12)
    d1 = hessian_density(model, mlp_loss, batch, num_probes=32, num_steps=12, **loop)
    d2 = hessian_density(model, mlp_loss, batch, num_probes=32, num_steps=12, batched=True)
    torch.testing.assert_close(d2, d1, rtol=1e-7, atol=1e-9)


# --------------------------------------------------------------------------------------------
# non-interference


@pytest.mark.parametrize("dropout", [False, True])
def test_batched_products_leave_the_model_bitwise_unchanged(dropout):
    model, batch, opt = trained_noisy()
    g = torch.Generator().manual_seed(1)
    untouched = Untouched(model)
    param_ids = {n: id(p) for n, p in model.named_parameters()}
    opt_state = copy.deepcopy(opt.state_dict())

    op = HessianOperator(model, mlp_loss, batch, dropout=dropout, batched=True)
    V = torch.randn(op.shape[0], 33, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        forward = op.matmat(V)  # 33 >= forward_min_block: forward-over-reverse
        reverse = op.matmat(V[:, :8])  # reverse-over-reverse
    torch.testing.assert_close(forward[:, :8], reverse, rtol=1e-4, atol=1e-5)
    hessian_trace(model, mlp_loss, batch, num_probes=32, block_size=32, batched=True)
    hessian_density(model, mlp_loss, batch, num_probes=32, num_steps=3, batched=True)

    untouched.check()
    assert {n: id(p) for n, p in model.named_parameters()} == param_ids
    assert str(opt.state_dict()) == str(opt_state)


# --------------------------------------------------------------------------------------------
# fallback to the loop


class _Cube(torch.autograd.Function):
    """x³ with a twice-differentiable backward but no torch.func support (no setup_context)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x**3

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return 3 * x**2 * g


class CubeNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).double()

    def forward(self, x):
        return _Cube.apply(self.lin(x))


class CachedWeight(nn.Module):
    """Reads its weight through a cached reference that ``functional_call`` cannot swap."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2).double()
        self.cache = [self.lin.weight]

    def forward(self, x):
        return torch.tanh(x @ self.cache[0].T + self.lin.bias)


def cube_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return (model(x) ** 2).sum()


def _cube_case(
    net: type[nn.Module], seed: int
) -> tuple[HessianOperator, torch.Tensor, torch.Tensor]:
    """A batched operator on ``net`` (every block forward-over-reverse first), a block of four
    vectors and its products by the per-vector loop."""
    torch.manual_seed(2)
    x = torch.randn(5, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    op = HessianOperator(net(), cube_loss, x, batched=True)
    op.forward_min_block = 2
    V = _block(op.shape[0], 4, seed=seed)
    return op, V, torch.stack([op.matvec(v) for v in V.T], 1)


@pytest.mark.parametrize(
    ("net", "match"), [(CubeNet, "setup_context"), (CachedWeight, "functional_call")]
)
def test_forward_pass_failure_falls_back_with_one_warning(net, match):
    op, V, want = _cube_case(net, seed=7)
    with pytest.warns(RuntimeWarning, match=match):
        got = op.matmat(V)  # then the reverse-over-reverse pass
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        again = op.matmat(V)  # switched off for this operator: no second warning or try
    torch.testing.assert_close(again, want, rtol=1e-12, atol=1e-14)


def test_both_batched_passes_failing_end_in_the_loop(no_batched_grads):
    op, V, want = _cube_case(CubeNet, seed=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = op.matmat(V)
        op.matmat(V)  # both switched off: nothing more
    messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
    assert len(messages) == 2
    assert "setup_context" in messages[0] and "one matvec per vector" in messages[1]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
