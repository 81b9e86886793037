"""Cost of one monitor look at GPT-2-small shapes, as a ratio to one training forward+backward.

Builds a randomly initialised GPT-2 (12 layers, 12 heads, D=768) from its config, times one
forward+backward on an 8x128 batch and one `economy` and one `full` look of the Monitor, side by
side in the same process, and prints the ratios.
Run: python benchmarks/bench_look.py [--quick] [--look-threads N]
"""

from __future__ import annotations

import argparse

import torch
from bench_hessian import median_time  # run as a script: benchmarks/ is on sys.path

import dynmon


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="2 layers instead of 12")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--look-threads", type=int, default=1, help="CPU threads of a look (default 1)"
    )
    args = parser.parse_args()

    from transformers import GPT2Config, GPT2LMHeadModel

    layers = 2 if args.quick else 12
    cfg = GPT2Config(n_layer=layers, n_head=12, n_embd=768, n_positions=128)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(cfg).to(args.device)  # random weights, no hub
    model.train()
    tokens = torch.randint(0, cfg.vocab_size, (8, 128), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)

    def train_step() -> None:
        model.zero_grad(set_to_none=True)
        model(tokens, labels=tokens).loss.backward()
        sync()

    train_step()  # warm-up, and leaves .grad in place for grad_norm
    t_step = median_time(train_step, args.repeats)

    results = {}
    for preset in ("economy", "full"):
        mon = dynmon.Monitor(
            model,
            sinks=[],
            schedule=lambda s: True,
            metrics=preset,
            strict=True,
            options={"threads": args.look_threads},
        )
        mon.step(0)  # warm-up look (also the reference for subspace distances)
        counter = iter(range(1, 1000))
        results[preset] = median_time(
            lambda m=mon, c=counter: (m.step(next(c)), sync()), args.repeats
        )
        mon.close()

    heads = dynmon.heads(model)
    print(
        f"model: GPT-2 shapes, {layers} layers x {heads[0].n_heads} heads, D=768, dh=64; "
        f"batch 8x128; {torch.get_num_threads()} training threads, {args.look_threads} look threads"
    )
    print(f"forward+backward: {t_step:.3f} s")
    for preset, t in results.items():
        print(f"{preset} look: {t:.3f} s  = {t / t_step:.2f} x one forward+backward")


if __name__ == "__main__":
    main()
