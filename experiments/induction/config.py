"""The induction pack's one flat, frozen config and its presets.

The task (docs/packs.md#induction, measured configuration): sequences of ``seq_len`` uniform
random tokens from a vocabulary of ``vocab``, into which one random segment of ``segment_len``
tokens is written ``repeats`` times at random non-overlapping positions; next-token loss on every
position.
The model is a TransformerLens 4 native attention-only transformer (learned positions, no
LayerNorm) with ``n_layers`` layers, trained with AdamW at a constant learning rate.

Presets (all V=64, T=64, a 24-token segment written twice, d_model 64, 4 heads, batch 64,
AdamW lr 3e-3, wd 0.1, betas (0.9, 0.999), embeddings initialised N(0, 1)):

- ``quick``: 2 layers, 1,500 steps, sharpness every 500 steps; the "must show" run, under 3
  minutes on 2 CPU cores.
- ``1-layer``, ``2-layer``, ``3-layer``, ``4-layer``: 3,000 steps each, for the lead-time study
  across depth (the one-layer model is the control: it cannot form an induction head).

Why ``embed_init=1``: with TransformerLens' GPT-2 init (every weight N(0, 0.1²) at d_model 64)
the 2-layer model sat on the skip-trigram plateau (repeated-token loss ≈ 3.4, induction score
0.06) for 2 of 3 seeds past 3,000 steps; with N(0, 1) embeddings, as a plain ``nn.Embedding``
(and docs/packs.md#induction's measured model) has, induction heads formed at steps 600-700 on seeds
0, 1, 2 (induction score 0.67-0.73 at 1,500 steps).
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class InductionConfig:
    # task: random tokens with a random segment written `repeats` times
    vocab: int = 64
    seq_len: int = 64
    segment_len: int = 24
    repeats: int = 2
    # model: attention-only, learned positions, no LayerNorm (TransformerLens native)
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    # std of the token and positional embeddings at initialisation (PyTorch's nn.Embedding
    # default); 0 keeps TransformerLens' GPT-2 init (0.8/sqrt(d_model) = 0.1 at d_model 64)
    embed_init: float = 1.0
    # optimizer: AdamW, constant learning rate
    batch: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    steps: int = 1500
    seed: int = 0  # model init (TransformerLens seed), training data, probe set (own generators)
    # monitoring
    probe_size: int = 128  # fixed probe sequences the task metrics are measured on
    log_every: int = 10  # task metrics (probe losses, ICL, induction/previous-token/copying)
    look_every: int = 25  # dynmon looks (erank, marginal erank, subspace distance)
    sharpness_every: int = 500  # top Hessian eigenvalue of the probe loss; 0 turns it off
    sharpness_batch: int = 16  # probe sequences the sharpness is measured on
    head_threshold: float = 0.4  # score that marks an induction / previous-token head
    stable_frac: float = 0.25  # subspace-stabilisation threshold, a fraction of the peak
    device: str = "cpu"
    threads: int = 0  # CPU intra-op threads for the loop; 0: picked from the model size (1 here)

    def __post_init__(self) -> None:
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if not 1 <= self.n_layers <= 12:
            raise ValueError(f"n_layers must lie in 1..12, got {self.n_layers}")
        if self.repeats < 2 or self.segment_len < 2:
            raise ValueError(
                f"need repeats >= 2 and segment_len >= 2 for anything to repeat, got "
                f"repeats={self.repeats}, segment_len={self.segment_len}"
            )
        if self.repeats * self.segment_len > self.seq_len:
            raise ValueError(
                f"{self.repeats} copies of a {self.segment_len}-token segment do not fit in "
                f"seq_len={self.seq_len}"
            )
        if self.vocab < 2 or self.batch < 1 or self.probe_size < 1 or self.steps < 1:
            raise ValueError("vocab >= 2, batch, probe_size and steps >= 1 are required")
        if self.log_every < 1 or self.look_every < 1 or self.sharpness_every < 0:
            raise ValueError("log_every and look_every must be positive, sharpness_every >= 0")
        if self.threads < 0:
            raise ValueError(
                f"threads must be >= 0 (0: pick from the model size), got {self.threads}"
            )
        if self.embed_init < 0:
            raise ValueError(f"embed_init is a standard deviation, >= 0; got {self.embed_init}")
        if not 0.0 < self.stable_frac < 1.0:
            raise ValueError(f"stable_frac must lie in (0, 1), got {self.stable_frac}")
        if not 1 <= self.sharpness_batch <= self.probe_size:
            raise ValueError("sharpness_batch must lie in 1..probe_size")


Config = InductionConfig

_DEPTH = InductionConfig(steps=3000)
PRESETS: dict[str, InductionConfig] = {
    "quick": InductionConfig(),
    "1-layer": replace(_DEPTH, n_layers=1),
    "2-layer": replace(_DEPTH, n_layers=2),
    "3-layer": replace(_DEPTH, n_layers=3),
    "4-layer": replace(_DEPTH, n_layers=4),
}
DEFAULT_PRESET = "quick"
