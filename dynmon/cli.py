"""Command line: ``dynmon run PACK``, ``dynmon presets PACK``, ``dynmon report RUN_DIR``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _cmd_run(args: argparse.Namespace) -> int:
    from dynmon.config import apply_overrides
    from dynmon.experiments import load_pack
    from dynmon.report import make_report
    from dynmon.runfolder import new_run_dir

    pack = load_pack(args.pack)
    preset = args.preset or pack.DEFAULT_PRESET
    if preset not in pack.PRESETS:
        raise SystemExit(
            f"dynmon run {args.pack}: unknown preset {preset!r}; "
            f"available: {', '.join(pack.PRESETS)} (see `dynmon presets {args.pack}`)"
        )
    sets = list(args.set or [])
    if args.seed is not None:
        sets.append(f"seed={args.seed}")
    try:
        config = apply_overrides(pack.PRESETS[preset], sets)
    except ValueError as exc:
        raise SystemExit(f"dynmon run {args.pack}: {exc}") from None
    out = Path(args.out) if args.out else new_run_dir(Path("runs"), prefix=f"{args.pack}-{preset}")
    print(f"dynmon: running {args.pack} preset {preset!r} into {out}", flush=True)
    summary = pack.run(config, out, wandb=args.wandb)
    index = make_report(out)
    headline = {k: v for k, v in (summary or {}).items() if not isinstance(v, (dict, list))}
    print(json.dumps(headline, indent=2, default=str))
    print(f"dynmon: report at {index}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    from dynmon.experiments import load_pack

    pack = load_pack(args.pack)
    for name, cfg in pack.PRESETS.items():
        marker = " (default)" if name == getattr(pack, "DEFAULT_PRESET", None) else ""
        print(f"{name}{marker}")
        for f in dataclasses.fields(cfg):
            print(f"    {f.name} = {getattr(cfg, f.name)!r}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from dynmon.report import make_report

    try:
        index = make_report(Path(args.run_dir))
    except FileNotFoundError as exc:
        raise SystemExit(f"dynmon report: {exc}") from None
    print(f"dynmon: report at {index}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dynmon", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment pack with the monitor attached")
    run.add_argument("pack", help="grokking, induction, linear-icl or demo")
    run.add_argument("--preset", help="preset name (see `dynmon presets PACK`)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    run.add_argument("--seed", type=int, help="shorthand for --set seed=N")
    run.add_argument("--out", help="run folder (default: runs/<pack>-<preset>-<time>)")
    run.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    run.set_defaults(func=_cmd_run)

    presets = sub.add_parser("presets", help="list a pack's presets and their keys")
    presets.add_argument("pack")
    presets.set_defaults(func=_cmd_presets)

    report = sub.add_parser("report", help="draw the plots and index.html of a run folder")
    report.add_argument("run_dir")
    report.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"dynmon {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
