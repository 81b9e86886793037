"""What the reliability work costs, measured side by side in one run.

1. A row written by the run folder sink: the descriptor path with its full-disk backlog
   (``os.write`` per line) against the previous buffered path (``write`` + ``flush`` per line).
2. A look with ``options["metric_timeout_s"]`` (a watchdog timer thread per metric call) against
   the same look without it, on a small transformer with the economy metrics.

    .venv/bin/python benchmarks/bench_reliability.py [--rows 20000] [--repeats 30]
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from bench_hessian import median_time  # run as a script: benchmarks/ is on sys.path

import dynmon
from dynmon.runfolder import dumps_line, encode_float, jsonable
from dynmon.sinks.local import RunFolderSink

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from conftest import TinyLM  # noqa: E402


def buffered_rows(path: Path, rows: list[dict]) -> None:
    """The sink's earlier ``write``: the same line, a text handle, one ``flush`` per line."""
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            line: dict = {"step": int(row["step"])}
            for k, v in row.items():
                if k != "step":
                    line[k] = encode_float(v) if isinstance(v, float) else jsonable(v)
            f.write(dumps_line(line) + "\n")
            f.flush()


def sink_rows(path: Path, rows: list[dict]) -> None:
    """Today's sink: ``RunFolderSink.write`` (lock, descriptor, backlog)."""
    sink = RunFolderSink(path)
    for row in rows:
        sink.write(row["step"], {k: v for k, v in row.items() if k != "step"}, {})
    sink.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [{"step": s, "loss": 1.0 / (s + 1), "test/acc": 0.5} for s in range(args.rows)]
    with tempfile.TemporaryDirectory() as tmp:
        counter = itertools.count()
        t_old = median_time(lambda: buffered_rows(Path(tmp) / f"old{next(counter)}.jsonl", rows), 3)
        t_new = median_time(lambda: sink_rows(Path(tmp) / f"new{next(counter)}", rows), 3)
        print(f"rows: {args.rows} per run")
        print(f"  buffered write+flush: {t_old / args.rows * 1e6:7.2f} us/row")
        print(f"  RunFolderSink.write : {t_new / args.rows * 1e6:7.2f} us/row")
        print(f"  ratio new/old       : {t_new / t_old:7.2f}")

        monitors = {}
        for label, options in (("off", {}), ("on", {"metric_timeout_s": 60.0})):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                monitors[label] = dynmon.Monitor(
                    TinyLM(), run_dir=Path(tmp) / f"look-{label}", schedule=1, options=options
                )
        times: dict[str, list[float]] = {"off": [], "on": []}
        for step in range(args.repeats):  # interleaved, so load changes hit both alike
            for label, mon in monitors.items():
                times[label].append(median_time(lambda m=mon, s=step: m.step(s), 1))
        looks = {label: statistics.median(t) for label, t in times.items()}
        for mon in monitors.values():
            mon.close()
        print(f"economy look on TinyLM ({len(mon._metrics)} metrics), {args.repeats} looks each")
        print(f"  metric_timeout_s off: {looks['off'] * 1e3:7.2f} ms/look")
        print(f"  metric_timeout_s on : {looks['on'] * 1e3:7.2f} ms/look")
        print(f"  ratio on/off        : {looks['on'] / looks['off']:7.3f}")


if __name__ == "__main__":
    main()
