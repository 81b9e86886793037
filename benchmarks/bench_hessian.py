"""Hessian-vector products (HVPs) to the top Hessian eigenvalue: Lanczos vs power iteration; and
the cost of one sharpness look as a ratio to one training step.

Model: a 2-layer causal transformer LM (``nn.TransformerEncoderLayer``, d_model 32, 4 heads,
vocabulary 32, ~27k parameters), trained briefly with AdamW on sequences from a random sparse
Markov chain so the Hessian has the outliers of a trained network; one fixed probe batch.
Eigenvalues in float64, against a reference from Lanczos run to a 1e-10 Ritz residual. Both
methods start from the same vector; each is run with its stopping rule off and its estimate is
recorded after every HVP, so "HVPs to 1e-3" is measured against the truth, not the method's own
rule; the HVPs each method's own stopping rule (tol 1e-3) spends are reported beside it. The
timing part uses the float32 model: one ``sharpness`` look with default options against one
forward + backward + AdamW step on the same batch.

Run: python benchmarks/bench_hessian.py [--quick] [--threads N]
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
import warnings

import torch
from torch import nn

from dynmon.hessian import HessianOperator
from dynmon.linalg import ConvergenceWarning, lanczos_eigenvalues, power_iteration
from dynmon.metrics.curvature import sharpness_metric
from dynmon.metrics.spec import LookContext

VOCAB, D_MODEL, HEADS, LAYERS = 32, 32, 4, 2
TARGET = 1e-3


class LM(nn.Module):
    """A small pre-norm causal transformer LM."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                D_MODEL, HEADS, 4 * D_MODEL, 0.1, batch_first=True, norm_first=True
            )
            for _ in range(LAYERS)
        )
        self.unembed = nn.Linear(D_MODEL, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # [B, T, D]
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1])
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        return self.unembed(x)  # [B, T, V]


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy."""
    logits = model(tokens[:, :-1])  # [B, T-1, V]
    return nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))


def markov_batches(n: int, batch: int, length: int, g: torch.Generator) -> list[torch.Tensor]:
    """Sequences from a random chain where each token has 3 likely successors."""
    logits = torch.full((VOCAB, VOCAB), -4.0)
    for t in range(VOCAB):
        logits[t, torch.randperm(VOCAB, generator=g)[:3]] = 2.0
    probs = logits.softmax(-1)  # [V, V]
    out = []
    for _ in range(n):
        seq = [torch.randint(0, VOCAB, (batch,), generator=g)]
        for _ in range(length - 1):
            seq.append(torch.multinomial(probs[seq[-1]], 1, generator=g).squeeze(1))
        out.append(torch.stack(seq, dim=1))  # [B, T]
    return out


def train(model: nn.Module, batches: list[torch.Tensor]) -> torch.optim.Optimizer:
    """AdamW over the batches; returns the optimizer (its state is part of a training step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for tokens in batches:
        opt.zero_grad(set_to_none=True)
        lm_loss(model, tokens).backward()
        opt.step()
    return opt


def hvps_to(history: torch.Tensor, ref: float, tol: float) -> int | None:
    """HVPs after which the estimate stays within ``tol`` relative error (None: never)."""
    err = (history - ref).abs() / abs(ref)  # [num_matvecs]
    bad = (err > tol).nonzero()
    first_ok = 0 if bad.numel() == 0 else int(bad[-1]) + 1
    return first_ok + 1 if first_ok < err.numel() else None


def median_time(fn, repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fmt(x: int | None, budget: int) -> str:
    """An HVP count, or ">budget" when the method never got there."""
    return f">{budget}" if x is None else str(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one start vector, fewer HVPs")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    steps, seeds, budget = (400, 1, 300) if args.quick else (400, 3, 600)

    with torch.random.fork_rng():  # model init and dropout draw from a seeded global RNG
        torch.manual_seed(0)
        model = LM()
        batches = markov_batches(steps, 16, 25, g)
        train(model, batches)
    probe = markov_batches(1, 16, 25, g)[0]
    n_params = sum(p.numel() for p in model.parameters())

    # ---- HVPs to the top eigenvalue, float64
    model64 = copy.deepcopy(model).double()
    op = HessianOperator(model64, lm_loss, probe)
    ref = lanczos_eigenvalues(op, 2, tol=1e-10, max_iter=400)
    lam1, lam2 = (float(x) for x in ref.eigenvalues)
    print(
        f"model: 2-layer transformer LM, d_model {D_MODEL}, {HEADS} heads, vocab {VOCAB},"
        f" {n_params} params, trained {steps} AdamW steps; probe batch {tuple(probe.shape)};"
        f" float64; {torch.get_num_threads()} thread(s)"
    )
    print(
        f"reference: λ1 = {lam1:.6g}, λ2 = {lam2:.6g} (gap ratio λ2/λ1 = {lam2 / lam1:.3f});"
        f" Lanczos to 1e-10 residual, {ref.num_matvecs} HVPs"
    )
    ratios = []
    for seed in range(seeds):
        v0 = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(100 + seed))
        v0 = (v0 / v0.norm()).double()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            lan = lanczos_eigenvalues(op, 1, tol=0.0, max_iter=min(budget, 150), v0=v0)
            pw = power_iteration(op, 1, tol=0.0, max_iter=budget, v0=v0)
            lan_own = lanczos_eigenvalues(op, 1, tol=TARGET, max_iter=budget, v0=v0)
            pw_own = power_iteration(op, 1, tol=TARGET, max_iter=budget, v0=v0)
        n_lan = hvps_to(lan.history[:, 0], lam1, TARGET)
        n_pw = hvps_to(pw.history[:, 0], lam1, TARGET)
        err_lan = abs(float(lan_own.eigenvalues[0]) - lam1) / lam1
        err_pw = abs(float(pw_own.eigenvalues[0]) - lam1) / lam1
        print(
            f"start vector {seed}: HVPs to {TARGET:g} relative error: Lanczos"
            f" {fmt(n_lan, min(budget, 150))}, power {fmt(n_pw, budget)}"
        )
        print(
            f"  own stopping rule (tol {TARGET:g}): Lanczos {lan_own.num_matvecs} HVPs"
            f" (true error {err_lan:.1e}), power {pw_own.num_matvecs} HVPs"
            f" (true error {err_pw:.1e})"
        )
        if seed == 0:
            marks = [m for m in (5, 10, 20, 40, 80, 160, 320, 600) if m <= pw.num_matvecs]
            cells = []
            for m in marks:
                e_l = abs(float(lan.history[min(m, lan.num_matvecs) - 1, 0]) - lam1) / lam1
                e_p = abs(float(pw.history[m - 1, 0]) - lam1) / lam1
                cells.append(f"{m}: {e_l:.0e} / {e_p:.0e}")
            print("  relative error after k HVPs (Lanczos / power): " + ", ".join(cells))
        if n_lan is not None:  # power never within budget: count budget + 1 (a lower bound)
            ratios.append((n_pw if n_pw is not None else budget + 1) / n_lan)
    ratio = statistics.median(ratios) if ratios else math.nan
    print(
        f"HVP ratio (power / Lanczos, to {TARGET:g} true relative error, median over"
        f" {seeds} start vector(s)): {ratio:.1f}x  (target >= 3x)"
    )

    # ---- one sharpness look vs one training step, float32
    tokens = batches[-1]
    opt = train(model, [tokens])  # a live optimizer with state

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        lm_loss(model, tokens).backward()
        opt.step()

    look_gen = torch.Generator().manual_seed(1)
    looks: list = []

    def look() -> None:
        ctx = LookContext(
            step=0,
            model=model,
            loss_fn=lm_loss,
            probe_batch=tokens,
            optimizer=opt,
            generator=look_gen,
        )
        looks.append(sharpness_metric(ctx))

    with torch.random.fork_rng():
        torch.manual_seed(1)
        train_step()
        t_step = median_time(train_step, 20)
    t_look = median_time(look, 5)
    hvp_op = HessianOperator(model, lm_loss, tokens)
    v = torch.randn(hvp_op.shape[0], generator=look_gen)
    t_hvp = median_time(lambda: hvp_op.matvec(v), 20)
    sharp = float(looks[-1].scalars["dynmon/sharpness"])
    eos = float(looks[-1].scalars["dynmon/eos/ratio"])
    print(
        f"training step (forward + backward + AdamW, float32, batch {tuple(tokens.shape)}):"
        f" {t_step * 1e3:.1f} ms; one HVP: {t_hvp * 1e3:.1f} ms = {t_hvp / t_step:.2f} steps"
    )
    print(
        f"sharpness look (default options: Lanczos tol 1e-3, float32): {t_look * 1e3:.0f} ms"
        f" = {t_look / t_step:.1f} training steps  (sharpness on that batch {sharp:.4g},"
        f" eos ratio {eos:.3g})"
    )


if __name__ == "__main__":
    main()
