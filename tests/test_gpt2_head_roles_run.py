"""A plain training loop (not a pack): HF GPT2LMHeadModel on the induction task with
``Monitor(metrics={"economy": None, "head_roles": every(25)})`` forms an induction head, and the
formation event lands within ±100 steps of the steepest drop of the repeated-token loss
(measured: 0, −25 and 0 steps on seeds 0-2, scripts/gpt2_head_roles.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpt2_head_roles.py"


def _script():
    spec = importlib.util.spec_from_file_location("gpt2_head_roles", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_gpt2_forms_an_induction_head_near_the_steepest_drop(tmp_path):
    torch.set_num_threads(1)
    row = _script().train(seed=0, steps=2000, out=tmp_path / "seed0")
    assert row["formed_step"] is not None, row
    assert row["formed_score"] >= 0.4 and row["formed_head"].startswith("L1."), row
    assert abs(row["distance"]) <= 100, row
    assert row["loss_repeated_final"] < 2.0, row  # it copies the repeated segment (ln 64 = 4.16)
    assert (tmp_path / "seed0" / "events.jsonl").exists()
