"""Shared test set-up: offline hubs and W&B, tiny models, nothing touching the network."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# W&B reads WANDB_DIR once per process: a default outside the checkout for every test's runs
os.environ.setdefault("WANDB_DIR", tempfile.mkdtemp(prefix="dynmon-tests-wandb-"))

import pytest  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

# One intra-op thread: the suite's models are tiny, and on a busy 2-core machine OpenMP barriers
# make multi-threaded small kernels orders of magnitude slower (tests that need more set it).
torch.set_num_threads(1)


class TinyLM(nn.Module):
    """A 2-layer pre-norm transformer LM on nn.TransformerEncoderLayer (with dropout)."""

    def __init__(
        self,
        vocab: int = 32,
        d_model: int = 32,
        n_heads: int = 4,
        n_layers: int = 2,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d_model, n_heads, 4 * d_model, dropout, batch_first=True)
            for _ in range(n_layers)
        )
        self.unembed = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # [B, T, D]
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        return self.unembed(x)  # [B, T, V]


def tiny_tl(
    d_model: int = 16,
    n_heads: int = 4,
    n_layers: int = 2,
    n_ctx: int = 8,
    d_vocab: int = 16,
    seed: int = 0,
    **extra: object,
) -> nn.Module:
    """A small attention-only TransformerLens 4 model, built natively (no download)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    cfg = TransformerBridgeConfig(
        d_model=d_model,
        d_head=d_model // n_heads,
        n_heads=n_heads,
        n_layers=n_layers,
        n_ctx=n_ctx,
        d_vocab=d_vocab,
        attn_only=True,
        normalization_type=None,
        seed=seed,
        device="cpu",
        **extra,
    )
    return TransformerBridge.boot_native(cfg)


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy."""
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )


@pytest.fixture
def tiny_lm():
    torch.manual_seed(0)
    return TinyLM()


@pytest.fixture
def no_batched_grads(monkeypatch):
    """``torch.autograd.grad`` refuses ``is_grads_batched`` as a model without a batching rule
    does, so the batched Hessian-vector passes must fall back."""
    real = torch.autograd.grad

    def no_batching(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented for aten::some_op")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
