"""Two CPU processes under torchrun (gloo): DDP and FSDP2 with a Monitor attached.

Checked: rank 0 alone writes a run folder; under DDP no rank makes a collective inside
``Monitor.step`` (a curvature look included); under FSDP2 both ranks make collectives on look
steps and on no other step; rank 0's numbers equal a single-process Monitor's on the same final
(gathered) weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("dist_worker.py")
STEPS, EVERY = 10, 5
LOOKS = {str(s) for s in range(EVERY, STEPS + 1, EVERY)}
HISTORY_FREE = ("dynmon/erank", "dynmon/stable_rank", "dynmon/weight_norm", "dynmon/sharpness")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(mode: str, out: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(WORKER.parent)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node=2",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        str(WORKER),
        mode,
        str(out),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _rows(path: Path) -> dict[int, dict]:
    rows: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        rows.setdefault(r["step"], {}).update(r)
    return rows


def _compare_with_reference(out: Path) -> int:
    """Rank 0's last look against the single-process reference; returns keys compared."""
    got = _rows(out / "run" / "metrics.jsonl")[STEPS]
    ref = _rows(out / "ref" / "metrics.jsonl")[STEPS]
    keys = [k for k in ref if k.startswith(HISTORY_FREE)]
    for k in keys:
        assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6), k
    return len(keys)


def test_ddp_rank0_logs_and_no_rank_joins_a_collective(tmp_path):
    r0, r1 = _launch("ddp", tmp_path)
    assert r0["run_dir_exists"]  # (rank 1 shares the folder path but never writes into it)
    assert all(not calls for calls in r0["calls"].values()), r0["calls"]
    assert all(not calls for calls in r1["calls"].values()), r1["calls"]
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    looks = sorted(s for s, r in rows.items() if "dynmon/erank/QK" in r)
    assert looks == [EVERY, STEPS]
    assert all("dynmon/sharpness" in rows[s] for s in looks)  # a curvature look under DDP
    assert _compare_with_reference(tmp_path) > 10
    assert max(r1["seconds"].values()) < 0.05  # rank 1 never does a look's work


def test_fsdp2_gathers_on_looks_only(tmp_path):
    r0, r1 = _launch("fsdp", tmp_path)
    for r in (r0, r1):
        for step, calls in r["calls"].items():
            if step in LOOKS:
                gathers = sum(v for k, v in calls.items() if "gather" in k)
                assert gathers > 0, (r["rank"], step, calls)
            else:
                assert not calls, (r["rank"], step, calls)
        assert r0["calls"][step] == r1["calls"][step]  # the same collectives on both ranks
    rows = _rows(tmp_path / "run" / "metrics.jsonl")
    assert sorted(s for s, r in rows.items() if "dynmon/erank/QK" in r) == [EVERY, STEPS]
    assert _compare_with_reference(tmp_path) > 10
