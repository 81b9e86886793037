"""Cost of one look at scale: time, peak extra memory and memory over looks, side by side.

Attention modules only (plain ``nn.Linear`` q/k/v/o projections, random weights std 0.02):
  (a) GPT-2-small    12 layers x 12 heads, D 768, dh 64 (float32)
  (b) LLaMA-1B-like  16 layers, 32 query / 8 key-value heads, D 2048, dh 64 (float32)
  (c) LLaMA-7B-like  32 layers x 32 heads, D 4096, dh 128 (bfloat16: in float32 the weights
      and the two factor copies subspace drift keeps would need 26 GB)
For each: the first look, the median of later looks (the weights move a little between looks),
the peak extra RSS during a look over the RSS before it (the first and second looks keep a new
copy of the factors, the drift state; "transient" is the part freed again by the look's end), and
RSS growth over 10 looks after the second. In the same run it times the unavoidable arithmetic:
the Gram matrices ``AᵀA`` of all factors (one batched matmul per layer over its 4 x H factors,
same threads as the look) and prints look time / that time.

Run: ``python benchmarks/bench_scale.py [--configs a,b,c] [--looks 12] [--presets economy,full]
[--device cpu|cuda] [--dtype auto|float32|bfloat16] [--threads N]``.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass

import torch
from torch import nn

import dynmon


@dataclass(frozen=True)
class Shape:
    name: str
    layers: int
    heads: int
    kv_heads: int
    d_model: int
    d_head: int
    dtype: torch.dtype


SHAPES = {
    "a": Shape("GPT-2-small", 12, 12, 12, 768, 64, torch.float32),
    "b": Shape("LLaMA-1B-like", 16, 32, 8, 2048, 64, torch.float32),
    "c": Shape("LLaMA-7B-like", 32, 32, 32, 4096, 128, torch.bfloat16),
}


class Attention(nn.Module):
    """Separate q/k/v/o projections (what LLaMA-style models have), grouped K/V allowed."""

    def __init__(self, s: Shape, dtype: torch.dtype, device: str) -> None:
        super().__init__()
        self.num_heads, self.head_dim = s.heads, s.d_head
        kw = {"bias": False, "dtype": dtype, "device": device}
        self.q_proj = nn.Linear(s.d_model, s.heads * s.d_head, **kw)
        self.k_proj = nn.Linear(s.d_model, s.kv_heads * s.d_head, **kw)
        self.v_proj = nn.Linear(s.d_model, s.kv_heads * s.d_head, **kw)
        self.o_proj = nn.Linear(s.heads * s.d_head, s.d_model, **kw)
        with torch.no_grad():
            for p in self.parameters():
                p.normal_(0.0, 0.02)


def build(s: Shape, dtype: torch.dtype, device: str) -> nn.Module:
    torch.manual_seed(0)
    return nn.ModuleList(Attention(s, dtype, device) for _ in range(s.layers))


def rss() -> int:
    """Resident set size in bytes (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


class PeakRSS:
    """Samples RSS every few milliseconds in a thread; ``peak`` after the block."""

    def __enter__(self) -> PeakRSS:
        self.peak, self._stop = rss(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())


def gram_reference(model: nn.Module, device: str) -> float:
    """Seconds for the Gram matrices of every factor: one batched matmul per layer."""
    total = 0.0
    for hw in dynmon.adapters.iter_heads(model):
        F = torch.cat([hw.W_Q, hw.W_K[:: hw.n_heads // (hw.n_kv_heads or hw.n_heads)]])
        F = torch.cat([F, hw.W_V[:: hw.n_heads // (hw.n_kv_heads or hw.n_heads)], hw.W_O.mT])
        F = F.float()  # [4H, D, dh] (fewer with grouped K/V), the look's working precision
        _sync(device)
        t0 = time.perf_counter()
        F.mT @ F
        _sync(device)
        total += time.perf_counter() - t0
    return total


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def attention_bytes(model: nn.Module) -> int:
    return sum(p.nbytes for p in model.parameters())


def measure(s: Shape, preset: str, looks: int, dtype: torch.dtype, device: str, threads: int):
    model = build(s, dtype, device)
    weights = attention_bytes(model)
    mon = dynmon.Monitor(
        model, sinks=[], schedule=lambda step: True, metrics=preset, options={"threads": threads}
    )
    times, peaks, transient, after = [], [], [], []
    for step in range(looks):
        if step:
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.0 + 1e-3)  # the weights move, so drift has work to do
        before = rss()
        with PeakRSS() as peak:
            _sync(device)
            t0 = time.perf_counter()
            mon.step(step, loss=torch.tensor(1.0, device=device))
            _sync(device)
            times.append(time.perf_counter() - t0)
        peaks.append(peak.peak - before)
        after.append(rss())
        transient.append(peak.peak - max(before, after[-1]))  # freed again by the look's end
        print(
            f"    look {step}: {times[-1]:.2f} s, peak extra {peaks[-1] / 2**20:.0f} MiB "
            f"(kept {(after[-1] - before) / 2**20:.0f} MiB: the drift state's factor copies; "
            f"transient {transient[-1] / 2**20:.0f} MiB)",
            flush=True,
        )
    mon.close()
    with dynmon.monitor._intra_op_threads(threads):
        ref = min(gram_reference(model, device) for _ in range(2))
    later = times[2:] or times[1:] or times
    growth = (after[-1] - after[min(2, len(after) - 1)]) / after[min(2, len(after) - 1)]
    return {
        "first": times[0],
        "later": statistics.median(later),
        "peak_first": peaks[0] / weights,
        "peak_second": peaks[1] / weights if len(peaks) > 1 else float("nan"),
        "peak_later": max(peaks[2:] or peaks) / weights,
        "transient": max(transient) / weights,
        "growth": growth,
        "gram": ref,
        "weights_mib": weights / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--configs", default="a,b,c")
    parser.add_argument("--presets", default="economy,full")
    parser.add_argument("--looks", type=int, default=12)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of a look")
    args = parser.parse_args()
    print(
        f"device {args.device}, {torch.get_num_threads()} training threads, look threads "
        f"{args.threads}"
    )
    for c in args.configs.split(","):
        s = SHAPES[c]
        dtype = s.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
        for preset in args.presets.split(","):
            print(
                f"({c}) {s.name}: {s.layers} layers x {s.heads} heads ({s.kv_heads} kv), "
                f"D {s.d_model}, dh {s.d_head}, {dtype}, {preset}",
                flush=True,
            )
            r = measure(s, preset, args.looks, dtype, args.device, args.threads)
            print(
                f"  weights {r['weights_mib']:.0f} MiB | first look {r['first']:.2f} s, later "
                f"{r['later']:.2f} s | Gram of all factors {r['gram']:.2f} s -> later look = "
                f"{r['later'] / r['gram']:.2f} x Gram | peak extra RSS / attention weights: "
                f"first {r['peak_first']:.2f}, second {r['peak_second']:.2f}, later "
                f"{r['peak_later']:.2f} (transient, any look: {r['transient']:.2f}) | RSS growth "
                f"over looks 3..{args.looks}: "
                f"{100 * r['growth']:+.1f}%",
                flush=True,
            )


if __name__ == "__main__":
    main()
