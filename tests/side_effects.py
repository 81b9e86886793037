"""A snapshot of everything a metric must leave alone, to compare bitwise after it ran."""

from __future__ import annotations

import torch
from torch import nn


class Untouched:
    """``.grad`` (values and identity), weights, buffers, every module's ``training`` flag and
    the global RNG of ``model``, taken now; ``check()`` asserts they are bitwise the same."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.grads = {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        }
        self.grad_ids = {n: id(p.grad) for n, p in model.named_parameters()}
        self.params = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.buffers = {n: b.clone() for n, b in model.named_buffers()}
        self.modes = {n: m.training for n, m in model.named_modules()}
        self.rng = torch.get_rng_state()

    def check(self) -> None:
        model = self.model
        assert torch.equal(self.rng, torch.get_rng_state()), "global RNG moved"
        assert {n: m.training for n, m in model.named_modules()} == self.modes
        for n, p in model.named_parameters():
            assert id(p.grad) == self.grad_ids[n], n
            if self.grads[n] is None:
                assert p.grad is None, n
            else:
                assert torch.equal(p.grad, self.grads[n]), n
            assert torch.equal(p.detach(), self.params[n]), n
            assert p.dtype == self.params[n].dtype
        for n, b in model.named_buffers():
            assert torch.equal(b, self.buffers[n]), n


def train_tiny_lm(
    run_dir, monitor_kwargs=None, check_untouched: bool = False
) -> list[torch.Tensor]:
    """Four SGD steps of a seeded TinyLM, with a Monitor built from ``monitor_kwargs`` (strict,
    ``lm_loss`` and a fixed probe batch) when given; returns the trained weights, so a watched
    and an unwatched run can be compared bitwise. ``check_untouched`` also checks every look."""
    from conftest import TinyLM, lm_loss

    import dynmon

    torch.manual_seed(0)
    model = TinyLM(vocab=16, d_model=16, n_heads=2, n_layers=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = torch.randint(0, 16, (6, 9), generator=torch.Generator().manual_seed(5))
    mon = None
    if monitor_kwargs is not None:
        kw = {"strict": True, "loss_fn": lm_loss, "probe_batch": probe, **monitor_kwargs}
        mon = dynmon.Monitor(model, run_dir, **kw)
    for step in range(4):
        opt.zero_grad()
        lm_loss(model, torch.randint(0, 16, (4, 9))).backward()
        opt.step()
        if mon is not None:
            before = Untouched(model) if check_untouched else None
            mon.step(step)
            if before is not None:
                before.check()
    if mon is not None:
        mon.close()
    return [p.detach().clone() for p in model.parameters()]


class Noisy(nn.Module):
    """Batch norm, dropout and a frozen layer: every kind of state a loss run could touch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 6)
        self.bn = nn.BatchNorm1d(6)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(6, 3)
        self.frozen = nn.Linear(3, 3)
        self.frozen.requires_grad_(False)

    def forward(self, x):
        return self.frozen(self.out(self.drop(torch.tanh(self.bn(self.lin(x))))))


def noisy_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def trained_noisy() -> tuple[Noisy, tuple[torch.Tensor, torch.Tensor], torch.optim.Optimizer]:
    """A seeded ``Noisy`` after one AdamW step (optimizer state exists), one parameter without
    a gradient, in mixed mode (train, batch norm in eval); its probe batch and optimizer."""
    torch.manual_seed(0)
    model = Noisy()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    noisy_loss(model, batch).backward()
    opt.step()
    model.out.bias.grad = None  # one parameter without a gradient
    model.train()
    model.bn.eval()  # a mixed-mode model
    return model, batch, opt
