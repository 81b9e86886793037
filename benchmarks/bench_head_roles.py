"""Cost of one ``head_roles`` look at GPT-2-small shapes, as a ratio to one forward+backward.

A randomly initialised GPT-2 small (12 layers x 12 heads, D=768, vocabulary 50,257, context
1,024) from its config; one training forward+backward on an 8x128 batch against one look of
``Monitor(metrics=["head_roles"])`` on its own default probe (8 x 128 tokens, built at the first
look), timed alternately in the same process (median of ``--repeats`` pairs). The look runs on
the Monitor's default 1 thread; ``--look-threads N`` gives it N, ``--train-threads N`` the
training N (default: torch's, 2 on a 2-core machine). Also prints the copying score's
share (the W_U W_E product over the 50,257-token vocabulary). Run::

    python benchmarks/bench_head_roles.py [--quick] [--repeats 5]

Measured on a 2-core machine loaded by other jobs (load average 8-14), medians of 3 pairs: look
14.9 s vs forward+backward 27.8 s with 1 training thread (0.54x); 44.0 s vs 118.8 s with torch's
2 training threads (0.37x; contention slows the 2-thread step most). The copying score took
2.3-4.8 s of the look. Idle (load average ~1), 2 training threads, medians of 5: 3.02 s vs
3.36 s with the look's default 1 thread (0.90x), 1.72 s vs 3.29 s with 2 (0.52x).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import dynmon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 layers instead of 12")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--look-threads", type=int, default=1)
    parser.add_argument("--train-threads", type=int, default=None, help="default: torch's")
    args = parser.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel

    from dynmon.metrics import roles

    if args.train_threads:
        torch.set_num_threads(args.train_threads)
    layers = 2 if args.quick else 12
    cfg = GPT2Config(n_layer=layers, n_head=12, n_embd=768)  # vocab 50,257, context 1,024
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).train()  # random weights, no hub
    tokens = torch.randint(0, cfg.vocab_size, (8, 128), generator=torch.Generator().manual_seed(0))

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model(input_ids=tokens, labels=tokens).loss.backward()

    mon = dynmon.Monitor(
        model,
        sinks=[],
        schedule=lambda s: True,
        metrics=["head_roles"],
        options={"threads": args.look_threads},
        strict=True,
    )
    steps = iter(range(10**6))
    train_step()  # warm-up
    mon.step(next(steps))  # warm-up look; builds the probe
    t_step, t_look = [], []
    for _ in range(args.repeats):  # alternate, so load changes hit both alike
        t0 = time.perf_counter()
        train_step()
        t_step.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        mon.step(next(steps))
        t_look.append(time.perf_counter() - t0)
    mon.close()

    heads = dynmon.heads(model)
    W_V = torch.stack([h.W_V for h in heads])  # [L, H, D, dh]
    W_O = torch.stack([h.W_O for h in heads])  # [L, H, dh, D]
    W_E, W_U = model.transformer.wte.weight.detach(), model.lm_head.weight.detach().T
    threads = torch.get_num_threads()
    torch.set_num_threads(args.look_threads)
    t0 = time.perf_counter()
    roles.copying_score(W_E, W_U, W_V, W_O)
    t_copy = time.perf_counter() - t0
    torch.set_num_threads(threads)

    step, look = statistics.median(t_step), statistics.median(t_look)
    print(
        f"model: GPT-2 small shapes, {layers} layers x {heads[0].n_heads} heads, D=768, "
        f"V={cfg.vocab_size}; batch and probe 8x128; training {threads} threads, look "
        f"{args.look_threads}"
    )
    print(f"forward+backward: {step:.3f} s (median of {args.repeats})")
    print(f"head_roles look:  {look:.3f} s  = {look / step:.2f} x one forward+backward")
    print(f"  of which the copying score: {t_copy:.3f} s")


if __name__ == "__main__":
    main()
