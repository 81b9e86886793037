"""Command line: ``dynmon run PACK``, ``dynmon presets PACK``, ``dynmon report RUN_DIR [--watch]``,
``dynmon compare RUN_DIR... --out DIR``,
``dynmon analyze CKPT_DIR --out RUN_DIR``, ``dynmon wandb-dashboard --entity E --project P``."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path


def wandb_group(pack: str, preset: str, sets: list[str]) -> str:
    """The W&B group of a pack run: pack, preset and overrides, never the seed, so the seeds
    of one configuration land in one group."""
    keep = sorted(s.replace(" ", "") for s in sets if s.split("=", 1)[0].strip() != "seed")
    return "-".join([pack, preset, *keep])[:128]


def _cmd_run(args: argparse.Namespace) -> int:
    from dynmon.config import apply_overrides
    from dynmon.experiments import load_pack
    from dynmon.lock import RunFolderBusy
    from dynmon.report import make_report
    from dynmon.runfolder import UnsafeOutput, new_run_dir, prepare_output

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
    try:  # a used folder is refused; --overwrite deletes only a dynmon run folder nobody writes
        prepare_output(out, overwrite=args.overwrite, command=f"dynmon run {args.pack}")
    except UnsafeOutput as exc:
        raise SystemExit(str(exc)) from None
    print(f"dynmon: running {args.pack} preset {preset!r} into {out}", flush=True)
    group = None
    if args.wandb:  # an explicit --group, else the user's WANDB_RUN_GROUP, else the config's
        group = (
            args.group
            or os.environ.get("WANDB_RUN_GROUP")
            or wandb_group(args.pack, preset, list(args.set or []))
        )
        print(f"dynmon: W&B group {group!r}", flush=True)
    try:
        summary = pack.run(config, out, wandb=args.wandb, group=group)
    except RunFolderBusy as exc:  # another process started writing --out meanwhile
        raise SystemExit(f"dynmon run {args.pack}: {exc}") from None
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

    out = getattr(args, "out", None)
    target = Path(out) if out is not None else Path(args.run_dir)
    if out is None and target.is_dir() and not os.access(target, os.W_OK):
        raise SystemExit(
            f"dynmon report: {target} is read-only, so the report cannot be written into it; "
            "pass --out DIR to write it elsewhere"
        )
    try:
        if args.watch:
            from dynmon.page import watch

            print(f"dynmon: watching {args.run_dir} every {args.interval:g} s (Ctrl-C stops)")
            index = watch(
                Path(args.run_dir),
                out,
                args.interval,
                on_write=lambda index, tail: print(
                    f"dynmon: page updated at {index} ({tail.lines_read} lines read)", flush=True
                ),
            )
            if args.png:  # the static figures once, when watching stops
                index = make_report(Path(args.run_dir), out)
        else:
            index = make_report(Path(args.run_dir), out, png=args.png)
    except FileNotFoundError as exc:
        raise SystemExit(f"dynmon report: {exc}") from None
    except OSError as exc:  # read-only file system, permissions, a full disk
        hint = (
            "choose another --out DIR"
            if out is not None
            else "pass --out DIR to write it elsewhere"
        )
        raise SystemExit(
            f"dynmon report: cannot write the report into {target}: {exc}; {hint}"
        ) from None
    print(f"dynmon: report at {index}")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from dynmon.page import write_compare_page

    try:
        index = write_compare_page([Path(p) for p in args.run_dirs], Path(args.out))
    except FileNotFoundError as exc:
        raise SystemExit(f"dynmon compare: {exc}") from None
    print(f"dynmon: comparison at {index}")
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    from dynmon.analyze import analyze
    from dynmon.lock import RunFolderBusy
    from dynmon.report import make_report
    from dynmon.runfolder import UnsafeOutput

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()] if args.metrics else None
    out = Path(args.out)
    print(f"dynmon: analyzing the checkpoints in {args.ckpt_dir} into {out}", flush=True)
    try:
        analyze(
            args.ckpt_dir,
            out,
            model=args.model,
            metrics=metrics,
            strict=args.strict,
            progress=args.progress,
            overwrite=args.overwrite,
        )
    except (UnsafeOutput, RunFolderBusy) as exc:
        raise SystemExit(str(exc)) from None
    if args.report:
        print(f"dynmon: report at {make_report(out)}")
    return 0


def _cmd_wandb_dashboard(args: argparse.Namespace) -> int:
    from dynmon.integrations.wandb_dashboard import build_workspace, describe

    workspace = build_workspace(args.entity, args.project, args.name)
    print(describe(workspace))
    if not args.save:
        print("dynmon: not saved (--no-save)")
        return 0
    try:
        saved = workspace.save()
    except Exception as exc:  # network, API key, permissions: say what to check
        raise SystemExit(
            f"dynmon wandb-dashboard: saving to {args.entity}/{args.project} failed: {exc!r}; it "
            "needs network access and a W&B API key (wandb login or WANDB_API_KEY)"
        ) from None
    print(f"dynmon: workspace saved at {getattr(saved, 'url', '')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from dynmon.experiments import PACKS  # a name table: imports no pack

    packs = ", ".join(PACKS)
    parser = argparse.ArgumentParser(
        prog="dynmon",
        description="Watch a PyTorch transformer while it trains: run an experiment pack with "
        "the monitor attached, list a pack's presets, draw a run folder's report, or analyse "
        f"saved checkpoints. Experiment packs: {packs} (dynmon presets PACK lists their presets).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run an experiment pack with the monitor attached")
    run.add_argument("pack", choices=list(PACKS), help=f"experiment pack: {packs}")
    run.add_argument("--preset", help="preset name (dynmon presets PACK lists them)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key")
    run.add_argument("--seed", type=int, help="shorthand for --set seed=N")
    run.add_argument("--out", help="run folder (default: runs/<pack>-<preset>-<time>)")
    run.add_argument("--wandb", action="store_true", help="also log to Weights & Biases")
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier dynmon run in --out first (never a folder dynmon did not write)",
    )
    run.add_argument(
        "--group", help="W&B group (default: pack-preset-overrides, the same for every seed)"
    )
    run.set_defaults(func=_cmd_run)

    presets = sub.add_parser("presets", help="list a pack's presets and their keys")
    presets.add_argument("pack", choices=list(PACKS), help=f"experiment pack: {packs}")
    presets.set_defaults(func=_cmd_presets)

    report = sub.add_parser("report", help="draw the plots and index.html of a run folder")
    report.add_argument("run_dir")
    report.add_argument(
        "--out", help="folder for index.html and plots/ (default: RUN_DIR; needed if read-only)"
    )
    report.add_argument(
        "--png",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="also draw the static PNG figures into plots/, for papers (slow on long runs; "
        "with --watch: once, at the end); `dynmon run` always draws them",
    )
    report.add_argument(
        "--watch",
        action="store_true",
        help="rewrite the page as the run grows, reading only new lines, until Ctrl-C",
    )
    report.add_argument(
        "--interval", type=float, default=2.0, help="seconds between --watch updates (default 2)"
    )
    report.set_defaults(func=_cmd_report)

    compare = sub.add_parser(
        "compare",
        help="one page across runs: curves overlaid, seeds as median and band, config differences",
    )
    compare.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="two or more run folders")
    compare.add_argument("--out", required=True, help="folder for index.html")
    compare.set_defaults(func=_cmd_compare)

    analyze = sub.add_parser(
        "analyze",
        help="spectral and subspace measures over a directory of saved checkpoints",
        description="Checkpoints are weight files (.pt .pth .bin .ckpt .safetensors) under "
        "CKPT_DIR; the last number in each file's path is its step (step_000100.pt, "
        "checkpoint-100/model.safetensors). They are read with torch.load(weights_only=True).",
    )
    analyze.add_argument("ckpt_dir", help="folder holding the checkpoints (searched recursively)")
    analyze.add_argument("--out", required=True, help="run folder to write")
    analyze.add_argument(
        "--model",
        help="module:factory or path/file.py:factory returning the nn.Module (default: build it "
        "from CKPT_DIR/config.json, TransformerBridgeConfig fields or a Hugging Face config)",
    )
    analyze.add_argument(
        "--metrics",
        help="comma-separated metric names or presets (default: erank, "
        "stable_rank, subspace_dist, norms)",
    )
    analyze.add_argument("--strict", action="store_true", help="raise when a metric fails")
    analyze.add_argument(
        "--overwrite",
        action="store_true",
        help="delete an earlier dynmon run in --out first (never a folder dynmon did not write)",
    )
    analyze.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar or lines"
    )
    analyze.add_argument(
        "--no-report", dest="report", action="store_false", help="skip drawing the report"
    )
    analyze.set_defaults(func=_cmd_analyze)

    dash = sub.add_parser(
        "wandb-dashboard",
        help="build a W&B workspace for dynmon's keys and save it (needs network and a key)",
    )
    dash.add_argument("--entity", required=True, help="W&B user or team")
    dash.add_argument("--project", required=True, help="W&B project the runs log to")
    dash.add_argument("--name", default="dynmon", help="workspace name (default: dynmon)")
    dash.add_argument(
        "--save", action=argparse.BooleanOptionalAction, default=True, help="save to W&B"
    )
    dash.set_defaults(func=_cmd_wandb_dashboard)
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
