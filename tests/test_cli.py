"""The CLI never mixes two runs in one folder: it refuses a used --out unless --overwrite."""

from __future__ import annotations

import json

import pytest

from dynmon.cli import main

TINY = ["steps=20", "P=200", "P_test=200", "sharpness_every=0"]


def _run(out, *extra: str) -> int:
    args = ["run", "linear-icl", "--preset", "staircase-quick", "--out", str(out), *extra]
    return main(args + [a for s in TINY for a in ("--set", s)])


def test_a_used_run_folder_is_refused_and_kept(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"dynmon": {"run_dir": "run"}}')  # a dynmon run
    (out / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n')
    with pytest.raises(SystemExit, match="already holds a dynmon run.*--overwrite"):
        _run(out)
    assert (out / "metrics.jsonl").read_text() == '{"step": 0, "loss": 1.0}\n'  # untouched


def test_overwrite_starts_the_folder_again(tmp_path):
    out = tmp_path / "run"
    assert _run(out) == 0
    first = (out / "metrics.jsonl").read_text().splitlines()
    assert _run(out, "--overwrite") == 0
    again = (out / "metrics.jsonl").read_text().splitlines()
    assert len(again) == len(first)  # one run's rows, not two runs appended
    assert [json.loads(r)["step"] for r in again] == [json.loads(r)["step"] for r in first]
