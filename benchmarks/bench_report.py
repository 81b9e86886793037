"""The report page at scale: a synthetic run of 20,000 steps x 300 keys (every step logged, per-head
arrays every step), side by side in one run:

* reading the folder: ``RunTail`` (the page's column reader) vs ``dynmon.load_run``, each in its
  own process (wall time, peak RSS), and the ratio;
* ``dynmon report`` (the page, its default) end to end in a fresh process: wall time, peak RSS,
  page size;
* opening the page in headless Chromium from ``file://``: time until every plot is drawn;
* with ``--png``, also ``dynmon report`` with the static figures (slow: matplotlib over load_run).

Targets (issue 16): report <= 10 s and <= 500 MB, page <= 5 MB, opens in <= 3 s.
Run: python benchmarks/bench_report.py [--steps 20000] [--keep DIR] [--png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dynmon.sinks.local import RunFolderSink

LAYERS, HEADS = 4, 8
METRICS = ("erank", "stable_rank", "subspace_dist", "subspace_dist_ref")
CIRCUITS = ("QK", "OV")


def synthetic_run(path: Path, steps: int, seed: int = 0) -> int:
    """Write a run folder: loss, test loss and accuracy, sharpness and, per metric and circuit,
    32 heads + 4 layer means + 1 overall (4 x 2 x 37 + 4 = 300 keys), per-head arrays at every
    step, a plateau and a cliff in the events. Returns the number of scalar keys."""
    rng = np.random.default_rng(seed)
    sink = RunFolderSink(path)
    sink.write_config({"run": {"steps": steps, "seed": seed, "lr": 1e-3}, "dynmon": {"every": 1}})
    t = np.arange(steps)
    cliff = steps // 2
    loss = 2.0 + 2 * np.exp(-t / (steps / 40)) - 1.7 / (1 + np.exp(-(t - cliff) / (steps / 200)))
    loss = loss * np.exp(rng.normal(0, 0.05, steps))
    base = 2 + rng.uniform(0, 1, (len(METRICS), len(CIRCUITS), LAYERS, HEADS))
    n_keys = 0
    for s in range(steps):
        rise = 1 / (1 + np.exp(-(s - cliff) / (steps / 100)))
        scalars = {"loss": float(loss[s]), "test/loss": float(loss[s] + 0.2), "test/acc": rise}
        scalars["dynmon/sharpness"] = float(10 + 5 * rise)
        arrays = {}
        noise = rng.normal(0, 0.03, base.shape)
        values = base * (1 + 0.5 * rise) + noise  # [metric, circuit, L, H]
        for i, metric in enumerate(METRICS):
            v = values[i] / 8 if metric.startswith("subspace") else values[i]
            for j, circuit in enumerate(CIRCUITS):
                grid = v[j]  # [L, H]
                for layer in range(LAYERS):
                    for head in range(HEADS):
                        scalars[f"dynmon/{metric}/L{layer}.H{head}.{circuit}"] = float(
                            grid[layer, head]
                        )
                    scalars[f"dynmon/{metric}/L{layer}.{circuit}"] = float(grid[layer].mean())
                scalars[f"dynmon/{metric}/{circuit}"] = float(grid.mean())
                arrays[f"dynmon/{metric}/{circuit}"] = grid
        n_keys = len(scalars)
        sink.write(s, scalars, arrays)
    for event in (
        {"kind": "plateau_start", "step": steps // 10, "at": steps // 10, "start": steps // 10,
         "key": "loss", "message": "loss flat"},
        {"kind": "plateau_end", "step": cliff, "at": cliff, "end": cliff - steps // 50,
         "key": "loss", "message": "loss moves"},
        {"kind": "cliff", "step": cliff + 100, "at": cliff, "key": "loss", "value": 1.2,
         "message": "loss fell 1.5 in 200 steps"},
    ):  # fmt: skip
        sink.write_event(event)
    sink.write_summary({"final_loss": float(loss[-1]), "steps": steps})
    sink.close()
    return n_keys


def in_child(code: str) -> tuple[float, float, float]:
    """Run ``code`` in a fresh Python (start-up included); returns wall seconds, CPU seconds
    (user + system: steadier than wall time on a loaded machine) and peak RSS in MB."""
    t0 = time.perf_counter()
    wrapper = (
        "import resource\n" + code + "\n"
        "u = resource.getrusage(resource.RUSAGE_SELF)\n"
        "print('USAGE', u.ru_utime + u.ru_stime, u.ru_maxrss)\n"
    )
    done = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"child failed:\n{done.stderr}")
    _, cpu, peak_kb = done.stdout.strip().splitlines()[-1].split()
    return wall, float(cpu), int(peak_kb) / 1024


def open_time(index: Path, repeats: int = 3) -> float:
    """Median seconds from navigation to every plot drawn, in Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    args = [
        "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ]  # fmt: skip
    times = []
    with sync_playwright() as p, tempfile.TemporaryDirectory() as profile:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path="/usr/bin/chromium", headless=True, args=args, offline=True
        )
        page = ctx.new_page()
        for _ in range(repeats):
            t0 = time.perf_counter()
            page.goto(index.resolve().as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            times.append(time.perf_counter() - t0)
        ctx.close()
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--keep", help="folder for the synthetic run (reused if it exists)")
    parser.add_argument("--png", action="store_true", help="also time the report with PNGs")
    parser.add_argument("--no-browser", dest="browser", action="store_false")
    args = parser.parse_args()

    tmp = tempfile.TemporaryDirectory()
    run = Path(args.keep) if args.keep else Path(tmp.name) / "run"
    if not (run / "metrics.jsonl").is_file():
        t0 = time.perf_counter()
        n_keys = synthetic_run(run, args.steps)
        print(
            f"wrote {run}: {args.steps} steps x {n_keys} keys in {time.perf_counter() - t0:.1f} s"
        )
    sizes = {f: (run / f).stat().st_size / 2**20 for f in ("metrics.jsonl", "arrays.jsonl")}
    print("files: " + ", ".join(f"{f} {mb:.0f} MB" for f, mb in sizes.items()))

    print(f"load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    tail = in_child(f"from dynmon.page import RunTail\nRunTail({str(run)!r}).update()")
    load = in_child(f"from dynmon import load_run\nload_run({str(run)!r})")
    print(
        f"read the folder: RunTail {tail[0]:.1f} s wall, {tail[1]:.1f} s CPU, {tail[2]:.0f} MB | "
        f"load_run {load[0]:.1f} s wall, {load[1]:.1f} s CPU, {load[2]:.0f} MB | ratio "
        f"load_run/RunTail: CPU {load[1] / tail[1]:.1f}x, memory {load[2] / tail[2]:.1f}x"
    )

    out = Path(tmp.name) / "page"
    rep = in_child(
        f"from dynmon.report import make_report\nmake_report({str(run)!r}, {str(out)!r}, png=False)"
    )
    index = out / "index.html"
    page_mb = index.stat().st_size / 2**20
    js_mb = (index.parent / "plotly.min.js").stat().st_size / 2**20
    ok = lambda good: "ok" if good else "OVER"  # noqa: E731
    print(
        f"report (page, no PNGs): {rep[0]:.1f} s wall ({ok(rep[0] <= 10)} <= 10 s), "
        f"{rep[1]:.1f} s CPU, peak {rep[2]:.0f} MB ({ok(rep[2] <= 500)} <= 500 MB); index.html "
        f"{page_mb:.2f} MB ({ok(page_mb <= 5)} <= 5 MB) + plotly.min.js {js_mb:.2f} MB beside it"
    )
    result = {"steps": args.steps, "report_wall_s": rep[0], "report_cpu_s": rep[1],
              "report_peak_mb": rep[2], "page_mb": page_mb}  # fmt: skip
    if args.browser:
        result["open_s"] = open_time(index)
        print(f"open in Chromium (file://, until every plot is drawn, median of 3): "
              f"{result['open_s']:.2f} s ({ok(result['open_s'] <= 3)} <= 3 s)")  # fmt: skip
    if args.png:
        png = in_child(
            f"from dynmon.report import make_report\nmake_report({str(run)!r}, "
            f"{str(Path(tmp.name) / 'png')!r})"
        )
        print(
            f"report with PNGs (load_run + matplotlib): {png[0]:.1f} s wall, {png[1]:.1f} s CPU, "
            f"peak {png[2]:.0f} MB; CPU ratio to the page alone: {png[1] / rep[1]:.1f}x"
        )
    print(f"load average after: {os.getloadavg()[0]:.1f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
