"""The TensorBoard sink, checked by reading its event files back with TensorBoard's own reader."""

from __future__ import annotations

import io
import json
import math
import sys

import numpy as np
import pytest
import torch
from conftest import TinyLM, lm_loss

import dynmon
from dynmon.runfolder import jsonable
from dynmon.sinks import TensorBoardSink, make_sink
from dynmon.sinks.heatmap import render_heatmap

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)


def _read(log_dir) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _scalars(acc: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def _texts(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    events = acc.Tensors(f"{tag}/text_summary")  # add_text stores a string tensor under this tag
    return [(e.step, e.tensor_proto.string_val[0].decode()) for e in events]


def _pixels(encoded: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"))


def _look(step: int) -> tuple[dict, dict]:
    scalars = {"loss": 1.0 / (step + 1), "dynmon/erank/QK": 3.0 + step, "dynmon/erank/L0.QK": 2.5}
    scalars.update({f"dynmon/erank/L0.H{h}.QK": 2.0 + h + step for h in range(2)})
    arrays = {
        "dynmon/erank/QK": np.array([[2.0 + step, 3.0 + step]]),  # [L, H]
        "dynmon/svdvals/QK": np.arange(1.0, 9.0).reshape(1, 2, 4) * (step + 1),  # [L, H, k]
    }
    return scalars, arrays


def test_round_trip(tmp_path):
    sink = TensorBoardSink(tmp_path / "tb")
    config = {"dynmon": {"seed": 0, "schedule": "every(2)"}, "run": {"lr": 3e-3}}
    sink.write_config(config)
    looks = [_look(step) for step in range(3)]
    for step, (scalars, arrays) in enumerate(looks):
        sink.write(step, scalars, arrays)
    sink.write(3, {"loss": math.nan}, {})
    sink.write_event({"step": 2, "kind": "cliff", "key": "loss", "value": 0.3, "message": "drop"})
    sink.write_event({"step": 3, "kind": "plateau_start", "key": "loss", "value": math.nan})
    sink.write_summary({"final_loss": 0.25})
    sink.write_summary({"final_loss": 0.125, "looks": 3})
    sink.close()
    sink.close()

    acc = _read(tmp_path / "tb")
    tags = acc.Tags()
    for key in ("loss", "dynmon/erank/QK", "dynmon/erank/L0.QK"):
        got = _scalars(acc, key)
        want = {s: sc[key] for s, (sc, _) in enumerate(looks)}
        assert set(want) <= set(got)
        for s, v in want.items():
            assert got[s] == pytest.approx(np.float32(v), rel=1e-7)  # TensorBoard keeps float32
    assert math.isnan(_scalars(acc, "loss")[3])
    assert not any(t.startswith("dynmon/erank/L0.H") for t in tags["scalars"])  # heatmaps instead

    for name in looks[0][1]:
        images = acc.Images(f"dynmon/heatmap/{name[len('dynmon/') :]}")
        assert [im.step for im in images] == [0, 1, 2]
        for im in images:
            want = render_heatmap(name, looks[im.step][1][name], im.step)
            assert (im.height, im.width) == want.shape[:2]
            np.testing.assert_array_equal(_pixels(im.encoded_image_string), want)

    events = _texts(acc, "dynmon/events")
    assert [s for s, _ in events] == [2, 3]
    assert "| 2 | cliff | loss | 0.3 | drop |" in events[0][1]
    assert "plateau_start" in events[1][1] and "| nan |" in events[1][1]
    assert _scalars(acc, "dynmon/event/cliff") == {2: pytest.approx(0.3)}
    assert _scalars(acc, "dynmon/event/plateau_start") == {3: 1.0}  # NaN value: a plain marker

    ((step, text),) = _texts(acc, "dynmon/config")
    assert step == 0 and json.loads(text) == jsonable(config)
    summaries = _texts(acc, "dynmon/summary")
    assert [s for s, _ in summaries] == [0, 1]
    assert json.loads(summaries[-1][1]) == {"final_loss": 0.125, "looks": 3}


def test_options_and_a_borrowed_writer(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path / "tb"))
    sink = TensorBoardSink(
        writer=writer, per_head_scalars=True, user_scalars=False, heatmap_every=2
    )
    assert sink.log_dir == str(tmp_path / "tb")
    for step in range(3):
        sink.write(step, *_look(step))
    sink.close()
    writer.add_scalar("after", 1.0, 0)  # still open: the sink did not close what it borrowed
    writer.close()
    acc = _read(tmp_path / "tb")
    assert "loss" not in acc.Tags()["scalars"]
    assert _scalars(acc, "dynmon/erank/L0.H1.QK") == {0: 3.0, 1: 4.0, 2: 5.0}
    assert [im.step for im in acc.Images("dynmon/heatmap/erank/QK")] == [0, 2]  # every 2nd look
    assert _scalars(acc, "after") == {0: 1.0}


def test_make_sink_and_bad_input(tmp_path, monkeypatch):
    sink = make_sink("TensorBoard", tmp_path / "run")
    assert isinstance(sink, TensorBoardSink)
    assert sink.log_dir == str(tmp_path / "run" / "tensorboard")
    sink.close()
    with pytest.raises(ValueError, match="log_dir=<folder> or writer"):
        TensorBoardSink()
    with pytest.raises(ValueError, match="heatmap_every must be >= 0"):
        TensorBoardSink(tmp_path, heatmap_every=-1)
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r"dynmon\[tensorboard\]"):
        TensorBoardSink(tmp_path / "other")


def test_a_monitored_run_matches_the_run_folder(tmp_path):
    """Every scalar TensorBoard holds equals the one the local run folder holds, look by look."""
    torch.manual_seed(0)
    model = TinyLM()
    g = torch.Generator().manual_seed(1)
    batches = [torch.randint(0, 32, (8, 12), generator=g) for _ in range(7)]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with dynmon.Monitor(
        model,
        run_dir=tmp_path / "run",
        schedule=dynmon.every(3),
        sinks=["local", TensorBoardSink(tmp_path / "run" / "tb", per_head_scalars=True)],
        strict=True,
    ) as mon:
        for step, tokens in enumerate(batches):
            opt.zero_grad()
            loss = lm_loss(model, tokens)
            loss.backward()
            opt.step()
            mon.step(step, loss=loss)
        mon.log_event("phase", 4, value=2.0, message="a phase of the run's own")

    run = dynmon.load_run(tmp_path / "run")
    acc = _read(tmp_path / "run" / "tb")
    checked = 0
    for row in run.metrics:
        for key, value in row.items():
            if key == "step":
                continue
            got = _scalars(acc, key)[row["step"]]
            if math.isnan(value):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(np.float32(value), rel=1e-6, abs=1e-30)
            checked += 1
    assert checked > 100 and {0, 3, 6} <= set(_scalars(acc, "dynmon/erank/L1.H3.QK"))
    arrays = [name for name in run.arrays[0] if name != "step"]
    for name in arrays:
        images = acc.Images(f"dynmon/heatmap/{name[len('dynmon/') :]}")
        assert [im.step for im in images] == [0, 3, 6]
    assert _scalars(acc, "dynmon/event/phase") == {4: 2.0}
    final = json.loads(_texts(acc, "dynmon/summary")[-1][1])
    assert final["dynmon"]["looks"] == 3 and final["dynmon"]["last_step"] == 6
