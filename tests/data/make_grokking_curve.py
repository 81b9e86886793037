"""Record a real grokking curve for the event-detector tests (``grokking_curve.json``).

Modular addition (a + b) mod 53, inputs [a, b, =], train fraction 0.5, a one-layer transformer
(d_model 64, 4 heads, ReLU MLP 256, learned positions, no LayerNorm, loss at "=" only),
full-batch AdamW lr 3e-3, weight decay 1, betas (0.9, 0.98), 10 warm-up steps
(docs/packs.md#grokking).
Train and test loss and accuracy are logged every 10 steps. Pure PyTorch, CPU, about a minute:

    python tests/data/make_grokking_curve.py [--seed 0] [--steps 1500] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch import Tensor, nn


class OneLayer(nn.Module):
    """Embed + positions, one attention layer, one ReLU MLP, unembed (residual, no LayerNorm).

    TransformerLens layout and initialisation (every weight ~ N(0, (0.8/√d_model)²), no biases).
    """

    def __init__(self, vocab: int, n_out: int, d_model: int, n_heads: int, d_mlp: int) -> None:
        super().__init__()
        d, h, dh = d_model, n_heads, d_model // n_heads
        std = 0.8 / d**0.5

        def w(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.randn(*shape) * std)

        self.W_E, self.W_pos = w(vocab, d), w(3, d)
        self.W_Q, self.W_K, self.W_V, self.W_O = w(h, d, dh), w(h, d, dh), w(h, d, dh), w(h, dh, d)
        self.W_in, self.W_out, self.W_U = w(d, d_mlp), w(d_mlp, d), w(d, n_out)

    def forward(self, tokens: Tensor) -> Tensor:
        x = self.W_E[tokens] + self.W_pos  # (N, 3, D)
        q = torch.einsum("ntd,hde->nhte", x, self.W_Q)  # (N, H, 3, dh)
        k = torch.einsum("ntd,hde->nhte", x, self.W_K)
        v = torch.einsum("ntd,hde->nhte", x, self.W_V)
        scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5  # (N, H, 3, 3)
        causal = torch.ones(3, 3, dtype=torch.bool).tril()
        pattern = scores.masked_fill(~causal, float("-inf")).softmax(-1)
        z = pattern @ v  # (N, H, 3, dh)
        x = x + torch.einsum("nhte,hed->ntd", z, self.W_O)  # (N, 3, D)
        x = x + torch.relu(x @ self.W_in) @ self.W_out
        return x[:, -1] @ self.W_U  # (N, p): logits at "="


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--every", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).with_name("grokking_curve.json")))
    args = ap.parse_args()

    p, frac, lr, wd, warmup = 53, 0.5, 3e-3, 1.0, 10
    torch.manual_seed(args.seed)
    a, b = torch.cartesian_prod(torch.arange(p), torch.arange(p)).T  # (p²,), (p²,)
    tokens = torch.stack([a, b, torch.full_like(a, p)], dim=1)  # (p², 3)
    labels = (a + b) % p
    perm = torch.randperm(p * p)
    n_train = int(frac * p * p)
    tr, te = perm[:n_train], perm[n_train:]

    model = OneLayer(p + 1, p, d_model=64, n_heads=4, d_mlp=256)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warmup, 1.0))
    lossf = nn.functional.cross_entropy
    rows = []
    t0 = time.time()
    for step in range(args.steps + 1):
        if step % args.every == 0:
            with torch.no_grad():
                logits = model(tokens)  # (p², p)
                row = {"step": step}
                for name, idx in (("train", tr), ("test", te)):
                    row[f"{name}/loss"] = float(f"{float(lossf(logits[idx], labels[idx])):.5g}")
                    acc = (logits[idx].argmax(-1) == labels[idx]).double().mean()
                    row[f"{name}/acc"] = round(float(acc), 6)
                rows.append(row)
        if step == args.steps:
            break
        loss = lossf(model(tokens[tr]), labels[tr])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    meta = {
        "task": f"(a + b) mod {p}",
        "train_fraction": frac,
        "model": "1 layer, d_model 64, 4 heads, ReLU MLP 256, learned positions, no LayerNorm",
        "optimizer": f"full-batch AdamW lr {lr}, wd {wd}, betas (0.9, 0.98), warmup {warmup}",
        "seed": args.seed,
        "log_every": args.every,
        "seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
    }
    keys = ["step", "train/loss", "test/loss", "train/acc", "test/acc"]
    out = {"meta": meta, "columns": keys, "rows": [[r[k] for k in keys] for r in rows]}
    Path(args.out).write_text(json.dumps(out, separators=(",", ":")) + "\n")
    print(f"wrote {args.out}: {len(rows)} rows in {meta['seconds']} s")


if __name__ == "__main__":
    main()
