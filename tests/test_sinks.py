"""Sinks: the run folder survives SIGKILL and resumes; W&B logs offline and leaves others' runs."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from dynmon.runfolder import load_run
from dynmon.sinks import RunFolderSink, Sink, WandbSink, make_sink

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Cfg:
    lr: float = 3e-3
    out: Path = Path("runs/x")


# -- the run folder -----------------------------------------------------------------------------
def test_round_trip(tmp_path):
    sink = RunFolderSink(tmp_path / "new" / "run")
    assert isinstance(sink, Sink)
    sink.write_config({"run": Cfg(), "w": torch.tensor(2.0), "a": np.arange(3)})
    erank = np.array([[1.0, np.nan], [2.0, 3.0]])
    sink.write(0, {"loss": 2.0}, {})
    sink.write(
        1,
        {"loss": float("nan"), "g": float("inf"), "dynmon/erank/QK": 2.0},
        {"dynmon/erank/QK": erank},
    )
    sink.write(2, {"loss": 1.0, "h": float("-inf")}, {"dynmon/erank/QK": erank + 1})
    event = {"step": 1, "kind": "cliff", "key": "loss", "value": 1.5, "message": "fell"}
    sink.write_event(event)
    sink.write_summary({"final_loss": 1.0, "nested": {"x": [1, 2]}})
    sink.write_summary({"best": float("nan")})
    sink.close()
    sink.close()  # idempotent

    run = load_run(tmp_path / "new" / "run")
    assert run.config == {"run": {"lr": 3e-3, "out": "runs/x"}, "w": 2.0, "a": [0, 1, 2]}
    steps, loss = run.series("loss")
    assert steps.tolist() == [0, 1, 2] and loss[0] == 2.0 and math.isnan(loss[1])
    assert run.series("g")[1].tolist() == [math.inf] and run.series("h")[1].tolist() == [-math.inf]
    steps, arr = run.array_series("dynmon/erank/QK")
    assert steps.tolist() == [1, 2]
    np.testing.assert_array_equal(arr, np.stack([erank, erank + 1]))
    assert run.events == [event]
    assert run.summary["final_loss"] == 1.0 and run.summary["nested"] == {"x": [1, 2]}
    assert math.isnan(run.summary["best"])
    for name in ("metrics.jsonl", "arrays.jsonl", "events.jsonl"):  # strict JSON, one per line
        for line in (run.path / name).read_text().splitlines():
            json.loads(line, parse_constant=_not_strict)
    json.loads((run.path / "summary.json").read_text(), parse_constant=_not_strict)
    assert not list(run.path.glob(".*.tmp"))


def _not_strict(token: str) -> None:
    raise AssertionError(f"bare {token} in a run file: not strict JSON")


def test_write_after_close_raises(tmp_path):
    sink = RunFolderSink(tmp_path)
    sink.close()
    with pytest.raises(RuntimeError, match="closed"):
        sink.write(0, {"loss": 1.0}, {})


WRITER = """
import sys, time
import numpy as np
from dynmon.sinks.local import RunFolderSink
sink = RunFolderSink(sys.argv[1])
for i in range(int(sys.argv[2])):
    sink.write(i, {"loss": 1.0 / (i + 1), "x": float("nan")}, {"a": np.full((2, 3), float(i))})
    sink.write_event({"step": i, "kind": "tick"})
print("ready", flush=True)
time.sleep(60)
"""


def test_every_line_survives_sigkill(tmp_path):
    n = 200
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path), str(n)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
    run = load_run(tmp_path)
    steps, loss = run.series("loss")
    assert steps.tolist() == list(range(n))
    np.testing.assert_allclose(loss, 1.0 / (np.arange(n) + 1))
    assert run.array_series("a")[1].shape == (n, 2, 3)
    assert [e["step"] for e in run.events] == list(range(n))


def test_reopening_appends_and_keeps_the_summary(tmp_path):
    first = RunFolderSink(tmp_path)
    first.write(0, {"loss": 2.0}, {})
    first.write_event({"step": 0, "kind": "onset"})
    first.write_summary({"a": 1})
    first.close()
    second = RunFolderSink(tmp_path)  # a resumed run
    second.write(1, {"loss": 1.0}, {})
    second.write_event({"step": 1, "kind": "cliff"})
    second.write_summary({"b": 2})
    second.close()
    run = load_run(tmp_path)
    assert run.series("loss")[1].tolist() == [2.0, 1.0]
    assert [e["kind"] for e in run.events] == ["onset", "cliff"]
    assert run.summary == {"a": 1, "b": 2}


def test_reopening_after_a_cut_line_keeps_new_lines_whole(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": 2.0}\n{"step": 1, "lo')
    sink = RunFolderSink(tmp_path)
    sink.write(2, {"loss": 1.0}, {})
    sink.close()
    with pytest.warns(RuntimeWarning, match="unreadable"):
        run = load_run(tmp_path)
    assert run.series("loss")[0].tolist() == [0, 2]


def test_make_sink(tmp_path):
    local = make_sink("local", tmp_path)
    assert isinstance(local, RunFolderSink) and local.run_dir == tmp_path
    assert make_sink(local, tmp_path) is local
    local.close()
    with pytest.raises(ValueError, match="unknown sink 'csv'.*local"):
        make_sink("csv", tmp_path)
    with pytest.raises(ValueError, match="unknown sink 42"):
        make_sink(42, tmp_path)


# -- W&B ----------------------------------------------------------------------------------------
@pytest.fixture
def offline(tmp_path, monkeypatch):
    """W&B offline in a temporary folder, with no key anywhere."""
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    (tmp_path / "wb").mkdir()
    yield wandb
    if wandb.run is not None:
        wandb.run.finish()


def _look(step: int) -> tuple[dict, dict]:
    scalars = {"loss": 1.0 / (step + 1), "dynmon/erank/QK": 3.0, "dynmon/erank/L0.QK": 3.0}
    scalars.update({f"dynmon/erank/L0.H{h}.QK": 2.0 + h for h in range(2)})
    arrays = {"dynmon/erank/QK": np.array([[2.0, 3.0]]), "dynmon/svdvals/QK": np.ones((1, 2, 4))}
    return scalars, arrays


def _read_when_flushed(path: Path, needle: bytes, timeout: float = 30.0) -> bytes:
    """The file's bytes once they hold ``needle``: W&B's service process may still be writing
    the transaction log for a moment after ``finish()`` returns on a loaded machine."""
    deadline = time.monotonic() + timeout
    data = path.read_bytes()
    while needle not in data and time.monotonic() < deadline:
        time.sleep(0.2)
        data = path.read_bytes()
    return data


def test_wandb_offline_run(offline, tmp_path):
    sink = make_sink("wandb", tmp_path / "run-a")
    assert isinstance(sink, WandbSink) and sink._owns_run and not sink.online
    run = sink.run
    assert run.name == "run-a"
    sink.write_config({"dynmon": {"seed": 0}, "run": Cfg()})
    for step in range(3):
        sink.write(step, *_look(step))
    sink.write_event({"step": 2, "kind": "cliff", "key": "loss", "value": 0.3, "message": "m"})
    sink.write_summary({"final_loss": 0.25})
    assert run.config["dynmon"] == {"seed": 0} and run.config["run"]["lr"] == 3e-3
    summary = dict(run.summary)
    assert summary["dynmon/step"] == 2 and summary["dynmon/erank/QK"] == 3.0
    assert summary["final_loss"] == 0.25 and "loss" in summary
    assert "dynmon/erank/L0.H1.QK" not in summary  # per-head values go out as heatmaps
    assert "dynmon/heatmap/erank/QK" in summary and "dynmon/events" in summary
    run_dir = Path(run.dir).parent  # W&B reads WANDB_DIR once per process: ask the run
    sink.close()
    sink.close()
    assert offline.run is None  # it started the run, so it finished it
    assert run_dir.name.startswith("offline-run-")
    (record,) = run_dir.glob("run-*.wandb")  # what `wandb sync` would upload
    data = _read_when_flushed(record, b"final_loss")
    assert b"final_loss" in data and b'"lr":0.003' in data and b"dynmon/erank/L0.QK" in data
    assert b"dynmon/erank/L0.H1.QK" not in data
    images = list((run_dir / "files" / "media" / "images").rglob("*.png"))
    assert len(images) == 6  # 2 arrays x 3 looks
    assert list((run_dir / "files" / "media" / "table").rglob("events*.table.json"))


def test_wandb_joins_an_existing_run_and_leaves_it_open(offline, tmp_path):
    run = offline.init(project="mine", dir=str(tmp_path / "wb"))
    sink = WandbSink(config={"extra": 1}, per_head_scalars=True, heatmap_every=0)
    assert sink.run is run and not sink._owns_run
    sink.write(0, *_look(0))
    assert dict(run.summary)["dynmon/erank/L0.H1.QK"] == 3.0
    assert "dynmon/heatmap/erank/QK" not in dict(run.summary)
    assert run.config["extra"] == 1
    sink.close()
    assert offline.run is run
    run.log({"after": 1.0})  # still open: raises on a finished run
    other = WandbSink(run=run)
    assert other.run is run
    other.close()
    run.finish()


class FakeRun:
    """Records what a sink sends, as an online run would receive it."""

    offline = disabled = False

    def __init__(self) -> None:
        self.config: dict = {}
        self.summary: dict = {}
        self.logged: list[dict] = []
        self.alerts: list[dict] = []
        self.metrics: dict = {}

    def define_metric(self, name, step_metric=None, **kw):
        self.metrics[name] = step_metric

    def log(self, payload, **kw):
        assert "step" not in kw, "never pass step= to wandb.log"
        self.logged.append(payload)

    def alert(self, **kw):
        self.alerts.append(kw)

    def finish(self):
        raise AssertionError("a sink must not finish a run it did not start")


def test_wandb_payload_keys_and_alerts(offline):
    fake = FakeRun()
    fake.config = type("C", (dict,), {"update": lambda self, d, **kw: dict.update(self, d)})()
    sink = WandbSink(run=fake, heatmap_every=2, alerts=["cliff"])
    assert sink.online
    assert fake.metrics["dynmon/*"] == "dynmon/step"
    for step in range(3):
        sink.write(step, *_look(step))
    sink.write(3, {"loss": 0.1}, {})  # a step without a look
    payloads = fake.logged
    assert [p["dynmon/step"] for p in payloads] == [0, 1, 2, 3]
    assert all(not any(".H" in k for k in p) for p in payloads)
    with_heatmaps = [p["dynmon/step"] for p in payloads if "dynmon/heatmap/erank/QK" in p]
    assert with_heatmaps == [0, 2]  # heatmap_every=2
    assert fake.metrics["loss"] == "dynmon/step"  # user scalars share the step axis
    sink.write_event({"step": 5, "kind": "plateau_start", "key": "loss"})
    sink.write_event({"step": 9, "kind": "cliff", "key": "loss", "message": "loss fell"})
    assert [a["title"] for a in fake.alerts] == ["dynmon: cliff at step 9"]
    assert fake.alerts[0]["text"] == "loss fell"
    table = fake.logged[-1]["dynmon/events"]
    assert fake.logged[-1]["dynmon/step"] == 9 and len(table.data) == 2
    sink.write_summary({"best": float("nan"), "cfg": Cfg()})
    assert math.isnan(fake.summary["best"]) and fake.summary["cfg"]["out"] == "runs/x"
    assert isinstance(sink, Sink)
    sink.close()  # does not finish the fake run


def test_wandb_offline_never_alerts(offline, tmp_path, monkeypatch):
    sink = WandbSink(project="p", dir=tmp_path / "d")
    calls = []
    monkeypatch.setattr(sink.run, "alert", lambda *a, **k: calls.append(k))
    sink.write_event({"step": 1, "kind": "cliff"})
    assert calls == []
    sink.close()
    assert list((tmp_path / "d" / "wandb").glob("offline-run-*/run-*.wandb"))


def test_missing_wandb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ImportError, match=r"pip install 'dynmon\[wandb\]'"):
        WandbSink()
    with pytest.raises(ImportError, match=r"dynmon\[wandb\]"):
        make_sink("wandb", "unused")


class _Recorder:
    """A sink that keeps what the Monitor hands it."""

    def __init__(self) -> None:
        self.config: dict = {}
        self.events: list[dict] = []
        self.summary: dict = {}

    def write_config(self, config):
        self.config = config

    def write(self, step, scalars, arrays):
        pass

    def write_event(self, event):
        self.events.append(event)

    def write_summary(self, summary):
        self.summary = dict(summary)

    def close(self):
        pass


def test_sinks_get_nonfinite_floats_and_the_run_folder_encodes_them(tmp_path):
    """One conversion (runfolder.jsonable) for every sink: NaN stays a float for W&B-like sinks,
    the local sink writes the string token, and both read back the same."""
    import dynmon

    rec = _Recorder()
    cfg = {"lr": float("nan"), "out": tmp_path / "x", "n": np.int64(3)}
    with dynmon.Monitor(
        torch.nn.Linear(2, 2), run_dir=tmp_path, metrics=[], sinks=["local", rec], config=cfg
    ) as mon:
        mon.log_event("phase", 2, value=float("inf"), size=np.int64(4), message="m")
        mon.update_summary(best=float("nan"), last=torch.tensor(float("-inf")), k=2)
    assert isinstance(rec, Sink)
    assert math.isnan(rec.config["run"]["lr"]) and rec.config["run"]["n"] == 3
    assert rec.config["run"]["out"] == str(tmp_path / "x")
    assert rec.events[0]["value"] == math.inf and rec.events[0]["size"] == 4
    assert math.isnan(rec.summary["best"]) and rec.summary["last"] == -math.inf
    text = (tmp_path / "summary.json").read_text()
    assert '"best": "NaN"' in text and '"last": "-Infinity"' in text
    assert '"value":"Infinity"' in (tmp_path / "events.jsonl").read_text()
    run = load_run(tmp_path)
    assert math.isnan(run.summary["best"]) and run.events[0]["value"] == math.inf
    assert math.isnan(run.config["run"]["lr"])


def test_a_failed_start_closes_the_sinks_handed_in(tmp_path):
    """A sink built before the Monitor (a pack's W&B run in its group) is closed when the start
    fails on the run folder, as one opened by the Monitor is."""
    import dynmon
    from dynmon.lock import RunFolderBusy

    closed = []

    class Handed(_Recorder):
        def close(self):
            closed.append(True)

    first = dynmon.Monitor(torch.nn.Linear(2, 2), run_dir=tmp_path, metrics=[])
    with pytest.raises(RunFolderBusy):
        dynmon.Monitor(
            torch.nn.Linear(2, 2), run_dir=tmp_path, metrics=[], sinks=["local", Handed()]
        )
    first.close()
    assert closed == [True]
