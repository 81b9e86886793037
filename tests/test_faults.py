"""Fault injection: nothing deletes what dynmon did not write, one writer per run folder, every
fault inside a look or a sink isolated, corrupt checkpoints skipped, a full disk survived, a
crash-and-resume run equal to an uninterrupted one. Real subprocesses where the fault is the
process's (SIGKILL, a full file system, the CLI's exit)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TinyLM
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import dynmon
from dynmon.analyze import analyze
from dynmon.checkpoints import CheckpointError
from dynmon.lock import LOCK_NAME, RunFolderBusy
from dynmon.metrics.spec import HEAD_NEEDS, MetricSpec, Output
from dynmon.metrics.table import METRICS, PRESETS
from dynmon.monitor import MetricError
from dynmon.runfolder import UnsafeOutput, load_run, prepare_output, removal_refusal, step_of
from dynmon.schedule import as_schedule
from dynmon.sinks import local as local_sink
from dynmon.sinks.local import RunFolderSink

HERE = Path(__file__).parent
WORKER = HERE / "fault_worker.py"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def _cli(*args: str, cwd: Path | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dynmon", *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _worker(
    run_dir: Path, *args: str, timeout: int = 120, **env: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(WORKER), str(run_dir), *args],
        env={**ENV, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _start(run_dir: Path, *args: str, **env: str) -> subprocess.Popen:
    """The worker in the background (runs that do not depend on each other go side by side)."""
    return subprocess.Popen(
        [sys.executable, str(WORKER), str(run_dir), *args],
        env={**ENV, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to show nothing moved)."""
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _dynmon_run(path: Path, steps: int = 3) -> None:
    """A real (small) dynmon run folder, written by a Monitor."""
    with dynmon.Monitor(nn.Linear(2, 2), run_dir=path, metrics=[], schedule=1) as mon:
        for s in range(steps):
            mon.step(s, loss=1.0 / (s + 1))


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@contextlib.contextmanager
def _tmpfs(size: str):
    """A small tmpfs mount (root only), unmounted afterwards."""
    import tempfile

    point = Path(tempfile.mkdtemp(prefix="dynmon-tmpfs-"))
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)])
    if made.returncode != 0:
        point.rmdir()
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)
        with contextlib.suppress(OSError):
            point.rmdir()


# -- 1. --overwrite removes only a folder dynmon wrote ------------------------------------------
def test_overwrite_refuses_a_folder_dynmon_did_not_write(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("keep me")
    (project / "src" / "a.py").write_text("x = 1")
    before = _tree(project)
    res = _cli("run", "linear-icl", "--out", str(project), "--overwrite", cwd=tmp_path)
    assert res.returncode != 0
    assert "not a dynmon run folder" in res.stderr and "nothing was deleted" in res.stderr
    assert _tree(project) == before
    res = _cli("run", "linear-icl", "--out", str(project), cwd=tmp_path)  # without the flag
    assert res.returncode != 0 and "holds no dynmon run" in res.stderr
    assert "already holds" not in res.stderr
    assert _tree(project) == before


def test_overwrite_refuses_the_current_directory_and_its_parents(tmp_path):
    run = tmp_path / "run"
    _dynmon_run(run)  # even a genuine run folder, when it is where the user stands
    (run / "sub").mkdir()
    before = _tree(tmp_path)
    for out, cwd in ((".", run), ("..", run / "sub"), (str(run), run / "sub")):
        res = _cli("run", "linear-icl", "--out", out, "--overwrite", cwd=cwd)
        assert res.returncode != 0, res.stdout
        assert "current directory or one of its parents" in res.stderr
        assert _tree(tmp_path) == before
    assert "file system root" in removal_refusal("/")
    assert "home folder" in removal_refusal(Path.home())
    (run / ".git").mkdir()  # a run folder that is also a repository: not deleted either
    assert "git repository" in removal_refusal(run)


def test_overwrite_replaces_a_finished_dynmon_run(tmp_path):
    run = tmp_path / "run"
    _dynmon_run(run, steps=5)
    assert prepare_output(run, overwrite=True) == run and not run.exists()
    _dynmon_run(run, steps=2)
    with pytest.raises(UnsafeOutput, match="already holds a dynmon run"):
        prepare_output(run)
    assert [r["step"] for r in _lines(run / "metrics.jsonl")] == [0, 1]


# -- 2. one writer per run folder ---------------------------------------------------------------
def test_a_second_writer_is_refused_and_the_first_run_is_intact(tmp_path):
    run = tmp_path / "run"
    proc = _start(run, "--steps", "30", "--sleep-at", "10", "--sleep", "4")
    try:
        deadline = time.time() + 60
        while not (run / "metrics.jsonl").is_file() or len(_lines(run / "metrics.jsonl")) < 11:
            assert time.time() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.1)
        with pytest.raises(RunFolderBusy, match=rf"{run}.*pid {proc.pid}"):
            dynmon.Monitor(nn.Linear(2, 2), run_dir=run, metrics=[], config={"who": "second"})
        res = _cli("run", "linear-icl", "--out", str(run), "--overwrite", cwd=tmp_path)
        assert res.returncode != 0 and f"written right now by pid {proc.pid}" in res.stderr
    finally:
        assert proc.wait(timeout=120) == 0, proc.stderr.read()
    assert [r["step"] for r in _lines(run / "metrics.jsonl")] == list(range(30))
    config = json.loads((run / "config.json").read_text())
    assert "run" not in config  # the worker passes no config: the second writer's never landed
    assert json.loads((run / "summary.json").read_text())["dynmon"]["last_step"] == 29


def test_two_monitors_in_one_process_and_release_at_close(tmp_path):
    first = dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path, metrics=[])
    with pytest.raises(RunFolderBusy, match=f"pid {os.getpid()} .*close\\(\\) the Monitor"):
        dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path, metrics=[])
    first.step(0, loss=1.0)
    first.close()
    with dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path, metrics=[]) as again:  # released
        again.step(1, loss=0.5)
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [0, 1]


def test_analyze_out_into_an_existing_run_is_refused(tmp_path):
    ckpt = _checkpoints(tmp_path / "ckpt", steps=(0, 10))
    run = tmp_path / "run"
    _dynmon_run(run)
    before = _tree(run)
    with pytest.raises(UnsafeOutput, match="already holds a dynmon run"):
        analyze(ckpt, run, model=f"{ckpt / 'mymodel.py'}:build", progress=False)
    assert _tree(run) == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    res = _cli(
        "analyze", str(ckpt), "--out", str(other), "--overwrite", "--no-report",
        "--model", f"{ckpt / 'mymodel.py'}:build", "--no-progress",
    )  # fmt: skip
    assert res.returncode != 0 and "not a dynmon run folder" in res.stderr
    assert (other / "keep.txt").read_text() == "mine"


# -- 3. every fault inside a look is isolated ---------------------------------------------------
def _spec(name: str, compute, needs=frozenset()) -> MetricSpec:
    return MetricSpec(name, compute, frozenset(needs))


@pytest.mark.parametrize(
    "result, what",
    [
        ({"x": 1.0}, "returned a dict"),
        (Output(scalars={"x": "high"}), "scalar 'x' is 'high'"),
        (Output(scalars={"x": torch.ones(3)}), r"tensor of shape \(3,\)"),
        (Output(arrays={"a": np.ones(3)}), "array 'a' is a ndarray"),
    ],
)
def test_a_metric_with_a_wrong_result_is_switched_off(tmp_path, result, what):
    bad = _spec("bad", lambda ctx: result)
    mon = dynmon.Monitor(TinyLM(), run_dir=tmp_path, schedule=1, metrics=[bad, "norms"])
    with pytest.warns(RuntimeWarning, match=what):
        mon.step(0, loss=1.0)
    mon.step(1, loss=0.5)  # training goes on; the metric stays off
    mon.close()
    assert re.search(what, mon.disabled["bad"])
    rows = _lines(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 1] and all("dynmon/weight_norm" in r for r in rows)
    assert [e["metric"] for e in _lines(tmp_path / "events.jsonl")] == ["bad"]
    strict = dynmon.Monitor(
        TinyLM(), run_dir=tmp_path / "s", schedule=1, metrics=[bad], strict=True
    )
    with pytest.raises(MetricError, match=what):
        strict.step(0)


def test_a_slow_metric_is_reported_while_it_runs_and_then_switched_off(tmp_path):
    calls, heard_during_the_call = [], []

    def slow(ctx):
        calls.append(step := ctx.step)
        time.sleep(0.6)  # the watchdog (a timer thread) speaks up meanwhile
        heard_during_the_call.append(any("more than" in str(w.message) for w in caught))
        return Output(scalars={"slow": float(step + 1)})

    mon = dynmon.Monitor(
        nn.Linear(2, 2), run_dir=tmp_path, schedule=1, metrics=[_spec("slow", slow)],
        options={"metric_timeout_s": 0.2},
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mon.step(0, loss=1.0)
        mon.step(1, loss=1.0)
    messages = [str(w.message) for w in caught]
    assert heard_during_the_call == [True]
    assert any("has run for more than metric_timeout_s=0.2" in m for m in messages)
    assert any("switched off" in m and "over metric_timeout_s=0.2" in m for m in messages)
    assert calls == [0]  # not called at the next look
    mon.close()
    rows = _lines(tmp_path / "metrics.jsonl")
    assert rows[0]["slow"] == 1.0 and "slow" not in rows[1]  # the slow call's result is kept
    assert [e["kind"] for e in _lines(tmp_path / "events.jsonl")] == ["metric_timeout"]


def test_metric_timeout_needs_a_positive_number(tmp_path):
    for bad in (0, -1, "5", float("nan")):
        with pytest.raises(ValueError, match="metric_timeout_s"):
            dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path, options={"metric_timeout_s": bad})


def test_any_adapter_exception_is_isolated(tmp_path):
    def extract(module):
        raise KeyError("broken adapter")

    adapter = dynmon.adapters.register_adapter(nn.MultiheadAttention, extract, name="broken")
    try:
        with pytest.warns(RuntimeWarning, match="KeyError.*broken adapter"):
            mon = dynmon.Monitor(TinyLM(), run_dir=tmp_path, schedule=1)
        mon.step(0, loss=1.0)
        mon.close()
        with pytest.raises(KeyError):
            dynmon.Monitor(TinyLM(), run_dir=tmp_path / "s", strict=True)
    finally:
        dynmon.adapters.unregister_adapter(adapter)
    assert set(mon.disabled) == {n for n in PRESETS["economy"] if METRICS[n].needs & HEAD_NEEDS}
    assert "dynmon/weight_norm" in _lines(tmp_path / "metrics.jsonl")[0]


class ZeroWidthAttention(nn.Module):
    """LLaMA-style projections with ``num_heads=4`` and zero outputs: head_dim = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 4
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(16, 0) for _ in range(3))
        self.o_proj = nn.Linear(0, 16)


def test_a_zero_head_dim_is_isolated(tmp_path):
    model = nn.ModuleDict({"attn": ZeroWidthAttention(), "mlp": nn.Linear(16, 16)})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        with pytest.warns(RuntimeWarning, match="per-head metrics .* switched off"):
            mon = dynmon.Monitor(model, run_dir=tmp_path, schedule=1)
    mon.step(0, loss=1.0)
    mon.close()
    assert mon.disabled and "norms" not in mon.disabled
    assert "dynmon/weight_norm" in _lines(tmp_path / "metrics.jsonl")[0]


def test_huge_loss_does_not_stop_training(tmp_path):
    """Lead's ``_floats``: 10**400 cannot be a float; the step goes on, with a warning."""
    mon = dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path, metrics=[], schedule=1)
    with pytest.warns(RuntimeWarning, match="loss"):
        mon.step(0, loss=10**400, acc=0.5)
    mon.step(1, loss=1.0)
    mon.close()
    rows = _lines(tmp_path / "metrics.jsonl")
    assert rows[0]["acc"] == 0.5 and rows[0].get("loss", "Infinity") == "Infinity"
    assert rows[1]["loss"] == 1.0


def test_step_after_close_and_non_increasing_steps_warn(tmp_path):
    """Lead's ``step``: both are accepted, neither silently."""
    mon = dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path, metrics=[], schedule=1)
    mon.step(5, loss=1.0)
    for again in (5, 3):  # repeated, then decreasing
        with pytest.warns(RuntimeWarning, match="step"):
            mon.step(again, loss=1.0)
    mon.close()
    with pytest.warns(RuntimeWarning, match="close"):
        mon.step(6, loss=1.0)
    steps = [r["step"] for r in _lines(tmp_path / "metrics.jsonl")]
    assert steps[0] == 5 and 6 not in steps


# -- 3b. clear errors at construction -----------------------------------------------------------
def test_name_clashes_and_unknown_needs_are_errors(tmp_path):
    mine = _spec("erank", lambda ctx: Output())
    with pytest.raises(ValueError, match="'erank', the name of a built-in metric; rename it"):
        dynmon.Monitor(TinyLM(), run_dir=tmp_path, metrics=["erank", mine])
    assert not (tmp_path / "metrics.jsonl").exists()  # refused before any file
    with pytest.raises(ValueError, match=r"needs \['hessian'\].*known needs"):
        dynmon.Monitor(TinyLM(), run_dir=tmp_path, metrics=[_spec("x", None, {"hessian"})])
    with pytest.raises(TypeError, match="needs must be a set of strings"):
        dynmon.Monitor(TinyLM(), run_dir=tmp_path, metrics=[MetricSpec("x", print, "heads")])
    twins = [_spec("mine", lambda ctx: Output()), _spec("mine", lambda ctx: Output())]
    with pytest.raises(ValueError, match="two different metrics are named 'mine'"):
        dynmon.Monitor(TinyLM(), run_dir=tmp_path, metrics=twins)
    built_in = dynmon.Monitor(TinyLM(), run_dir=tmp_path, metrics=[METRICS["erank"], "erank"])
    built_in.close()  # the built-in spec object itself is fine


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"metrics": 42}, TypeError, "metrics=42 is a int; pass a preset name"),
        ({"metrics": [3]}, TypeError, "metrics entry 3 is a int"),
        ({"schedule": "every 10"}, TypeError, "is a string; pass dynmon.every"),
        ({"schedule": [1, 2.5]}, ValueError, "whole number, got 2.5"),
        ({"metrics": {"norms": "often"}}, TypeError, r"metrics\['norms'\].*string"),
        ({"strict": "yes"}, TypeError, "strict must be True or False"),
        ({"options": [1]}, TypeError, "options must be a dict"),
        ({"seed": 1.5}, TypeError, "seed must be an int"),
        ({"run_dir": 3}, TypeError, "run_dir must be a folder path"),
    ],
)
def test_bad_arguments_say_what_to_pass(tmp_path, kwargs, error, match):
    kwargs.setdefault("run_dir", tmp_path)
    with pytest.raises(error, match=match):
        dynmon.Monitor(TinyLM(), **kwargs)


def test_bad_model_and_schedules(tmp_path):
    with pytest.raises(TypeError, match="needs a torch nn.Module"):
        dynmon.Monitor("gpt2", run_dir=tmp_path)
    with pytest.raises(ValueError, match="whole number, got 2.7"):
        dynmon.every(2.7)
    assert dynmon.every(3.0) == dynmon.every(3)
    with pytest.raises(ValueError, match="whole number"):
        dynmon.logspace(1, 100.5, 3)
    with pytest.raises(TypeError, match="integer step count"):
        dynmon.every("10")
    assert [s for s in range(10) if as_schedule(np.array([2, 7]))(s)] == [2, 7]


# -- 3c. the metrics-dict semantics (issue 17) ---------------------------------------------------
def _chosen(tmp_path, metrics, **kw) -> dict:
    mon = dynmon.Monitor(TinyLM(), run_dir=tmp_path / str(len(list(tmp_path.iterdir()))),
                         metrics=metrics, **kw)  # fmt: skip
    mon.close()
    return {n: own for n, (_, own) in mon._metrics.items()}


def test_a_dict_of_extras_adds_to_economy_and_a_preset_key_replaces(tmp_path):
    economy = set(PRESETS["economy"])
    batch = torch.randint(0, 32, (2, 6))
    curv = {"loss_fn": lambda m, b: m(b).logsumexp(-1).mean(), "probe_batch": batch}
    extra = _chosen(tmp_path, {"sharpness": dynmon.every(500)}, **curv)
    assert set(extra) == economy | {"sharpness"}
    assert extra["sharpness"] == dynmon.every(500) and extra["erank"] is None
    only = _chosen(tmp_path, {"economy": False, "sharpness": dynmon.every(500)}, **curv)
    assert set(only) == {"sharpness"}
    full = _chosen(tmp_path, {"full": None, "subspace_dist": dynmon.every(7)}, **curv)
    assert set(full) == set(PRESETS["full"]) and full["subspace_dist"] == dynmon.every(7)
    assert set(_chosen(tmp_path, {"erank": False})) == economy - {"erank"}
    mine = _spec("mine", lambda ctx: Output())
    assert set(_chosen(tmp_path, {mine: None})) == economy | {"mine"}
    assert set(_chosen(tmp_path, ["norms"])) == {"norms"}  # a list is exactly those
    assert set(_chosen(tmp_path, {"economy": dynmon.every(3)})) == economy


# -- 3d. close always tries the summary ----------------------------------------------------------
class BrokenRows:
    """A sink whose row writes fail; its summary and close still work."""

    def __init__(self) -> None:
        self.summaries: list[dict] = []
        self.closed = False

    def write_config(self, config):
        pass

    def write(self, step, scalars, arrays):
        raise OSError(errno.EIO, "rows lost")

    def write_event(self, event):
        pass

    def write_summary(self, summary):
        self.summaries.append(dict(summary))

    def close(self):
        self.closed = True


class FailingFinalize:
    keys = ("loss",)

    def update(self, step, values):
        return []

    def finalize(self, step):
        raise RuntimeError("finalize broke")

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def test_close_writes_the_summary_despite_a_dropped_sink_and_a_failing_detector(tmp_path):
    broken = BrokenRows()
    mon = dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path, metrics=[], schedule=1,
                         sinks=["local", broken], detectors=[FailingFinalize()])  # fmt: skip
    with pytest.warns(RuntimeWarning, match="BrokenRows failed in write and is dropped"):
        mon.step(0, loss=1.0)
    mon.step(1, loss=0.5)
    with pytest.warns(RuntimeWarning, match="finalize broke"):
        mon.close()
    assert broken.closed and broken.summaries[-1]["dynmon"]["last_step"] == 1
    assert json.loads((tmp_path / "summary.json").read_text())["dynmon"]["last_step"] == 1


# -- 4. corrupt checkpoints ----------------------------------------------------------------------
MODEL_SRC = """
import torch
from torch import nn

class MHALM(nn.Module):
    def __init__(self, vocab=16, d=16, heads=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.unembed = nn.Linear(d, vocab)

def build():
    torch.manual_seed(123)
    return MHALM()
"""


def _checkpoints(folder: Path, steps=(0, 10, 20, 30)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mymodel.py").write_text(MODEL_SRC)
    ns: dict = {}
    exec(compile(MODEL_SRC, "mymodel", "exec"), ns)
    model = ns["build"]()
    for s in steps:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        torch.save(model.state_dict(), folder / f"step_{s}.pt")
    return folder


def _corrupt(folder: Path, kind: str) -> Path:
    good = (folder / "step_10.pt").read_bytes()
    if kind == "truncated":
        bad = folder / "step_15.pt"
        bad.write_bytes(good[: len(good) // 2])
    elif kind == "empty":
        bad = folder / "step_15.pt"
        bad.write_bytes(b"")
    elif kind == "bad safetensors header":
        bad = folder / "step_15.safetensors"
        bad.write_bytes((16).to_bytes(8, "little") + b"{not json at all")
    elif kind == "huge safetensors header":
        bad = folder / "step_15.safetensors"
        bad.write_bytes((2**40).to_bytes(8, "little") + b"{}")
    else:  # a symlink to a file that is no checkpoint
        (folder / "README.txt").write_text("not weights\n" * 50)
        bad = folder / "step_15.pt"
        bad.symlink_to(folder / "README.txt")
    return bad


@pytest.mark.parametrize(
    "kind", ["truncated", "empty", "bad safetensors header", "huge safetensors header", "symlink"]
)
def test_an_unreadable_checkpoint_is_skipped_named_and_recorded(tmp_path, kind):
    ckpt = _checkpoints(tmp_path / "ckpt")
    bad = _corrupt(ckpt, kind)
    out = tmp_path / "run"
    with pytest.warns(RuntimeWarning, match=rf"skipped {bad}") as rec:
        analyze(ckpt, out, model=f"{ckpt / 'mymodel.py'}:build", progress=False)
    assert sum(f"skipped {bad}" in str(w.message) for w in rec) == 1  # one warning per file
    skipped = json.loads((out / "summary.json").read_text())["analyze"]["skipped"]
    assert [(s["step"], s["path"]) for s in skipped] == [(15, str(bad))]
    assert "not a readable" in skipped[0]["reason"]
    assert sorted({r["step"] for r in _lines(out / "metrics.jsonl")}) == [0, 10, 20, 30]


def test_unreadable_final_checkpoint_falls_back_and_cli_names_the_file(tmp_path):
    ckpt = _checkpoints(tmp_path / "ckpt", steps=(0, 10, 20))
    (ckpt / "step_40.pt").write_bytes(b"")
    out = tmp_path / "run"
    res = _cli(
        "analyze", str(ckpt), "--out", str(out), "--model", f"{ckpt / 'mymodel.py'}:build",
        "--no-progress", "--no-report",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    summary = json.loads((out / "summary.json").read_text())["analyze"]
    assert summary["final"] == str(ckpt / "step_20.pt") and summary["checkpoints"] == 3


def test_a_fatal_error_leaves_no_partial_folder(tmp_path):
    ckpt = _checkpoints(tmp_path / "ckpt", steps=(0, 10))
    for p in ckpt.glob("step_*.pt"):
        p.write_bytes(b"\x00garbage")
    out = tmp_path / "run"
    res = _cli("analyze", str(ckpt), "--out", str(out), "--model", f"{ckpt / 'mymodel.py'}:build")
    assert res.returncode == 2 and "none of the 2 checkpoints could be read" in res.stderr
    assert "step_0.pt" in res.stderr and "Traceback" not in res.stderr
    assert not out.exists()
    # fatal after rows were written: a checkpoint of another model half-way
    ckpt = _checkpoints(tmp_path / "ckpt2", steps=(0, 10, 20))
    torch.save({"other.weight": torch.zeros(2, 2)}, ckpt / "step_10.pt")
    with pytest.raises(CheckpointError, match="does not fit the model"):
        analyze(ckpt, out, model=f"{ckpt / 'mymodel.py'}:build", progress=False)
    assert not out.exists()


# -- 5. a full disk --------------------------------------------------------------------------------
def test_a_full_disk_loses_nothing_that_fits_the_backlog(tmp_path, monkeypatch):
    """``os.write`` refuses (ENOSPC) for a while: lines wait in order, then all land."""
    real_write, full = os.write, {"on": False}

    def write(fd, data):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(local_sink.os, "write", write)
    sink = RunFolderSink(tmp_path)
    sink.write(0, {"loss": 1.0}, {})
    full["on"] = True
    with pytest.warns(RuntimeWarning, match="cannot write into"):
        sink.write(1, {"loss": 0.5}, {"a": np.ones(2)})
    sink.write_event({"step": 1, "kind": "probe"})
    full["on"] = False
    with pytest.warns(RuntimeWarning, match="works again"):
        sink.write(2, {"loss": 0.25}, {})
    sink.close()
    run = load_run(tmp_path)
    assert run.series("loss")[0].tolist() == [0, 1, 2]
    assert [e["kind"] for e in run.events] == ["probe"] and "unwritten_lines" not in run.summary


def test_a_bounded_backlog_counts_what_it_dropped(tmp_path, monkeypatch):
    real_write, full = os.write, {"on": False}

    def write(fd, data):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(local_sink.os, "write", write)
    sink = RunFolderSink(tmp_path, max_backlog_bytes=200)
    line = len(json.dumps({"step": 0, "loss": 0.5}, separators=(",", ":"))) + 1  # 0-9: one digit
    full["on"] = True
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for s in range(10):
            sink.write(s, {"loss": 0.5}, {})
        full["on"] = False
        sink.write(10, {"loss": 0.5}, {})
        sink.close()
    kept = 200 // line
    steps = [r["step"] for r in _lines(tmp_path / "metrics.jsonl")]
    assert steps == [*range(kept), 10]
    assert json.loads((tmp_path / "summary.json").read_text())["unwritten_lines"] == {
        "metrics.jsonl": 10 - kept
    }


def test_training_survives_a_full_tmpfs_and_writes_again_when_space_returns(tmp_path):
    reference = tmp_path / "run"
    with _tmpfs("1m") as disk:
        run = disk / "run"
        plain = _start(reference, "--steps", "40")
        full = _start(run, "--steps", "40", "--fill", str(disk / "filler"),
                      "--fill-at", "10", "--free-at", "25", PYTHONWARNINGS="default")  # fmt: skip
        _, stderr = full.communicate(timeout=120)
        assert full.returncode == 0 and plain.wait(timeout=120) == 0, stderr
        assert "cannot write into" in stderr and "works again" in stderr
        summary = json.loads((run / "summary.json").read_text())
        rows = _lines(run / "metrics.jsonl")
        lost = summary.get("unwritten_lines", {}).get("metrics.jsonl", 0)
    assert summary["dynmon"]["last_step"] == 39 and summary["final_loss"] > 0
    loss_steps = [r["step"] for r in rows if "loss" in r]
    assert loss_steps[-15:] == list(range(25, 40))  # every row after space returned
    assert loss_steps == sorted(set(loss_steps))  # in order, none twice
    assert len(rows) + lost == len(_lines(reference / "metrics.jsonl"))  # lost ones counted


def test_training_survives_a_file_size_limit(tmp_path):
    """``ulimit -f`` (RLIMIT_FSIZE): writes past it fail with EFBIG; raising it lets them on."""
    code = f"""
import resource, sys, warnings
sys.path.insert(0, {str(HERE)!r})
import torch
from torch import nn
import dynmon
warnings.simplefilter("ignore")
mon = dynmon.Monitor(nn.Linear(2, 2), run_dir={str(tmp_path / "run")!r}, metrics=[], schedule=1)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
for s in range(30):
    if s == 10:
        resource.setrlimit(resource.RLIMIT_FSIZE, (400, hard))
    if s == 20:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    mon.step(s, loss=1.0 / (s + 1))
mon.close()
"""
    res = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    steps = [r["step"] for r in _lines(tmp_path / "run" / "metrics.jsonl")]
    assert steps == list(range(30))  # the backlog held the refused rows until the limit rose
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["dynmon"]["last_step"] == 29


# -- 6. SIGKILL, then resume from the last saved model + monitor state ----------------------------
def test_sigkill_and_resume_equals_an_uninterrupted_run(tmp_path):
    whole, crashed = tmp_path / "a" / "run", tmp_path / "b" / "run"
    uninterrupted = _start(whole, "--steps", "40")
    res = _worker(crashed, "--steps", "40", "--save-every", "10", "--kill-at", "27")
    assert res.returncode == -9  # SIGKILL: the lock died with it
    assert any(e["step"] > 20 for e in _lines(crashed / "events.jsonl"))  # to be detected again
    res = _worker(crashed, "--steps", "40", "--save-every", "10", "--resume",
                  str(crashed.parent / "ckpt.pt"))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert uninterrupted.wait(timeout=120) == 0, uninterrupted.stderr.read()
    a, b = load_run(whole), load_run(crashed)
    assert a.keys() == b.keys()
    for key in a.keys():
        np.testing.assert_array_equal(a.series(key)[0], b.series(key)[0])
        np.testing.assert_array_equal(a.series(key)[1], b.series(key)[1])
    assert _lines(whole / "events.jsonl") == _lines(crashed / "events.jsonl")
    assert a.summary == b.summary


def test_drop_events_after_keeps_the_saved_step_and_ends_cut_lines(tmp_path):
    (tmp_path / "events.jsonl").write_text(
        '{"step": 3, "kind": "a"}\n{"step": 5, "kind": "b"}\n{"step": 6, "kind": "c"}\n{"st'
    )
    sink = RunFolderSink(tmp_path)
    sink.write_event({"step": 7, "kind": "d"})  # opens the file: the cut line is ended first
    assert sink.drop_events_after(5) == 2
    sink.write_event({"step": 6, "kind": "c again"})
    sink.close()
    text = (tmp_path / "events.jsonl").read_text()
    assert [e["kind"] for e in _lines(tmp_path / "events.jsonl")] == ["a", "b", "c again"]
    assert "\n\n" not in text
    again = RunFolderSink(tmp_path)
    assert again.drop_events_after(None) == 3  # a state saved before any step
    again.close()
    assert (tmp_path / "events.jsonl").read_text() == ""


def test_a_version_1_state_still_loads_and_a_failed_start_frees_the_folder(tmp_path):
    with dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path / "a", metrics=[]) as mon:
        mon.step(0, loss=1.0)
        state = mon.state_dict()
    old = {k: v for k, v in state.items() if k != "events"} | {"version": 1}
    resumed = dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path / "a", metrics=[])
    resumed.load_state_dict(old)
    resumed.close()
    with dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path / "b", metrics=[]) as other:
        with pytest.raises(ValueError, match="unknown dynmon Monitor state version 7"):
            other.load_state_dict({"version": 7})
    with pytest.raises(ValueError, match="unknown sink"):
        dynmon.Monitor(
            nn.Linear(2, 2), run_dir=tmp_path / "c", metrics=[], sinks=["local", "bogus"]
        )
    with dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path / "c", metrics=[]) as mon:
        mon.step(0, loss=1.0)  # the failed start released its lock


# -- 7. steps load_run cannot hold, and reports on read-only folders -------------------------------
def test_huge_and_hand_edited_steps_are_skipped_with_one_warning(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 0, "loss": 1.0}\n{"step": 9223372036854775808, "loss": 2.0}\n'
        '{"step": "abc", "loss": 3.0}\n{"step": 12.5, "loss": 4.0}\n{"step": 2.0, "loss": 5.0}\n'
    )
    with pytest.warns(RuntimeWarning, match="skipped 3 row") as rec:
        run = load_run(tmp_path)
    assert len([w for w in rec if "step" in str(w.message)]) == 1
    steps, values = run.series("loss")
    assert steps.tolist() == [0, 2] and values.tolist() == [1.0, 5.0]
    run.metrics.append({"step": "xyz", "loss": 6.0})  # rows added by hand after loading
    assert run.series("loss")[0].tolist() == [0, 2]


def _numpy_step(value) -> int | None:
    """The independent rule: what NumPy itself accepts as an int64 step without loss."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        as64 = np.int64(value)
    except (OverflowError, ValueError):
        return None
    return int(as64) if as64 == value else None


@given(
    st.one_of(
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=True, allow_infinity=True, width=64),
        st.booleans(),
        st.text(max_size=4),
        st.none(),
    )
)
def test_step_of_keeps_exactly_the_steps_numpy_holds(value):
    assert step_of({"step": value}) == _numpy_step(value)


def test_report_survives_huge_and_hand_edited_steps(tmp_path):
    """Needs the page's reader (``dynmon.page.tail``) to skip such rows as ``load_run`` does."""
    (tmp_path / "metrics.jsonl").write_text(
        '{"step": 0, "loss": 1.0}\n{"step": 9223372036854775808, "loss": 2.0}\n'
        '{"step": "abc", "loss": 3.0}\n{"step": 1, "loss": 0.5}\n{"step": 2, "loss": 0.2}\n'
    )
    res = _cli("report", str(tmp_path))
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "index.html").is_file()


def test_report_on_a_read_only_run_folder(tmp_path):
    with _tmpfs("4m") as disk:
        _dynmon_run(disk / "run", steps=20)
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        res = _cli("report", str(disk / "run"))
        assert res.returncode != 0 and "read-only" in res.stderr and "--out" in res.stderr
        assert "Traceback" not in res.stderr
        res = _cli("report", str(disk / "run"), "--out", str(tmp_path / "report"))
        assert res.returncode == 0, res.stderr
        assert (tmp_path / "report" / "index.html").is_file()


def test_a_stale_lock_file_never_blocks(tmp_path):
    (tmp_path / LOCK_NAME).write_text("pid 999999 host gone\n")  # left by a killed writer
    with dynmon.Monitor(nn.Linear(2, 2), run_dir=tmp_path, metrics=[]) as mon:
        mon.step(0, loss=1.0)
    assert (tmp_path / LOCK_NAME).read_text().startswith(f"pid {os.getpid()}")
