"""The model: Nanda et al.'s one-layer transformer, built natively by TransformerLens 4.

One attention layer and a ReLU MLP, learned positional embeddings, no LayerNorm, vocabulary
p + 1 (numbers and "="), p output classes read at the last ("=") position. Biases are held at
zero and left out of training unless ``config.bias`` (Nanda et al. trained without them).

Weights the progress measures read, all live views of the parameters in TransformerLens layout:
``model.W_E`` [p+1, D], ``model.W_U`` [D, p], ``model.blocks[0].mlp.W_in`` [D, d_mlp],
``model.blocks[0].mlp.W_out`` [d_mlp, D]; MLP neuron activations come from the forward hook
``blocks.0.mlp.hook_post`` ([N, 3, d_mlp] after the ReLU).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from dynmon.adapters.params import trainable_parameters as trainable  # noqa: F401

from .config import GrokkingConfig


def build_model(cfg: GrokkingConfig) -> nn.Module:
    """A ``TransformerBridge`` booted natively (no download), seeded by ``cfg.seed``."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    model = TransformerBridge.boot_native(
        TransformerBridgeConfig(
            d_model=cfg.d_model,
            d_head=cfg.d_model // cfg.n_heads,
            n_heads=cfg.n_heads,
            n_layers=1,
            n_ctx=3,
            d_vocab=cfg.p + 1,
            d_vocab_out=cfg.p,
            d_mlp=cfg.d_mlp,
            act_fn="relu",
            attn_only=False,
            normalization_type=None,
            seed=cfg.seed,
            device=cfg.device,
        )
    )
    if not cfg.bias:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("bias"):
                    param.zero_()
                    param.requires_grad_(False)
    return model


def logits_at_eq(model: nn.Module, tokens: Tensor) -> Tensor:
    """Logits at the "=" position, [N, p]."""
    return model(tokens)[:, -1]  # [N, 3, p] -> [N, p]


def forward_with_acts(model: nn.Module, tokens: Tensor) -> tuple[Tensor, Tensor]:
    """Logits [N, p] and MLP neuron activations [N, d_mlp] at the "=" position, one forward.

    The activations are read by a plain forward hook on the model's own ``hook_post``, so they
    are exactly what the model computed (tests recompute them from the weights).
    """
    store: dict[str, Tensor] = {}

    def keep(_module: nn.Module, _inputs: object, output: Tensor) -> None:
        store["post"] = output[:, -1].detach()  # [N, 3, d_mlp] -> [N, d_mlp]

    handle = model.blocks[0].mlp.hook_post.register_forward_hook(keep)
    try:
        logits = logits_at_eq(model, tokens)
    finally:
        handle.remove()
    return logits, store["post"]


def unembed_weights(model: nn.Module) -> dict[str, Tensor]:
    """The matrices the progress measures read: W_E [p, D] (numbers only), W_L [d_mlp, p]."""
    mlp = model.blocks[0].mlp
    p = model.W_U.shape[1]
    return {
        "W_E": model.W_E[:p].detach(),  # drop the "=" row: [p+1, D] -> [p, D]
        "W_L": (mlp.W_out @ model.W_U).detach(),  # [d_mlp, D] @ [D, p] -> [d_mlp, p]
    }
