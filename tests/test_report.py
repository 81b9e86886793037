"""The report on a realistic fake run (plateau, cliff, heads that change) and on a bare loss run."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from dynmon.report import make_report
from dynmon.sinks.local import RunFolderSink

MATRICES = ["embed.W_E", "unembed.W_U"] + [
    f"blocks.{layer}.attn.W_{m}" for layer in range(2) for m in "QKVO"
]


@dataclass(frozen=True)
class FakeConfig:
    n_layers: int = 2
    n_heads: int = 4
    d_head: int = 16
    lr: float = 0.05
    steps: int = 400


def _sigmoid(x: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


def build_fake_run(run_dir: Path, cfg: FakeConfig = FakeConfig(), seed: int = 0) -> Path:
    """A run folder shaped like a real one: the loss drops, sits on a plateau, falls off a cliff at
    step 200 while two heads (L0.H1, L1.H2) gain rank and their subspaces move, then settle."""
    rng = np.random.default_rng(seed)
    L, H, dh, T = cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.steps
    cliff = 200
    looks = sorted(set(range(0, T, 10)) | {1, 2, 3, 5, 8, 13, 20, 32, 50, 80})
    special = np.zeros((L, H))
    special[0, 1] = special[1, 2] = 1.0
    base = 2.5 + rng.uniform(0, 1, (L, H))
    sink = RunFolderSink(run_dir)
    sink.write_config({"run": cfg, "dynmon": {"metrics": ["erank", "subspace_dist"], "seed": 0}})
    prev_look = None
    for s in range(T):
        loss = 2.0 + 2.2 * np.exp(-s / 12) - 1.7 * _sigmoid((s - cliff) / 5) - 0.1 * s / T
        scalars = {"loss": float(loss * np.exp(rng.normal(0, 0.04)))}
        if s % 10 == 0:
            scalars["test/loss"] = float(loss + 0.25 + 0.05 * rng.normal())
            scalars["test/acc"] = float(0.05 + 0.9 * _sigmoid((s - cliff - 5) / 8))
        arrays = {}
        if s in looks:
            rise = _sigmoid((s - cliff + 5) / 10)
            for c, lift in (("QK", 5.0), ("OV", 3.5)):
                er = base + 0.5 * s / T + lift * special * rise + rng.normal(0, 0.05, (L, H))
                _heads(scalars, arrays, "erank", c, er)
                _heads(scalars, arrays, "stable_rank", c, 0.45 * er)
                bump = np.exp(-(((s - cliff) / 15) ** 2)) * (0.1 + 0.5 * special)
                ref = np.clip(0.6 * (1 - np.exp(-s / 150)) + 0.3 * special * rise, 0, 1)
                if prev_look is not None:
                    d = 0.5 * np.exp(-s / 60) + 0.03 + bump + rng.uniform(0, 0.02, (L, H))
                    _heads(scalars, arrays, "subspace_dist", c, np.clip(d, 0, 1))
                    _heads(scalars, arrays, "subspace_dist_ref", c, ref)
                decay = np.exp(-np.arange(dh) / (1.5 + er[..., None] / 2))  # [L, H, dh]
                arrays[f"dynmon/svdvals/{c}"] = decay * (1 + 0.1 * rng.random((L, H, dh)))
            scalars["dynmon/weight_norm"] = 20 + 3 * s / T + 2 * float(_sigmoid((s - cliff) / 10))
            grad = (np.exp(-s / 100) + 0.3 + 2 * np.exp(-(((s - cliff) / 8) ** 2))) * np.exp(
                rng.normal(0, 0.2)
            )
            scalars["dynmon/grad_norm"] = float(grad)
            ratios = []
            for i, m in enumerate(MATRICES):
                scalars[f"dynmon/norm/{m}"] = 3 + 0.3 * i + s / T
                ratio = (
                    1e-3 * np.exp(-s / 150) * (1 + i / 5) * (1 + 2 * np.exp(-((s - cliff) ** 2)))
                )
                scalars[f"dynmon/update_ratio/{m}"] = float(ratio)
                ratios.append(ratio)
            scalars["dynmon/update_ratio"] = float(np.mean(ratios))
            prev_look = s
        if s % 50 == 0:
            scalars["dynmon/sharpness"] = float(4 + 36 * _sigmoid((s - 150) / 40))
            scalars["dynmon/hessian_trace"] = float(80 + 300 * _sigmoid((s - 150) / 40))
        sink.write(s, scalars, arrays)
        for event in EVENTS:
            if event["step"] == s:
                sink.write_event(event)
    sink.write_summary({"final_loss": scalars["loss"], "cliff_step": cliff, "events": 5})
    sink.close()
    return Path(run_dir)


EVENTS = [
    {"step": 35, "kind": "plateau_start", "key": "loss", "value": 2.1, "message": "loss flat"},
    {"step": 188, "kind": "plateau_end", "key": "loss", "value": 1.9, "message": "loss moves"},
    {
        "step": 192,
        "kind": "onset",
        "key": "dynmon/erank/L1.H2.QK",
        "value": 4.0,
        "message": "L1.H2 QK erank starts rising",
    },
    {"step": 200, "kind": "cliff", "key": "loss", "value": 1.2, "message": "loss fell 1.5 in 20"},
    {"step": 300, "kind": "plateau_start", "key": "loss", "value": 0.2, "message": "converged"},
]


def _heads(scalars: dict, arrays: dict, metric: str, circuit: str, values: np.ndarray) -> None:
    """The Monitor's keys for a ``[L, H]`` metric: per head, per layer, overall, and the array."""
    for layer in range(values.shape[0]):
        for head in range(values.shape[1]):
            scalars[f"dynmon/{metric}/L{layer}.H{head}.{circuit}"] = float(values[layer, head])
        scalars[f"dynmon/{metric}/L{layer}.{circuit}"] = float(values[layer].mean())
    scalars[f"dynmon/{metric}/{circuit}"] = float(values.mean())
    arrays[f"dynmon/{metric}/{circuit}"] = values


EXPECTED = [
    "overview",
    "loss",
    "erank",
    "erank_heads",
    "subspace",
    "subspace_heads",
    "norms",
    "curvature",
]


def test_report_on_fake_run_draws_every_figure(tmp_path):
    run = build_fake_run(tmp_path / "fake")
    index = make_report(run)
    assert index == run / "index.html"
    page = index.read_text()
    for name in EXPECTED:
        png = run / "plots" / f"{name}.png"
        assert png.is_file(), f"{name}.png missing"
        assert png.stat().st_size > 20_000, f"{name}.png looks empty"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f'src="plots/{name}.png"' in page
    assert "fake" in page and "cliff" in page and "L1.H2 QK erank starts rising" in page
    assert "run.lr" in page and "final_loss" in page  # config and summary tables
    assert "Figures that failed" not in page


def test_report_on_a_loss_only_run(tmp_path):
    sink = RunFolderSink(tmp_path)
    for s in range(50):
        sink.write(s, {"loss": 3.0 / (1 + s) if s != 7 else float("nan")}, {})
    sink.close()
    index = make_report(tmp_path)
    pngs = sorted(p.name for p in (tmp_path / "plots").glob("*.png"))
    assert pngs == ["loss.png"]
    assert (tmp_path / "plots" / "loss.png").stat().st_size > 10_000
    page = index.read_text()
    assert re.search(r'src="plots/loss\.png"', page) and "no events detected" in page


def test_report_into_another_folder_and_per_head_keys_only(tmp_path):
    """Heatmaps come from per-head scalar keys when a writer sent no arrays."""
    sink = RunFolderSink(tmp_path / "run")
    for s in range(0, 100, 10):
        scalars = {"loss": 1.0 / (1 + s)}
        for layer in range(2):
            for head in range(3):
                scalars[f"dynmon/erank/L{layer}.H{head}.QK"] = 1.0 + s / 100 + head
        sink.write(s, scalars, {})
    sink.close()
    index = make_report(tmp_path / "run", out=tmp_path / "out")
    assert index == tmp_path / "out" / "index.html"
    names = {p.stem for p in (tmp_path / "out" / "plots").glob("*.png")}
    assert {"loss", "erank", "erank_heads", "overview"} <= names


def test_report_on_missing_folder_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        make_report(tmp_path / "nope")
