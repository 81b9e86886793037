"""Reading a run folder back: series alignment, the NaN convention, cut lines, naming new runs."""

from __future__ import annotations

import enum
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynmon.runfolder import jsonable, load_run, new_run_dir, restore, write_hindsight


def _write(path: Path, rows: list, raw_tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + raw_tail)


def test_series_skips_absent_steps_sorts_and_keeps_the_last_write(tmp_path):
    _write(
        tmp_path / "metrics.jsonl",
        [
            {"step": 0, "loss": 3.0},
            {"step": 1, "loss": 2.0, "acc": 0.1},
            {"step": 2, "loss": 1.5},
            {"step": 1, "loss": 2.5},  # a resumed run re-logs step 1
            {"step": 3, "acc": "NaN", "loss": None},
        ],
    )
    run = load_run(tmp_path)
    steps, loss = run.series("loss")
    assert steps.tolist() == [0, 1, 2, 3] and steps.dtype == np.int64
    assert loss[:3].tolist() == [3.0, 2.5, 1.5] and math.isnan(loss[3])
    steps, acc = run.series("acc")
    assert steps.tolist() == [1, 3] and acc[0] == 0.1 and math.isnan(acc[1])
    assert run.keys() == ["loss", "acc"]
    empty_steps, empty = run.series("missing")
    assert empty_steps.shape == (0,) and empty.shape == (0,)
    assert run.config == {} and run.events == [] and run.summary == {}
    assert run.name == tmp_path.name


def test_array_series_stacks_steps(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    _write(
        tmp_path / "arrays.jsonl",
        [
            {"step": 10, "a": [[1, 2], [3, "NaN"]], "b": [1, 2, 3]},
            {"step": 5, "a": [[0, 0], [0, "-Infinity"]]},
        ],
    )
    run = load_run(tmp_path)
    steps, a = run.array_series("a")
    assert steps.tolist() == [5, 10] and a.shape == (2, 2, 2)
    assert a[0, 1, 1] == -math.inf and math.isnan(a[1, 1, 1]) and a[1, 0, 1] == 2
    steps, b = run.array_series("b")
    assert steps.tolist() == [10] and b.shape == (1, 3)
    assert run.array_names() == ["a", "b"]
    assert run.array_series("none")[0].shape == (0,)


def test_array_series_refuses_changing_shapes(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    _write(tmp_path / "arrays.jsonl", [{"step": 0, "a": [1, 2]}, {"step": 1, "a": [1, 2, 3]}])
    with pytest.raises(ValueError, match="changes shape"):
        load_run(tmp_path).array_series("a")


def test_cut_last_line_is_skipped_with_a_warning(tmp_path):
    _write(tmp_path / "metrics.jsonl", [{"step": 0, "loss": 1.0}], raw_tail='{"step": 1, "lo')
    with pytest.warns(RuntimeWarning, match="skipped 1 unreadable line"):
        run = load_run(tmp_path)
    assert [r["step"] for r in run.metrics] == [0]


def test_python_nan_tokens_also_read_back(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "loss": NaN, "g": Infinity}\n')
    run = load_run(tmp_path)
    assert math.isnan(run.series("loss")[1][0]) and run.series("g")[1][0] == math.inf


def test_missing_folder_or_metrics_file_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run folder.*metrics.jsonl"):
        load_run(tmp_path / "absent")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="has no metrics.jsonl"):
        load_run(tmp_path)


class Color(enum.Enum):
    RED = "red"


@dataclass(frozen=True)
class Cfg:
    lr: float = 1e-3
    path: Path = Path("/data/x")
    color: Color = Color.RED
    shape: tuple = (2, 4)


def test_jsonable_covers_configs_and_tensors():
    out = jsonable(
        {
            "cfg": Cfg(),
            1: np.float32(0.5),
            "t": torch.tensor([1.0, float("nan")]),
            "i": torch.tensor([1, 2]),
            "b": np.bool_(True),
            "n": np.int64(3),
            "s": {3, 1},
            "a": np.array([[np.inf, 1.0]]),
            "f": len,
            "cls": Cfg,
        }
    )
    assert out["cfg"] == {"lr": 1e-3, "path": "/data/x", "color": "red", "shape": [2, 4]}
    assert out["1"] == 0.5 and out["t"] == [1.0, "NaN"] and out["i"] == [1, 2]
    assert out["b"] is True and out["n"] == 3 and out["s"] == [1, 3]
    assert out["a"] == [["Infinity", 1.0]] and out["f"].startswith("<built-in")
    assert out["cls"].endswith("test_runfolder.Cfg")
    json.dumps(out, allow_nan=False)  # strict JSON
    back = restore(out)
    assert math.isnan(back["t"][1]) and back["a"][0][0] == math.inf


def test_new_run_dir_is_unique_and_timestamped(tmp_path):
    made = [new_run_dir(tmp_path) for _ in range(3)]
    assert len(set(made)) == 3 and all(p.is_dir() for p in made)
    assert re.fullmatch(r"\d{8}-\d{6}", made[0].name)
    assert all(re.fullmatch(r"\d{8}-\d{6}(-\d+)?", p.name) for p in made)
    named = new_run_dir(tmp_path / "deeper", prefix="grokking-quick")
    assert named.parent == tmp_path / "deeper" and named.name.startswith("grokking-quick-")


_leaf = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(10**6), 10**6),
    st.text(alphabet="abc", max_size=3),
    st.none(),
)
_tree = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text("xyz", max_size=2), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(_tree)
def test_jsonable_keeping_nonfinite_floats_is_the_decoded_encoding(value):
    """The Monitor's form (NaN floats kept) equals the run folder's form read back by restore."""
    plain = jsonable(value, encode_nonfinite=False)
    assert json.dumps(plain) == json.dumps(restore(jsonable(value)))


def test_jsonable_keeping_nonfinite_floats_in_arrays_tensors_and_configs():
    value = {
        "cfg": Cfg(lr=float("nan")),
        "t": torch.tensor([1.0, float("inf")]),
        "a": np.array([[np.nan, 1.0]]),
        "n": np.int64(3),
        "s": torch.tensor(float("-inf")),
    }
    plain = jsonable(value, encode_nonfinite=False)
    assert math.isnan(plain["cfg"]["lr"]) and plain["cfg"]["path"] == "/data/x"
    assert plain["t"] == [1.0, math.inf] and plain["n"] == 3 and plain["s"] == -math.inf
    assert math.isnan(plain["a"][0][0]) and plain["a"][0][1] == 1.0
    assert all(type(x) is float for x in (plain["t"][1], plain["a"][0][0], plain["s"]))


_finite_or_not = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64), st.integers(-(2**40), 2**40)
)


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.integers(0, 10**9),
        st.dictionaries(st.sampled_from(["a", "b/c", "dist_final/L0.QK"]), _finite_or_not),
        max_size=6,
    )
)
def test_hindsight_round_trip_restores_every_value_nan_included(tmp_path_factory, by_step):
    """What ``write_hindsight`` writes, ``hindsight_series`` reads back exactly (NaN, ±inf too)."""
    folder = tmp_path_factory.mktemp("run")
    (folder / "metrics.jsonl").write_text("")
    rows = [{"step": s, **vals} for s, vals in by_step.items()]
    write_hindsight(folder, rows)
    for line in (folder / "hindsight.jsonl").read_text().splitlines():  # strict JSON only
        json.loads(line, parse_constant=lambda tok: pytest.fail(f"bare {tok} written"))
    run = load_run(folder)
    for key in {k for vals in by_step.values() for k in vals}:
        want = sorted((s, float(vals[key])) for s, vals in by_step.items() if key in vals)
        steps, values = run.hindsight_series(key)
        assert steps.tolist() == [s for s, _ in want]
        np.testing.assert_array_equal(values, np.array([v for _, v in want], dtype=np.float64))
    assert set(run.hindsight_keys()) == {k for vals in by_step.values() for k in vals}


def test_hindsight_older_null_and_bare_nan_read_as_nan(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    (tmp_path / "hindsight.jsonl").write_text('{"step": 2, "x": null}\n{"step": 1, "x": NaN}\n')
    steps, x = load_run(tmp_path).hindsight_series("x")
    assert steps.tolist() == [1, 2] and np.isnan(x).all()


def test_write_hindsight_refuses_a_row_without_a_step_and_keeps_the_old_file(tmp_path):
    write_hindsight(tmp_path, [{"step": 0, "x": 1.0}])
    before = (tmp_path / "hindsight.jsonl").read_text()
    with pytest.raises(ValueError, match="row 1 has no integer 'step'"):
        write_hindsight(tmp_path, [{"step": 1, "x": 2.0}, {"x": 3.0}])
    assert (tmp_path / "hindsight.jsonl").read_text() == before
