"""The grokking pack's one flat, frozen config and its presets.

Presets (steps are optimizer updates = epochs, since training is full-batch; all use a float64
log-softmax, as Nanda et al., which removes the loss spikes a float32 loss shows once the train
loss reaches ~1e-7):

- ``quick``: p=53, train fraction 0.5, d_model 64, 4 heads, d_mlp 256, AdamW lr 3e-3, wd 1,
  betas (0.9, 0.98), warmup 10; stops 600 steps after grokking. Measured here (2 CPU cores,
  seeds 0/1/2, log every 10 steps): train accuracy >= 95% at 100/90/90 and 100% at 130/110/100,
  test accuracy >= 95% at 830/990/570 (delay 6.4/9.0/5.7x after 100% train accuracy); about 30
  steps/s with the monitor on an idle machine, so ~35-50 s a run.
- ``standard``: the same at lr 1e-3, up to 20k steps, stopping 2k steps after grokking.
  Measured here (seeds 0/1/2, without the monitor): train accuracy 100% at 270/220/230, test
  accuracy >= 95% at 13,250/8,380/2,340 (docs/packs.md#grokking has 3.0k-5.9k on its seeds: the
  grokking time varies a lot with the seed at this learning rate); ~40 steps/s, so 1-7 min a run.
- ``nanda``: the published configuration (Nanda et al. 2023): p=113, train fraction 0.3,
  d_model 128, 4 heads, d_mlp 512, lr 1e-3, wd 1, betas (0.9, 0.98), 40k full-batch steps.
  A GPU configuration (about 0.11 s per training step on 2 CPU cores): it runs on CUDA when
  torch sees a GPU (``device="auto"``), else on the CPU. It should reproduce the
  published curves: test loss peaks near step 1.4k, grokking (test loss falls sharply) near
  10k-14k (TransformerLens demo: test loss 0.86 at 13.8k and 0.005 at 14.5k), and the paper's
  three phases, memorisation (to ~1.4k), circuit formation (~1.4k-9.4k), cleanup (~9.4k-13k).
  Published fraction sweep (epoch at which test loss < 0.1): 0.3 -> 7.9k, 0.4 -> 3.1k,
  0.5 -> 956.

One ``seed`` seeds both the model initialisation and the train/test split.
"""

from __future__ import annotations

from dataclasses import dataclass

OPS = ("add", "sub", "mul", "div")  # here, not in data.py, so presets load without torch


@dataclass(frozen=True)
class GrokkingConfig:
    # task: (a op b) mod p on inputs [a, b, =]
    p: int = 53
    op: str = "add"  # add | sub | mul | div (mul, div over nonzero a, b: see data.py)
    train_frac: float = 0.5
    # model: one layer, learned positions, no LayerNorm, ReLU MLP (TransformerLens native)
    d_model: int = 64
    n_heads: int = 4
    d_mlp: int = 256
    bias: bool = False  # False: biases held at zero and not trained (as Nanda et al.)
    # optimizer: full-batch AdamW, linear warmup over `warmup` steps
    lr: float = 3e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    warmup: int = 10
    steps: int = 3000
    seed: int = 0  # model init and train/test split (two private generators)
    float64_loss: bool = True  # cast logits to float64 before the log-softmax (as Nanda et al.)
    # monitoring
    log_every: int = 10  # progress measures, losses, accuracies
    look_every: int = 50  # dynmon looks (plus 30 log-spaced early looks)
    sharpness_every: int = 100  # top Hessian eigenvalue of the train loss; 0 turns it off
    sharpness_batch: int = 512  # fixed train rows it is measured on; 0: the whole train set
    threshold: float = 0.95  # accuracy that marks memorisation (train) and grokking (test)
    stop_after_grok: int = 0  # stop this many steps after grokking is detected; 0: never
    device: str = "cpu"  # cpu, cuda, cuda:N, or auto (CUDA when torch sees a GPU, else CPU)
    threads: int = 0  # CPU intra-op threads for the loop; 0: picked from the model size (1 here)

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"op must be one of {OPS}, got {self.op!r}")
        if self.op in ("mul", "div") and not _is_prime(self.p):
            raise ValueError(f"op={self.op!r} needs a prime p (a group Z_p*), got p={self.p}")
        if self.p < 3:
            raise ValueError(f"p must be at least 3, got {self.p}")
        if not 0.0 < self.train_frac < 1.0:
            raise ValueError(f"train_frac must lie in (0, 1), got {self.train_frac}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}")
        if self.log_every < 1 or self.look_every < 1:
            raise ValueError("log_every and look_every must be positive")
        if self.threads < 0:
            raise ValueError(
                f"threads must be >= 0 (0: pick from the model size), got {self.threads}"
            )
        if self.device != "auto" and self.device.split(":")[0] not in ("cpu", "cuda", "mps"):
            raise ValueError(f"device must be cpu, cuda, cuda:N, mps or auto, got {self.device!r}")


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, int(n**0.5) + 1))


Config = GrokkingConfig

PRESETS: dict[str, GrokkingConfig] = {
    "quick": GrokkingConfig(steps=3000, stop_after_grok=600),
    "standard": GrokkingConfig(lr=1e-3, steps=20_000, stop_after_grok=2000),
    "nanda": GrokkingConfig(
        p=113,
        train_frac=0.3,
        d_model=128,
        d_mlp=512,
        lr=1e-3,
        steps=40_000,
        log_every=50,
        look_every=500,
        sharpness_every=1000,
        sharpness_batch=0,
        device="auto",
    ),
}
DEFAULT_PRESET = "quick"
