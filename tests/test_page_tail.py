"""RunTail, the page's column reader: the same numbers as ``dynmon.load_run``, and each update
reads only what was appended since the last one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from page_runs import write_run

from dynmon.page import RunTail
from dynmon.runfolder import load_run
from dynmon.sinks.local import RunFolderSink


def assert_same_as_load_run(tail: RunTail, path) -> None:
    run = load_run(path)
    assert sorted(tail.keys()) == sorted(run.keys())
    for k in run.keys():
        s1, v1 = run.series(k)
        s2, v2 = tail.series(k)
        np.testing.assert_array_equal(s1, s2, err_msg=k)
        np.testing.assert_array_equal(v1, v2, err_msg=k)
    assert sorted(tail.array_names()) == sorted(run.array_names())
    for name in run.array_names():
        s1, a1 = run.array_series(name)
        s2, a2 = tail.array_series(name)
        np.testing.assert_array_equal(s1, s2)
        np.testing.assert_array_equal(a1, a2)
    assert tail.events == run.events and tail.config == run.config
    assert tail.summary == run.summary


def test_tail_reads_what_load_run_reads(tmp_path):
    path = write_run(tmp_path / "run")
    tail = RunTail(path)
    assert tail.update() > 0
    assert_same_as_load_run(tail, path)
    assert tail.step_range == (0, 199)


def test_non_finite_values_resumed_steps_and_text_cells(tmp_path):
    sink = RunFolderSink(tmp_path)
    for s in range(6):
        sink.write(s, {"loss": [1.0, float("nan"), float("inf"), -float("inf"), 2.0, 3.0][s]}, {})
    sink.write(4, {"loss": 9.0, "note": "resumed"}, {})  # a resumed run writes step 4 again
    sink.write(7, {"loss": None}, {"a": np.array([[1.0, float("nan")]])})
    sink.close()
    tail = RunTail(tmp_path)
    tail.update()
    assert_same_as_load_run(tail, tmp_path)
    steps, values = tail.series("loss")
    assert steps.tolist() == [0, 1, 2, 3, 4, 5, 7] and values[4] == 9.0


def test_update_reads_only_the_new_lines(tmp_path):
    path = write_run(tmp_path / "run", steps=40)
    tail = RunTail(path)
    first = tail.update()
    files = ("metrics.jsonl", "arrays.jsonl", "events.jsonl")
    assert first == tail.lines_read == sum(len((path / f).read_text().splitlines()) for f in files)
    # Rewrite an old line in place (same length): a reader that starts over would see it.
    metrics = path / "metrics.jsonl"
    text = metrics.read_text()
    old = json.loads(text.splitlines()[0])["loss"]
    marker = f"{old!r}"
    fake = "7" * len(marker.split(".")[0]) + marker[len(marker.split(".")[0]) :]
    metrics.write_text(text.replace(marker, fake, 1))
    with open(metrics, "a") as f:
        f.write(json.dumps({"step": 40, "loss": 0.5}) + "\n")
        f.write(json.dumps({"step": 41, "loss": 0.25}) + "\n")
    assert tail.update() == 2 and tail.lines_read == first + 2
    steps, values = tail.series("loss")
    assert values[0] == old  # never re-read
    assert steps[-2:].tolist() == [40, 41] and values[-2:].tolist() == [0.5, 0.25]
    assert tail.update() == 0  # nothing new


def test_a_line_being_written_waits_and_a_cut_line_is_skipped(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step":0,"loss":1.0}\n{"step":1,"lo')
    tail = RunTail(tmp_path)
    assert tail.update() == 1
    with open(metrics, "a") as f:
        f.write('ss":0.5}\n')
    assert tail.update() == 1 and tail.series("loss")[1].tolist() == [1.0, 0.5]
    with open(metrics, "a") as f:
        f.write('{"step":2,"lo\n{"step":3,"loss":0.25}\n')  # a killed writer's cut line
    with pytest.warns(RuntimeWarning, match="unreadable"):
        assert tail.update() == 2
    assert tail.series("loss")[0].tolist() == [0, 1, 3]


def test_config_and_summary_are_read_again_when_rewritten(tmp_path):
    sink = RunFolderSink(tmp_path)
    sink.write(0, {"loss": 1.0}, {})
    sink.write_summary({"a": 1})
    tail = RunTail(tmp_path)
    tail.update()
    assert tail.summary == {"a": 1}
    sink.write_summary({"b": 2})
    sink.close()
    tail.update()
    assert tail.summary == {"a": 1, "b": 2}


def test_bad_folders_say_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run folder"):
        RunTail(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        RunTail(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step":0,"loss":1}\n{"step":1,"loss":2}\n')
    tail = RunTail(tmp_path)
    tail.update()
    (tmp_path / "metrics.jsonl").write_text('{"step":0,"loss":1}\n')
    with pytest.raises(RuntimeError, match="shrank"):
        tail.update()
    assert tail.series("loss")[1].tolist() == [1.0, 2.0]  # what was read stays


def test_an_array_that_changes_shape_is_refused_by_name(tmp_path):
    sink = RunFolderSink(tmp_path)
    sink.write(0, {"loss": 1.0}, {"dynmon/erank/QK": np.ones((2, 2))})
    sink.write(1, {"loss": 1.0}, {"dynmon/erank/QK": np.ones((2, 3))})
    sink.close()
    tail = RunTail(tmp_path)
    tail.update()
    with pytest.raises(ValueError, match="dynmon/erank/QK.*changes shape"):
        tail.array_series("dynmon/erank/QK")
