"""The model: an attention-only transformer built natively by TransformerLens 4.

``n_layers`` attention layers of ``n_heads`` heads, learned positional embeddings, no LayerNorm,
no MLP (docs/packs.md#induction). Weights the scores read, all in TransformerLens layout:
``model.W_E`` ``[V, D]``, ``model.W_U`` ``[D, V]``; per-head weights come from
``dynmon.heads(model)``.
Attention patterns are read by dynmon's pattern capture from the model's own
``blocks.{i}.attn.hook_pattern`` (``[B, H, T, T]``), so they are exactly what the model computed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dynmon.adapters.params import trainable_parameters as trainable  # noqa: F401

from .config import InductionConfig


def build_model(cfg: InductionConfig) -> nn.Module:
    """A ``TransformerBridge`` booted natively (no download), initialised from ``cfg.seed``;
    token and positional embeddings drawn N(0, ``cfg.embed_init``²) when that is positive."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_native(
        TransformerBridgeConfig(
            d_model=cfg.d_model,
            d_head=cfg.d_model // cfg.n_heads,
            n_heads=cfg.n_heads,
            n_layers=cfg.n_layers,
            n_ctx=cfg.seq_len,
            d_vocab=cfg.vocab,
            attn_only=True,
            normalization_type=None,
            seed=cfg.seed,
            device=cfg.device,
        )
    )
    if cfg.embed_init > 0:  # see config.py for why the embeddings start at N(0, 1)
        g = torch.Generator(device=cfg.device).manual_seed(cfg.seed)
        with torch.no_grad():
            for w in (model.W_E, model.W_pos):  # [V, D], [T, D]
                w.normal_(0.0, cfg.embed_init, generator=g)
    return model


def token_losses(logits: Tensor, tokens: Tensor) -> Tensor:
    """Next-token cross-entropy ``[B, T−1]``: entry i is the loss of predicting token i+1."""
    from dynmon.metrics.roles import token_losses as losses

    return losses(logits, tokens)


def next_token_loss(model: nn.Module, tokens: Tensor) -> Tensor:
    """Mean next-token loss over every position (the training loss)."""
    logits = model(tokens)  # [B, T, V]
    V = logits.shape[-1]
    return nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, V), tokens[:, 1:].reshape(-1)
    )  # [B·(T−1), V] against [B·(T−1)]


def forward_with_patterns(model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Logits ``[B, T, V]`` and every layer's attention pattern ``[L, B, H, T, T]``, one forward
    (dynmon's pattern capture: the model's own ``hook_pattern``)."""
    import dynmon
    from dynmon.adapters.patterns import forward_with_patterns as capture

    return capture(model, tokens, dynmon.heads(model))
