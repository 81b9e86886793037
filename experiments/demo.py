"""Demo pack: a 2-layer attention-only TransformerLens model learns to copy repeated segments.

The smallest end-to-end use of dynmon on a real training run: a plain PyTorch loop, the Monitor
after every optimizer step, a local run folder and its report. The full study of this setting
(1 to 4 layers, induction scores, lead times) is the induction pack.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import dynmon


@dataclass(frozen=True)
class DemoConfig:
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    vocab: int = 64
    seq_len: int = 64
    segment_len: int = 24
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.1
    steps: int = 1000
    look_every: int = 25
    seed: int = 0


PRESETS = {"quick": DemoConfig(steps=1000), "tiny": DemoConfig(steps=60, d_model=32, batch=16)}
DEFAULT_PRESET = "quick"


def build_model(cfg: DemoConfig) -> nn.Module:
    """A TransformerLens 4 native attention-only model (no LayerNorm, learned positions)."""
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_native(
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
            device="cpu",
        )
    )


def make_batch(cfg: DemoConfig, g: torch.Generator) -> torch.Tensor:
    """Random tokens with one random segment written twice at non-overlapping positions."""
    B, T, S = cfg.batch, cfg.seq_len, cfg.segment_len
    tokens = torch.randint(0, cfg.vocab, (B, T), generator=g)  # [B, T]
    segment = torch.randint(0, cfg.vocab, (B, S), generator=g)  # [B, S]
    first = torch.randint(0, T - 2 * S + 1, (B,), generator=g)  # first copy's start
    second = first + S + (torch.rand(B, generator=g) * (T - 2 * S - first + 1)).long()
    idx = torch.arange(S)
    rows = torch.arange(B)[:, None]
    tokens[rows, first[:, None] + idx] = segment
    tokens[rows, second[:, None] + idx] = segment
    return tokens


def next_token_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    logits = model(tokens[:, :-1])  # [B, T-1, V]
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )


def run(config: DemoConfig, out: Path, *, wandb: bool = False) -> dict:
    """Train with the Monitor attached; return the summary."""
    torch.manual_seed(config.seed)
    g = torch.Generator().manual_seed(config.seed)
    model = build_model(config)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    probe = make_batch(config, torch.Generator().manual_seed(10_000 + config.seed))
    sinks = ["local", "wandb"] if wandb else ["local"]
    start = time.perf_counter()
    with (
        dynmon.Monitor(
            model,
            run_dir=out,
            schedule=dynmon.every(config.look_every),  # regular looks: comparable distances
            metrics={"economy": None, "marginal_erank": None, "sharpness": dynmon.every(250)},
            loss_fn=next_token_loss,
            probe_batch=probe[:16],
            optimizer=opt,
            sinks=sinks,
            config=config,
        ) as mon
    ):
        for step in range(config.steps):
            loss = next_token_loss(model, make_batch(config, g))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            mon.step(step, loss=loss)
        elapsed = time.perf_counter() - start
        summary = {
            "final_loss": loss.item(),
            "steps_per_s": config.steps / elapsed,
            "events": [e.get("message", e["kind"]) for e in mon.events][:20],
        }
        mon.update_summary(summary)
    return summary
