"""The page's data and files, without a browser: the numbers embedded in index.html against
``load_run`` and NumPy, seed groups and bands, the compare and watch commands."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from page_runs import write_run

from dynmon.cli import main
from dynmon.page import RunTail, envelope, watch, write_compare_page, write_run_page
from dynmon.page.compare import differing_keys, seed_groups, seed_stats
from dynmon.page.render import PLOTLY_JS, plotly_source
from dynmon.report import make_report
from dynmon.runfolder import load_run
from dynmon.sinks.local import RunFolderSink


def embedded(index: Path) -> dict:
    """The payload JSON the page's script reads."""
    text = index.read_text(encoding="utf-8")
    m = re.search(r'<script type="application/json" id="dynmon-data">(.*?)</script>', text, re.S)
    assert m, "no payload in the page"
    return json.loads(m.group(1).replace("<\\/", "</"))


def stored(payload: dict, ref: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    s = payload["store"][ref]
    x = np.array(payload["xs"][s["x"]], dtype=float)
    lo = np.array(s.get("y", s.get("lo")), dtype=float)
    hi = np.array(s.get("y", s.get("hi")), dtype=float)
    return x, lo, hi


def test_page_numbers_match_load_run(tmp_path):
    path = write_run(tmp_path / "run", steps=1200)  # loss: 1200 points, downsampled
    index = make_report(path, png=False)
    assert (path / PLOTLY_JS).read_bytes() == plotly_source().read_bytes()
    assert not (path / "plots").exists()  # png=False draws no PNG
    payload = embedded(index)
    run = load_run(path)
    steps, loss = run.series("loss")
    env = envelope(steps, loss)
    assert not env.exact
    x, lo, hi = stored(payload, "loss")
    np.testing.assert_allclose(x, env.x, rtol=1e-6)
    np.testing.assert_allclose(lo, env.lo, rtol=1e-5)
    np.testing.assert_allclose(hi, env.hi, rtol=1e-5)
    # a head kept whole (120 looks), and its heatmap frames equal the logged arrays
    x, y, _ = stored(payload, "dynmon/erank/L1.H2.QK")
    s, v = run.series("dynmon/erank/L1.H2.QK")
    np.testing.assert_array_equal(x, s)
    np.testing.assert_allclose(y, v, rtol=1e-5)
    heat = next(h for h in payload["heatmaps"] if h["metric"] == "erank")
    a_steps, grids = run.array_series("dynmon/erank/OV")
    frames = np.array(heat["z"]["OV"], dtype=float)  # [F, L, H]
    at = np.searchsorted(a_steps, heat["steps"])
    np.testing.assert_allclose(frames, grids[at], rtol=1e-5)
    lowest = min(np.nanmin(run.array_series(f"dynmon/erank/{c}")[1]) for c in ("QK", "OV"))
    assert heat["zmin"] == pytest.approx(lowest, rel=1e-6)  # one colour scale for every frame
    # panels and their selectors
    panels = {p["id"]: p for p in payload["panels"]}
    erank = panels["metric-erank"]
    assert erank["options"][:2] == ["layer means", "L0 (each head)"] and "L1.H2" in erank["options"]
    assert {line["name"] for line in erank["lines"]["L1.H2"]} == {"L1.H2 QK", "L1.H2 OV"}
    assert "curvature-0" in panels and panels["curvature-0"]["options"] == ["sharpness"]
    events = payload["events"]["marks"]
    cliff = next(e for e in events if e["kind"] == "cliff")
    assert cliff["x"] == 600 and "loss fell off a cliff" in cliff["text"]  # placed at "at"
    assert payload["events"]["spans"] == [[10, 592]]
    text = index.read_text()
    assert "http://" not in text and "https://" not in text  # nothing fetched from a network
    assert 'src="plotly.min.js"' in text


def test_heatmap_from_per_head_keys_when_no_arrays(tmp_path):
    path = write_run(tmp_path / "run", steps=100, arrays=False)
    payload = embedded(write_run_page(path))
    heat = next(h for h in payload["heatmaps"] if h["metric"] == "subspace_dist")
    run = load_run(path)
    s, v = run.series("dynmon/subspace_dist/L0.H1.OV")
    frames = np.array(heat["z"]["OV"], dtype=float)
    np.testing.assert_allclose(frames[:, 0, 1], v[np.searchsorted(s, heat["steps"])], rtol=1e-5)
    assert heat["zmin"] == 0.0 and heat["zmax"] == 1.0  # distances keep their 0..1 scale


def test_layer_means_computed_from_arrays_when_no_keys(tmp_path):
    path = write_run(tmp_path / "run", steps=60, head_keys=False)
    payload = embedded(write_run_page(path))
    s, grid = load_run(path).array_series("dynmon/erank/QK")
    x, y, _ = stored(payload, "dynmon/erank/L1.QK")
    np.testing.assert_array_equal(x, s)
    np.testing.assert_allclose(y, grid[:, 1, :].mean(axis=1), rtol=1e-5)


def test_pack_figures_and_static_pngs_are_on_the_page(tmp_path):
    path = write_run(tmp_path / "run", steps=60)
    (path / "plots").mkdir()
    (path / "plots" / "induction.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    index = make_report(path, tmp_path / "out")
    text = index.read_text()
    assert 'src="../run/plots/induction.png"' in text and "The pack&#x27;s own figures" in text
    assert 'src="plots/loss.png"' in text and (tmp_path / "out" / "plots" / "loss.png").is_file()


def test_seed_statistics_against_numpy(tmp_path):
    a = (np.array([0, 10, 20, 30]), np.array([1.0, 2.0, 3.0, 4.0]))
    b = (np.array([0, 5, 30, 40]), np.array([2.0, 2.0, 2.0, 9.0]))
    c = (np.array([0, 20, 30]), np.array([0.0, 4.0, 6.0]))
    steps, median, low, high = seed_stats([a, b, c])
    assert steps.tolist() == [0, 5, 10, 20, 30]  # union of steps, within every seed's range
    stack = np.stack([np.interp(steps, *a), np.interp(steps, *b), np.interp(steps, *c)])
    np.testing.assert_array_equal(median, np.median(stack, axis=0))
    np.testing.assert_array_equal(low, stack.min(axis=0))
    np.testing.assert_array_equal(high, stack.max(axis=0))
    assert seed_stats([a]) is None
    assert seed_stats([(np.array([0, 1]), np.ones(2)), (np.array([5, 6]), np.ones(2))]) is None


def test_groups_and_differing_keys():
    configs = [
        {"run": {"seed": 0, "lr": 0.1}, "dynmon": {"run_dir": "runs/a"}},
        {"run": {"seed": 1, "lr": 0.1}, "dynmon": {"run_dir": "runs/b"}},
        {"run": {"seed": 0, "lr": 0.2}, "extra": True},
    ]
    assert seed_groups(configs) == [[0, 1], [2]]
    assert differing_keys(configs) == ["run.seed", "run.lr", "dynmon.run_dir", "extra"]


def test_compare_three_seeds_and_another_config(tmp_path):
    runs = [write_run(tmp_path / f"s{i}", steps=150, seed=i) for i in range(3)]
    other = write_run(tmp_path / "lr", steps=150, seed=0, lr=0.1)
    assert main(["compare", *map(str, runs), str(other), "--out", str(tmp_path / "cmp")]) == 0
    index = tmp_path / "cmp" / "index.html"
    payload = embedded(index)
    assert payload["groups"] == [["s0", "s1", "s2"], ["lr"]]
    curves = next(p for p in payload["panels"] if p["id"] == "compare-curves")
    assert curves["default"] == "loss"
    lines = curves["lines"]["loss"]
    names = [line["name"] for line in lines]
    assert names[0] == "group 1 (3 seeds): min-max band" and lines[0]["band"]
    assert {"s0", "s1", "s2", "lr", "group 1 (3 seeds): median"} <= set(names)
    # the band and median equal NumPy over the three seeds' loss (same steps: no interpolation)
    losses = np.stack([load_run(r).series("loss")[1] for r in runs])
    x, lo, hi = stored(payload, lines[0]["ref"])
    np.testing.assert_allclose(lo, losses.min(axis=0), rtol=1e-5)
    np.testing.assert_allclose(hi, losses.max(axis=0), rtol=1e-5)
    median = next(line for line in lines if line["name"].endswith("median"))
    np.testing.assert_allclose(stored(payload, median["ref"])[1], np.median(losses, 0), rtol=1e-5)
    text = index.read_text()
    assert "run.seed" in text and "run.lr" in text  # the differing keys table
    for i in range(3):
        assert f"loss fell off a cliff (seed {i})" in text  # events per run


def test_compare_refuses_one_run_and_missing_folders(tmp_path, capsys):
    run = write_run(tmp_path / "a", steps=20)
    assert main(["compare", str(run), "--out", str(tmp_path / "o")]) == 2
    assert "at least two run folders" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="no run folder"):
        main(["compare", str(run), str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    with pytest.raises(ValueError, match="twice"):
        write_compare_page([run, run], tmp_path / "o")


def test_report_cli_no_png(tmp_path, capsys):
    run = write_run(tmp_path / "a", steps=20)
    assert main(["report", str(run), "--no-png"]) == 0
    assert "report at" in capsys.readouterr().out
    assert (run / "index.html").is_file() and not (run / "plots").exists()


def test_watch_rewrites_the_page_as_the_run_grows(tmp_path):
    sink = RunFolderSink(tmp_path / "run")
    sink.write(0, {"loss": 1.0}, {})
    writes: list[tuple[int, int, str]] = []
    stop = threading.Event()

    def on_write(index: Path, tail: RunTail) -> None:
        writes.append((tail.lines_read, int(tail.step_range[1]), index.read_text()))

    thread = threading.Thread(
        target=watch,
        args=(tmp_path / "run",),
        kwargs={"interval": 0.05, "stop": stop.is_set, "on_write": on_write},
    )
    thread.start()
    try:
        for s in range(1, 4):
            deadline = time.monotonic() + 10
            while not writes or writes[-1][1] < s - 1:
                assert time.monotonic() < deadline, "the watcher did not write the page"
                time.sleep(0.02)
            sink.write(s, {"loss": 1.0 / (1 + s)}, {})
        deadline = time.monotonic() + 10
        while writes[-1][1] < 3:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        stop.set()
        thread.join(10)
        sink.close()
    assert [w[0] for w in writes][-1] == 4  # 4 lines in all: each was read once
    assert 'http-equiv="refresh"' in writes[0][2]  # the browser reloads while watching
    final = (tmp_path / "run" / "index.html").read_text()
    assert 'http-equiv="refresh"' not in final  # the last page stays put
    x, y, _ = stored(embedded(tmp_path / "run" / "index.html"), "loss")
    assert x.tolist() == [0, 1, 2, 3] and y[-1] == pytest.approx(0.25)


def test_watch_rejects_a_bad_interval(tmp_path):
    write_run(tmp_path / "run", steps=5)
    with pytest.raises(ValueError, match="interval"):
        watch(tmp_path / "run", interval=0)


def test_compare_bands_from_arrays_only_runs(tmp_path):
    """Runs that logged per-head arrays but no per-head keys: the seed band of a layer mean is
    computed from the arrays."""
    runs = [write_run(tmp_path / f"s{i}", steps=60, seed=i, head_keys=False) for i in range(3)]
    payload = embedded(write_compare_page(runs, tmp_path / "cmp"))
    erank = next(p for p in payload["panels"] if p["id"] == "compare-erank")
    band = next(line for line in erank["lines"]["L1"] if line.get("band") and "QK" in line["name"])
    layer_means = np.stack(
        [load_run(r).array_series("dynmon/erank/QK")[1][:, 1, :].mean(axis=1) for r in runs]
    )
    _, lo, hi = stored(payload, band["ref"])
    np.testing.assert_allclose(lo, layer_means.min(axis=0), rtol=1e-5)
    np.testing.assert_allclose(hi, layer_means.max(axis=0), rtol=1e-5)


def test_an_empty_run_and_hostile_text_still_make_a_valid_page(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("")
    index = write_run_page(tmp_path)
    assert "no steps logged yet" in index.read_text() and embedded(index)["panels"] == []
    sink = RunFolderSink(tmp_path)
    sink.write(0, {"loss": float("nan"), "acc": 0.5}, {})
    sink.write(1, {"loss": 2.0, "acc": 0.75}, {})
    evil = "</script><script>alert(1)</script>"
    sink.write_event({"kind": "cliff", "step": 1, "at": 1, "key": "loss", "message": evil})
    sink.close()
    index = write_run_page(tmp_path)
    payload = embedded(index)  # the JSON block was not cut short by the message
    assert any(evil in m["text"] for m in payload["events"]["marks"])
    _, y, _ = stored(payload, "loss")
    assert np.isnan(y[0]) and y[1] == 2.0  # NaN travels as null, a gap in the line
    assert "<script>alert(1)" not in index.read_text().split('id="dynmon-data"')[0]  # escaped
