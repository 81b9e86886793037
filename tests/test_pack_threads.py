"""Packs pick their CPU thread count from the model size and put the caller's back; the nanda
preset runs where a GPU is (speed figures: benchmarks/bench_pack_threads.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from dynmon.experiments.grokking import PRESETS, Config
from dynmon.experiments.threads import ONE_THREAD_MAX_PARAMS, pick_threads, torch_threads


def test_pick_threads_by_model_size_and_device():
    assert pick_threads(0, 100_000, "cpu") == 1
    assert pick_threads(3, 100_000, "cpu") == 3  # an explicit count wins
    assert pick_threads(0, ONE_THREAD_MAX_PARAMS + 1, "cpu") == torch.get_num_threads()
    assert pick_threads(0, 100_000, "cuda") == torch.get_num_threads()  # GPU kernels
    with pytest.raises(ValueError, match="threads must be >= 0"):
        pick_threads(-1, 10, "cpu")


def test_torch_threads_restores_the_count_even_on_error():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before


def test_grokking_run_trains_on_one_thread_and_puts_the_count_back(tmp_path):
    from dynmon.experiments.grokking import run

    before = torch.get_num_threads()
    cfg = Config(p=11, d_model=16, n_heads=2, d_mlp=32, steps=6, log_every=3, look_every=3)
    cfg = dataclasses.replace(cfg, sharpness_every=0)
    summary = run(cfg, tmp_path / "run")
    assert summary["threads"] == 1 and summary["device"] == "cpu"
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be >= 0"):
        Config(threads=-2)


def test_nanda_preset_runs_on_cuda_when_there_is_one():
    from dynmon.experiments.grokking.train import resolve_device

    assert PRESETS["nanda"].device == "auto"
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="device must be"):
        Config(device="tpu")
