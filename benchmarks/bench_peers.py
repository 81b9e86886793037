"""dynmon side by side with the peers it replaces, on the same models, one table per piece.

- esd_alpha vs WeightWatcher (``analyze()``, its default power-law fit): alpha per weight and
  wall time, on a GPT-2-style model (4 layers, n_embd 128, nn.Linear layers as in nanoGPT) at
  random init and after a brief training.
- grad_noise vs an explicit per-sample loop (one ``.backward()`` per sample, float64), and its
  cost as a multiple of one training step (forward + backward + AdamW on the probe batch).
- llc vs devinterp (``devinterp.slt.llc.llc``) on a tiny LM with the same SGLD settings and
  draws, full batch (lr 1e-3, gamma 100, nbeta B/log B, 8 chains x 200 draws): both estimates
  with their standard errors over chains, and wall time.
- Hessian trace and density throughput (Hessian-vector products per second) on the tiny LM
  and the MLP: dynmon's per-vector loop vs its batched passes (reverse-over-reverse through
  the kept graph for blocks under 32 vectors, forward-over-reverse above) vs curvlinops'
  batched operator (vmap over columns); PyHessian's per-vector loop beside them; all timed
  interleaved, with ``RATIO`` lines at the end, and the share of a product that is per-op
  overhead (the most batching can save).
- SLQ density accuracy: the 1-Wasserstein distance between the estimated spectral density and
  the exact eigenvalues of the dense float64 Hessian, PyHessian's default budget (1 probe x 100
  Lanczos steps) vs dynmon's, on a 6.9k-parameter MLP and an 11k-parameter 2-layer LM,
  averaged over seeds.

Build the peers' venv first: ``bash benchmarks/setup_peers.sh``; then
``benchmarks/.peers-venv/bin/python benchmarks/bench_peers.py [--only esd,grad_noise,...]``.
Timings are medians of a few repeats in one process, side by side; on a shared machine they
move with its load, the ratios much less.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from torch import nn

from dynmon import adapters
from dynmon.hessian import HessianOperator, hessian_trace
from dynmon.linalg import slq_density
from dynmon.metrics.esd import esd_alpha_metric
from dynmon.metrics.gradnoise import gradient_noise, per_sample_grad_moments
from dynmon.metrics.llc import SGLDConfig, estimate_llc
from dynmon.metrics.spec import LookContext

SECTIONS = ("esd", "grad_noise", "llc", "hvp", "density")


def median_time(fn, repeats: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def markov_tokens(n: int, length: int, vocab: int, seed: int) -> torch.Tensor:
    """``[n, length]`` sequences from a random chain where each token has 3 likely successors."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.full((vocab, vocab), -4.0)
    for t in range(vocab):
        logits[t, torch.randperm(vocab, generator=g)[:3]] = 2.0
    probs = logits.softmax(-1)  # [V, V]
    seq = [torch.randint(0, vocab, (n,), generator=g)]
    for _ in range(length - 1):
        seq.append(torch.multinomial(probs[seq[-1]], 1, generator=g).squeeze(1))
    return torch.stack(seq, dim=1)  # [n, length]


# --------------------------------------------------------------------------------------------
# models


class Block(nn.Module):
    """A GPT-2 block with nn.Linear layers (nanoGPT's layout)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln_1, self.ln_2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.c_attn, self.attn_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.c_fc, self.mlp_proj = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        x = x + self.attn_proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp_proj(nn.functional.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    """GPT-2-style LM: learned positions, pre-norm blocks, untied head."""

    def __init__(self, vocab=256, ctx=64, d=128, layers=4, heads=4) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.h = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        for m in self.modules():  # GPT-2's initialisation
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))  # [B, T, V]


class TinyLM(nn.Module):
    """A 2-layer causal transformer LM (nn.TransformerEncoderLayer, no dropout)."""

    def __init__(self, vocab: int = 32, d: int = 20, heads: int = 4) -> None:
        super().__init__()
        self.vocab = vocab
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, 4 * d, 0.0, batch_first=True) for _ in range(2)
        )
        self.unembed = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # [B, T, D]
        mask = nn.Transformer.generate_square_subsequent_mask(tokens.shape[1], dtype=x.dtype)
        for layer in self.layers:
            x = layer(x, src_mask=mask, is_causal=True)
        return self.unembed(x)  # [B, T, V]


def lm_loss(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy, mean over tokens."""
    logits = model(tokens[:, :-1])
    return nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )


class MLP(nn.Module):
    """32 -> 64 -> 64 -> 10 with tanh: 6,922 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(32, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def mlp_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def train(model: nn.Module, loss_fn, batches, steps: int, lr: float) -> None:
    """A brief AdamW run (the Hessians of trained networks have their outliers)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for i in range(steps):
        opt.zero_grad()
        loss_fn(model, batches[i % len(batches)]).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)


def mlp_and_data(seed: int = 0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    teacher = nn.Linear(32, 10)
    x = torch.randn(512, 32, generator=g)
    y = teacher(x).argmax(1)
    model = MLP()
    train(model, mlp_loss, [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)], 300, 3e-3)
    return model, (x[:256], y[:256])


def tiny_lm_and_data(seed: int = 0, d: int = 20, train_steps: int = 200):
    torch.manual_seed(seed)
    data = markov_tokens(256, 17, 32, seed)
    model = TinyLM(d=d)
    train(model, lm_loss, list(data.split(32)), train_steps, 3e-3)
    return model, data[:32]


def nparams(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------
# 1. esd_alpha vs WeightWatcher


def bench_esd(quick: bool) -> None:
    import logging

    import weightwatcher as ww

    logging.getLogger("weightwatcher").setLevel(logging.ERROR)
    print("\n== esd_alpha vs WeightWatcher (GPT-2-style, 4 layers, n_embd 128) ==")
    torch.manual_seed(0)
    model = GPT()
    data = markov_tokens(512, 65, 256, seed=1)
    for state in ("random init", "trained"):
        if state == "trained":
            steps = 30 if quick else 150
            train(model, lm_loss, list(data.split(16)), steps, 3e-3)
            state = f"trained {steps} steps"
        model.eval()

        def ours():
            ctx = LookContext(step=0, model=model, weights=adapters.weights(model))
            with torch.no_grad():
                return esd_alpha_metric(ctx).scalars

        def theirs():
            with warnings.catch_warnings(), open(os.devnull, "w") as null:
                warnings.simplefilter("ignore")
                out, sys.stdout = sys.stdout, null
                try:
                    return ww.WeightWatcher(model=model).analyze(plot=False)
                finally:
                    sys.stdout = out

        t_ours = median_time(ours, 3)
        t_theirs = median_time(theirs, 1)
        mine, df = ours(), theirs()
        diffs = []
        for _, row in df.iterrows():
            layer = row["longname"] if "longname" in row and row["longname"] else row["name"]
            name = f"dynmon/esd_alpha/{layer}.weight"
            if name in mine and row["alpha"] > 0:
                diffs.append((layer, float(row["alpha"]), float(mine[name])))
        within = sum(abs(a - b) <= 0.05 for _, a, b in diffs)
        print(f"[{state}] layers WeightWatcher analysed: {len(df)}, matched by name: {len(diffs)}")
        print(f"  {'layer':28s} {'ww alpha':>9s} {'dynmon':>9s} {'|diff|':>8s}")
        for name, a, b in diffs:
            print(f"  {name:28s} {a:9.4f} {b:9.4f} {abs(a - b):8.1e}")
        print(
            f"  within 0.05: {within}/{len(diffs)} ({100 * within / max(len(diffs), 1):.0f}%);"
            f" time WeightWatcher {t_theirs:.2f} s, dynmon {t_ours:.3f} s:"
            f" {t_theirs / t_ours:.1f}x faster"
        )


# --------------------------------------------------------------------------------------------
# 2. grad_noise vs a per-sample loop


def bench_grad_noise(quick: bool) -> None:
    print("\n== grad_noise vs an explicit per-sample loop (tiny LM) ==")
    model, probe = tiny_lm_and_data(train_steps=50)
    print(f"model: {nparams(model)} parameters, probe batch {tuple(probe.shape)}")
    ref_model = copy.deepcopy(model).double().eval()
    rows = []
    for i in range(probe.shape[0]):
        ref_model.zero_grad()
        lm_loss(ref_model, probe[i : i + 1]).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in ref_model.parameters()]))
    G = torch.stack(rows).numpy()  # [n, P] float64
    mean = G.mean(0)
    var = G.var(0, ddof=1)
    exact = {
        "b_simple": var.sum() / (mean @ mean),
        "trace_cov": var.sum(),
        "grad_sq_norm": mean @ mean,
    }

    def ours():
        return gradient_noise(per_sample_grad_moments(model, lm_loss, probe, chunk_size=16))

    got = ours()
    for k, v in exact.items():
        print(
            f"  {k:14s} exact {v:.8e}  dynmon (float32 model) {float(got[k]):.8e}"
            f"  rel {abs(float(got[k]) - v) / abs(v):.1e}"
        )
    got64 = gradient_noise(per_sample_grad_moments(ref_model, lm_loss, probe))
    rel64 = max(abs(float(got64[k]) - v) / abs(v) for k, v in exact.items())
    print(f"  float64 model: max relative difference {rel64:.1e}")
    train_model = copy.deepcopy(model)
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-3)

    def train_step():
        opt.zero_grad()
        lm_loss(train_model, probe).backward()
        opt.step()

    t_step = median_time(train_step, 5)
    t_noise = median_time(ours, 3)
    print(
        f"  cost: grad_noise {t_noise * 1e3:.1f} ms, one training step {t_step * 1e3:.1f} ms:"
        f" {t_noise / t_step:.1f} training steps"
    )


# --------------------------------------------------------------------------------------------
# 3. llc vs devinterp


def bench_llc(quick: bool) -> None:
    from datasets import Dataset
    from devinterp.slt.llc import llc as devinterp_llc

    print("\n== llc vs devinterp (tiny LM, full batch, same SGLD settings and draws) ==")
    model, probe = tiny_lm_and_data()
    # lr 1e-3: with gamma 100 the chains relax in ~2/(lr·gamma) = 20 steps, so 200 draws are
    # stationary (at lr 1e-4 they drift all along and both tools' estimates wander with it)
    chains, draws = (4, 60) if quick else (8, 200)
    lr, gamma = 1e-3, 100.0
    nbeta = probe.shape[0] / math.log(probe.shape[0])
    print(
        f"model: {nparams(model)} parameters; batch {tuple(probe.shape)}; lr {lr}, nbeta"
        f" {nbeta:.2f}, gamma {gamma}, {chains} chains x {draws} draws, no burn-in"
    )
    cfg = SGLDConfig(lr=lr, nbeta=nbeta, localization=gamma, num_chains=chains, num_draws=draws)

    def ours():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return estimate_llc(
                model, lm_loss, probe, config=cfg, generator=torch.Generator().manual_seed(0)
            )

    def per_token(m, input_ids):  # devinterp's (batch, seq-1) per-token loss, our mean
        logits = m(input_ids[:, :-1])
        return nn.functional.cross_entropy(
            logits.transpose(1, 2), input_ids[:, 1:], reduction="none"
        )

    ds = Dataset.from_dict({"input_ids": probe.tolist()}).with_format("torch")

    def theirs():
        with (
            warnings.catch_warnings(),
            tempfile.TemporaryDirectory() as tmp,
            open(os.devnull, "w") as null,
        ):
            warnings.simplefilter("ignore")
            err, sys.stderr = sys.stderr, null
            try:
                return devinterp_llc(
                    copy.deepcopy(model),
                    ds,
                    {},
                    lr=lr,
                    n_beta=nbeta,
                    localization=gamma,
                    num_chains=chains,
                    num_draws=draws,
                    batch_size=probe.shape[0],
                    num_init_loss_batches=1,
                    loss_fn=per_token,
                    device="cpu",
                    output_path=os.path.join(tmp, "s.zarr"),
                )
            finally:
                sys.stderr = err

    t0 = time.perf_counter()
    res = ours()
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = theirs()
    t_theirs = time.perf_counter() - t0
    per = np.asarray(out["llc_per_chain"].values, dtype=float)
    theirs_mean, theirs_se = per.mean(), per.std(ddof=1) / math.sqrt(len(per))
    se = math.hypot(res.stderr, theirs_se)
    print(
        f"  dynmon    LLC {res.llc:8.3f} ± {res.stderr:.3f}  init loss {res.init_loss:.4f}"
        f"  time {t_ours:6.1f} s"
    )
    print(
        f"  devinterp LLC {theirs_mean:8.3f} ± {theirs_se:.3f}  init loss"
        f" {float(out['init_loss']):.4f}  time {t_theirs:6.1f} s"
    )
    print(
        f"  dynmon drift (second-half minus first-half estimate) {res.drift:+.3f},"
        f" converged: {res.converged}"
    )
    print(
        f"  difference {res.llc - theirs_mean:+.3f} = {abs(res.llc - theirs_mean) / se:.2f}"
        f" combined standard errors; dynmon {t_theirs / t_ours:.1f}x faster"
    )


# --------------------------------------------------------------------------------------------
# 4. trace and density throughput


def _curvlinops_operator(peer_model: nn.Module, data: tuple):
    from curvlinops import HessianLinearOperator

    params = [p for p in peer_model.parameters() if p.requires_grad]
    return HessianLinearOperator(
        peer_model, nn.CrossEntropyLoss(), params, [data], check_deterministic=False
    )


def bench_hvp(quick: bool) -> None:
    lm, probe = tiny_lm_and_data()
    mlp, mb = mlp_and_data()
    lm_data = (probe[:, :-1], probe[:, 1:].reshape(-1))
    cases = [
        ("tiny LM", lm.eval(), lm_loss, probe, _FlatLM(copy.deepcopy(lm)), lm_data),
        ("MLP", mlp, mlp_loss, mb, copy.deepcopy(mlp), mb),
    ]
    summary = []
    for case in cases:
        summary += _hvp_case(*case, num=64, repeats=3 if quick else 5)
    print(
        f"\n== trace/density throughput ratios, {torch.get_num_threads()} thread(s), measured side"
        f" by side (target >= 2x the loop); load {os.getloadavg()} =="
    )
    for line in summary:
        print(f"  RATIO {line}")


def _side_by_side(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Median wall and CPU seconds of each ``fns[k]()``, the cases interleaved within each
    repeat (after one warm-up each) so that a change in the machine's load hits them all alike.
    CPU time (this process's, all threads) moves less than wall time on a shared machine."""
    for fn in fns.values():
        fn()
    wall: dict = {k: [] for k in fns}
    cpu: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t)
            cpu[k].append(time.process_time() - c)
    med = statistics.median
    return {k: med(v) for k, v in wall.items()}, {k: med(v) for k, v in cpu.items()}


def _hvp_case(name, model, loss_fn, batch, peer_model, peer_data, num: int, repeats: int):
    """HVPs per second: dynmon's loop and batched passes, curvlinops, PyHessian; returns the
    ratio lines for the summary."""
    print(f"\n== Hessian trace/density throughput: HVPs per second ({name}) ==")
    print(f"model: {nparams(model)} parameters; trace: {num} probes (operator built in each)")

    def trace(block, batched, probes=num, **kw):
        def run():
            with warnings.catch_warnings():
                warnings.simplefilter("error", RuntimeWarning)  # a fallback would void the row
                hessian_trace(
                    model,
                    loss_fn,
                    batch,
                    num_probes=probes,
                    block_size=block,
                    batched=batched,
                    **kw,
                )

        return probes, run

    hpp = 96  # Hutch++ spends a third on each stage: 32-vector blocks
    fns = {
        "dynmon trace, per-vector loop (CPU default)": trace(1, False),
        "dynmon trace, batched rev-over-rev (16)": trace(16, True),
        "dynmon trace, batched fwd-over-rev (64)": trace(64, True),
        "dynmon hutch++ (96), per-vector loop": trace(1, False, hpp, method="hutch++"),
        "dynmon hutch++ (96), batched fwd-over-rev (32)": trace(None, True, hpp, method="hutch++"),
    }
    try:
        from curvlinops import hutchinson_trace as cl_trace

        A = _curvlinops_operator(peer_model, peer_data)

        def curvlinops_trace():
            with _sdpa_math():  # the fused CPU kernel has no forward-mode AD
                cl_trace(A, num)

        fns["curvlinops trace (vmap, all at once)"] = (num, curvlinops_trace)
    except Exception as exc:  # report, keep the rest of the table
        print(f"  curvlinops failed: {exc!r}")
    try:
        from pyhessian import hessian as PyHessian

        with _sdpa_math():
            h = PyHessian(
                copy.deepcopy(peer_model), nn.CrossEntropyLoss(), data=peer_data, cuda=False
            )

        def pyhessian_trace():
            with _sdpa_math():  # the fused CPU kernel has no double backward
                h.trace(maxIter=num, tol=0.0)

        fns["PyHessian trace (per-vector loop)"] = (num, pyhessian_trace)
    except Exception as exc:
        print(f"  PyHessian failed: {exc!r}")
    seconds, cpu_seconds = _side_by_side({k: f for k, (_, f) in fns.items()}, repeats)
    rates = {k: fns[k][0] / s for k, s in seconds.items()}
    cpu_rates = {k: fns[k][0] / s for k, s in cpu_seconds.items()}

    steps = 40
    loop_op = HessianOperator(model, loss_fn, batch)
    batched_op = HessianOperator(model, loss_fn, batch, batched=True)

    def density(A, probes, block):
        return lambda: slq_density(A, probes, steps, block_size=block)

    dens = {
        "dynmon density 4x40, one probe at a time": (4, density(loop_op, 4, 1)),
        "dynmon density 4x40, 4 probes batched": (4, density(batched_op, 4, None)),
        "dynmon density 32x40, one probe at a time": (32, density(loop_op, 32, 1)),
        "dynmon density 32x40, 32 probes batched": (32, density(batched_op, 32, None)),
    }
    seconds, cpu_seconds = _side_by_side({k: f for k, (_, f) in dens.items()}, max(1, repeats // 2))
    rates.update({k: dens[k][0] * steps / s for k, s in seconds.items()})
    cpu_rates.update({k: dens[k][0] * steps / s for k, s in cpu_seconds.items()})
    print(f"  {'':47s} {'wall':>8s} {'CPU time':>14s}")
    for k, r in rates.items():
        print(f"  {k:47s} {r:8.1f} {cpu_rates[k]:8.1f} HVP/s")

    split = _cost_split(model, loss_fn, batch)
    loop_full, loop_one, rev_full, rev_one = (split[k] for k in ("loop", "loop1", "rev", "rev1"))
    data_ratio = (rev_full - rev_one) / (loop_full - loop_one)  # data work per vector
    print(
        f"  cost split, CPU ms per product (16-vector blocks): loop {loop_full * 1e3:.2f} on the"
        f" probe batch, {loop_one * 1e3:.2f} on one sample (per-op overhead:"
        f" {loop_one / loop_full:.0%}); rev-over-rev {rev_full * 1e3:.2f} and"
        f" {rev_one * 1e3:.2f}. Batching cuts the overhead {loop_one / rev_one:.1f}x but the"
        f" work on the data, per vector, goes from {(loop_full - loop_one) * 1e3:.2f} to"
        f" {(rev_full - rev_one) * 1e3:.2f} ms ({data_ratio:.2f}x:"
        f" b-times larger tensors spill out of the cache); with the data work unchanged,"
        f" batching could reach at most"
        f" {loop_full / (loop_full - loop_one):.2f}x"
    )

    def ratio(label: str, fast: str, slow: str) -> str:
        return (
            f"{name}: {label}: {rates[fast] / rates[slow]:.2f}x wall,"
            f" {cpu_rates[fast] / cpu_rates[slow]:.2f}x CPU time"
        )

    loop = "dynmon trace, per-vector loop (CPU default)"
    lines = [
        ratio(
            "trace batched rev-over-rev (16) / loop",
            "dynmon trace, batched rev-over-rev (16)",
            loop,
        ),
        ratio(
            "trace batched fwd-over-rev (64) / loop",
            "dynmon trace, batched fwd-over-rev (64)",
            loop,
        ),
        ratio(
            "hutch++ batched fwd-over-rev (32) / loop",
            "dynmon hutch++ (96), batched fwd-over-rev (32)",
            "dynmon hutch++ (96), per-vector loop",
        ),
        ratio(
            "density 4x40 batched (4, rev-over-rev) / loop",
            "dynmon density 4x40, 4 probes batched",
            "dynmon density 4x40, one probe at a time",
        ),
        ratio(
            "density 32x40 batched (32, fwd-over-rev) / loop",
            "dynmon density 32x40, 32 probes batched",
            "dynmon density 32x40, one probe at a time",
        ),
    ]
    lines.append(
        f"{name}: per-op overhead {loop_one / loop_full:.0%} of a matvec (CPU time): ceiling of a"
        f" batching gain {loop_full / (loop_full - loop_one):.2f}x; data work per vector batched"
        f" / loop {data_ratio:.2f}x"
    )
    if "curvlinops trace (vmap, all at once)" in rates:
        lines.append(
            ratio("curvlinops trace / dynmon loop", "curvlinops trace (vmap, all at once)", loop)
        )
    return lines


def _cost_split(model, loss_fn, batch, b: int = 16) -> dict:
    """CPU seconds per product of the loop and the reverse-over-reverse pass (blocks of ``b``),
    on the probe batch and on its first sample alone: on one sample a product is nearly all
    per-op overhead (dispatch, autograd bookkeeping, allocation), the part batching shares.
    The rest, the work on the data, grows per vector in a batched pass on these CPUs: e.g. a
    512x20 @ 20x80 matmul took 1.4x longer per vector as one 8192-row product (16 vectors),
    and bmm of 16x5 @ 5x16 attention matrices 75 ns a matrix at 128 of them, 118 ns at 2048
    (one thread, measured under load)."""
    one = batch[:1] if isinstance(batch, torch.Tensor) else tuple(t[:1] for t in batch)
    ops = {
        k: HessianOperator(model, loss_fn, x, batched=True) for k, x in (("", batch), ("1", one))
    }
    V = torch.randn(ops[""].shape[0], b, generator=torch.Generator().manual_seed(0))
    fns = {}
    for k, op in ops.items():
        fns["loop" + k] = lambda op=op: [op.matvec(v) for v in V.T]
        fns["rev" + k] = lambda op=op: op.matmat(V)
    _, cpu = _side_by_side(fns, 5)
    return {k: s / b for k, s in cpu.items()}


class _FlatLM(nn.Module):
    """The LM with [N, V] logits, for peers whose criterion takes (outputs, targets)."""

    def __init__(self, m: nn.Module) -> None:
        super().__init__()
        self.m = m.eval()

    def forward(self, x):
        out = self.m(x)
        return out.reshape(-1, out.shape[-1])


def _sdpa_math():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH)


# --------------------------------------------------------------------------------------------
# 5. density accuracy


def _dense_hessian(op: HessianOperator, block: int = 64) -> torch.Tensor:
    n = op.shape[0]
    cols = []
    for i in range(0, n, block):
        E = torch.zeros(n, min(block, n - i), dtype=op.dtype)  # [n, b] unit vectors
        idx = torch.arange(E.shape[1])
        E[i + idx, idx] = 1.0
        cols.append(op.matmat(E))
    H = torch.cat(cols, 1)
    return (H + H.T) / 2


def _exact_eigenvalues(name: str, model: nn.Module, op: HessianOperator) -> np.ndarray:
    """Eigenvalues of the dense float64 Hessian, cached on disk by the weights' checksum (the
    LM's takes minutes on a loaded 2-core machine)."""
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    tag = f"{name}-{flat.numel()}-{float(flat.double().square().sum()):.12e}"
    cache = os.path.join(tempfile.gettempdir(), "dynmon-bench-peers")
    os.makedirs(cache, exist_ok=True)
    path = os.path.join(cache, tag.replace("+", "p") + ".npy")
    if os.path.exists(path):
        return np.load(path)
    eigs = torch.linalg.eigvalsh(_dense_hessian(op)).numpy()
    np.save(path, eigs)
    return eigs


def _pyhessian_density(model, loss_inputs, criterion, seed: int, iters: int = 100):
    from pyhessian import hessian as PyHessian

    def eig(T, eigenvectors=True):  # the removed torch.eig, which PyHessian's density calls
        w, V = torch.linalg.eigh(T)
        return torch.stack([w, torch.zeros_like(w)], 1), V  # [n, 2] (real, imaginary), vectors

    torch.eig = eig
    torch.manual_seed(seed)
    with _sdpa_math():
        h = PyHessian(model, criterion, data=loss_inputs, cuda=False)
        nodes, weights = h.density(iter=iters, n_v=1)
    return np.asarray(nodes[0]), np.asarray(weights[0])


def bench_density(quick: bool) -> None:
    from scipy.stats import wasserstein_distance

    print("\n== SLQ density: 1-Wasserstein distance to the dense Hessian's eigenvalues ==")
    seeds = range(2 if quick else 5)
    mlp, mb = mlp_and_data()
    lm, probe = tiny_lm_and_data(d=20)
    cases = [
        (
            "MLP",
            mlp.double(),
            mlp_loss,
            (mb[0].double(), mb[1]),
            nn.CrossEntropyLoss(),
            (mb[0].double(), mb[1]),
            lambda m: m,
        ),
        (
            "LM",
            lm.double().eval(),
            lm_loss,
            probe,
            nn.CrossEntropyLoss(),
            (probe[:, :-1], probe[:, 1:].reshape(-1)),
            _FlatLM,
        ),
    ]
    budgets = [(4, 40), (1, 100), (2, 100), (4, 100), (8, 60)]
    for name, model, loss_fn, batch, crit, ph_data, wrap in cases:
        op = HessianOperator(model, loss_fn, batch)
        t = time.perf_counter()
        eigs = _exact_eigenvalues(name, model, op)
        width = eigs[-1] - eigs[0]
        print(
            f"{name}: {op.shape[0]} parameters, exact eigenvalues in {time.perf_counter() - t:.0f}"
            f" s (dense float64 Hessian, cached), spectrum [{eigs[0]:.3g}, {eigs[-1]:.3g}]"
        )
        errs = {}
        for p, s in budgets:
            errs[f"dynmon {p}x{s}"] = [
                _w1(slq_density(op, p, s, generator=torch.Generator().manual_seed(k)), eigs)
                for k in seeds
            ]
        try:
            errs["PyHessian 1x100 (default)"] = []
            for k in seeds:
                nodes, weights = _pyhessian_density(wrap(copy.deepcopy(model)), ph_data, crit, k)
                errs["PyHessian 1x100 (default)"].append(
                    wasserstein_distance(nodes, eigs, np.abs(weights) / np.abs(weights).sum())
                )
        except Exception as exc:
            print(f"  PyHessian failed: {exc!r}")
            errs.pop("PyHessian 1x100 (default)")
        for k, v in errs.items():
            print(
                f"  {k:28s} W1 {np.mean(v):.3e} ± {np.std(v) / math.sqrt(len(v)):.1e}"
                f"  ({np.mean(v) / width:.2e} of the spectrum's width)"
            )


def _w1(nw, eigs) -> float:
    """W1 between an SLQ quadrature (nodes, weights) and the exact eigenvalues (equal weights)."""
    from scipy.stats import wasserstein_distance

    nodes, weights = (x.reshape(-1).numpy() for x in nw)
    keep = weights > 0
    return wasserstein_distance(nodes[keep], eigs, weights[keep] / weights[keep].sum())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    ap.add_argument("--quick", action="store_true", help="fewer steps, draws and seeds")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s); os.getloadavg {os.getloadavg()}")
    for name in args.only.split(","):
        {
            "esd": bench_esd,
            "grad_noise": bench_grad_noise,
            "llc": bench_llc,
            "hvp": bench_hvp,
            "density": bench_density,
        }[name](args.quick)


if __name__ == "__main__":
    main()
