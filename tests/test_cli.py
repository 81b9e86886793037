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


class _FakeWandb:
    """Stands in for WandbSink: keeps the keyword arguments make_sink gave it."""

    made: list[dict] = []

    def __init__(self, **kwargs):
        self.made.append(kwargs)

    def write_config(self, config):
        pass

    def write(self, step, scalars, arrays):
        pass

    def write_event(self, event):
        pass

    def write_summary(self, summary):
        pass

    def close(self):
        pass


def test_the_wandb_group_reaches_the_sink_as_an_argument(tmp_path, monkeypatch):
    """``dynmon run --wandb`` hands the group to the pack and on to make_sink, not through the
    environment: an explicit --group, else the user's WANDB_RUN_GROUP, else pack-preset-sets."""
    import os

    import dynmon.sinks
    from dynmon.cli import wandb_group

    monkeypatch.setattr(dynmon.sinks, "WandbSink", _FakeWandb)
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    _FakeWandb.made.clear()
    assert _run(tmp_path / "a", "--wandb", "--group", "mine") == 0
    assert "WANDB_RUN_GROUP" not in os.environ
    assert _run(tmp_path / "b", "--wandb") == 0
    monkeypatch.setenv("WANDB_RUN_GROUP", "from-env")
    assert _run(tmp_path / "c", "--wandb") == 0
    default = wandb_group("linear-icl", "staircase-quick", [f"{s}" for s in TINY])
    assert [m["group"] for m in _FakeWandb.made] == ["mine", default, "from-env"]
    assert [m["name"] for m in _FakeWandb.made] == ["a", "b", "c"]
    assert _run(tmp_path / "d") == 0 and len(_FakeWandb.made) == 3  # no --wandb: no W&B sink
