"""Factored vs dense QK/OV spectra of every head at GPT-2-small shapes, timed side by side.

Run: ``python benchmarks/bench_spectra.py`` (12 layers) or ``--quick`` (2 layers, smoke test).
Factored: one batched ``qk_svdvals`` and one ``ov_svdvals`` call on ``[L, H, D, dh]`` weights.
Dense: materialise each head's ``D x D`` QK and OV product (layer by layer) and take
``torch.linalg.svdvals``. On shared cores absolute times drift; the ratio is what matters.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from dynmon.metrics.spectral import ov_svdvals, qk_svdvals


def gpt2_heads(layers: int, heads: int, d_model: int, d_head: int, seed: int):
    """Random per-head weights with GPT-2's init scale (std 0.02), TransformerLens layout."""
    g = torch.Generator().manual_seed(seed)
    shape = (layers, heads, d_model, d_head)
    W_Q, W_K, W_V = (0.02 * torch.randn(shape, generator=g) for _ in range(3))  # [L, H, D, dh]
    W_O = 0.02 * torch.randn(layers, heads, d_head, d_model, generator=g)  # [L, H, dh, D]
    return W_Q, W_K, W_V, W_O


def factored(W_Q, W_K, W_V, W_O) -> torch.Tensor:
    """Both circuits' spectra from the factors: ``[2, L, H, dh]``."""
    return torch.stack([qk_svdvals(W_Q, W_K), ov_svdvals(W_V, W_O)])


def dense(W_Q, W_K, W_V, W_O) -> torch.Tensor:
    """Both circuits' top-dh spectra from the materialised ``D x D`` products: ``[2, L, H, dh]``."""
    dh = W_Q.shape[-1]
    out = []
    for A, B in ((W_Q, W_K.mT), (W_V, W_O)):
        per_layer = [torch.linalg.svdvals(a @ b)[..., :dh] for a, b in zip(A, B, strict=True)]
        out.append(torch.stack(per_layer))  # [L, H, dh]; a layer at a time bounds memory
    return torch.stack(out)


def timed(fn: Callable[[], torch.Tensor], repeats: int) -> tuple[list[float], torch.Tensor | None]:
    """Wall times of ``repeats`` runs, and the last result (None if no run)."""
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        if result.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times, result


def errors(s: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """Max |s − ref| relative to each matrix's σ₁, and per value over values > 1e-3·σ₁."""
    s, ref = s.double(), ref.double()
    top = ref[..., :1]
    rel_sigma1 = ((s - ref).abs() / top).max().item()
    keep = ref > 1e-3 * top
    rel_value = ((s - ref).abs() / ref)[keep].max().item()
    return rel_sigma1, rel_value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers instead of 12")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=5, help="factored timing repeats")
    parser.add_argument("--dense-repeats", type=int, default=1, help="dense timing repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = args.layers or (2 if args.quick else 12)
    H, D, dh = 12, 768, 64

    W = tuple(w.to(args.device) for w in gpt2_heads(layers, H, D, dh, args.seed))
    n = 2 * layers * H
    print(
        f"GPT-2-small shapes: {layers} layers x {H} heads, D={D}, dh={dh}, float32, "
        f"{n} circuits (QK+OV), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    with torch.no_grad():
        factored(*W)  # warm-up (LAPACK workspaces, thread pool)
        # factored runs before and after dense, so both see the same (shared-machine) load
        before, s_fac = timed(lambda: factored(*W), max(1, (args.repeats + 1) // 2))
        dense_times, s_den = timed(lambda: dense(*W), max(1, args.dense_repeats))
        after, _ = timed(lambda: factored(*W), args.repeats // 2)
        t_fac, t_den = statistics.median(before + after), statistics.median(dense_times)
        s_ref = factored(*(w.double() for w in W))  # float64 reference, factored (exact algebra)

    err_sigma1, err_value = errors(s_fac, s_den)
    print(
        f"factored: {t_fac:.3g} s  dense: {t_den:.3g} s  speedup: {t_den / t_fac:.0f}x  "
        f"max rel err: {err_value:.1e}"
    )
    print(
        f"  factored vs dense (top {dh} values): max |Δσ|/σ₁ {err_sigma1:.1e}, "
        f"max |Δσ|/σ over σ > 1e-3·σ₁ {err_value:.1e}"
    )
    for name, s in (("factored", s_fac), ("dense", s_den)):
        e1, e2 = errors(s, s_ref)
        print(f"  {name:8s} vs float64: max |Δσ|/σ₁ {e1:.1e}, max |Δσ|/σ {e2:.1e}")
    print(
        f"  per circuit: factored {1e3 * t_fac / n:.2f} ms, dense {1e3 * t_den / n:.1f} ms "
        f"(factored median of {len(before + after)}, dense median of {len(dense_times)})"
    )


if __name__ == "__main__":
    main()
