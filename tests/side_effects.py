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
