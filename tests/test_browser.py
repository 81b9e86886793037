"""The report page in a real headless Chromium (Debian's, driven by playwright), opened from
``file://`` with every network request refused: it loads without console errors, shows its
panels, the step slider changes the heatmap, hovering an event shows its text, and ``compare`` on
three seeds draws three curves and a band. Screenshots go to each test's temp folder.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``; ``.ci/run`` installs it) and the
``playwright`` package (the ``dev`` extra); never ``playwright install``. Under CI (``CI`` set)
a missing browser fails instead of skipping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from page_runs import write_run

from dynmon.cli import main

CHROMIUM = Path(os.environ.get("DYNMON_CHROMIUM", "/usr/bin/chromium"))
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _missing() -> str | None:
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One headless Chromium with a fresh profile; requests other than file:// are refused and
    recorded in ``browser.blocked``."""
    missing = _missing()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests cannot run in CI: {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright

    profile = tmp_path_factory.mktemp("chromium-profile")
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=str(CHROMIUM),
            headless=True,
            args=FLAGS,
            offline=True,
            viewport={"width": 1280, "height": 900},
        )
        context.blocked = []

        def only_files(route):
            if route.request.url.startswith("file://"):
                route.continue_()
            else:
                context.blocked.append(route.request.url)
                route.abort()

        context.route("**/*", only_files)
        yield context
        context.close()


def open_page(browser, index: Path):
    """Open ``index`` and wait until every plot is drawn; returns (page, console errors)."""
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(index.resolve().as_uri())
    page.wait_for_selector("body[data-ready='1']", timeout=60_000)
    return page, errors


@pytest.fixture(scope="module")
def grokking_run(tmp_path_factory) -> Path:
    """The grokking pack's quick preset cut to 150 steps (memorisation at ~100), through the CLI."""
    out = tmp_path_factory.mktemp("packs") / "grokking"
    argv = ["run", "grokking", "--preset", "quick", "--set", "steps=150", "--out", str(out)]
    assert main(argv) == 0
    return out


def trace_names(page, selector: str) -> list[str]:
    return page.eval_on_selector(selector, "gd => gd.data.map(t => t.name)")


def test_pack_page_loads_offline_with_its_panels(browser, grokking_run, tmp_path):
    page, errors = open_page(browser, grokking_run / "index.html")
    try:
        page.screenshot(path=tmp_path / "grokking_page.png", full_page=True)
        assert errors == [] and browser.blocked == []
        for section in ("curves", "circuits", "heatmaps", "curvature", "events", "config"):
            assert page.locator(f"section#{section}").count() == 1, section
        assert page.locator("#curves .js-plotly-plot").count() >= 2  # loss, accuracies
        assert "train/loss" in trace_names(page, "#curves .js-plotly-plot")
        for metric in ("erank", "subspace_dist"):
            assert page.locator(f"#metric-{metric} .js-plotly-plot").count() == 1
            assert page.locator(f"#heat-{metric} .js-plotly-plot").count() == 2  # QK, OV
        # the layer/head selector redraws the panel with that head's QK and OV
        page.select_option("#metric-erank select", "L0.H2")
        page.wait_for_function(
            "() => document.querySelector('#metric-erank .js-plotly-plot').data"
            ".some(t => t.name === 'L0.H2 QK')"
        )
        assert set(trace_names(page, "#metric-erank .js-plotly-plot")) >= {"L0.H2 QK", "L0.H2 OV"}
        assert "memorization" in page.inner_text("#events")
        assert page.locator("img[src='plots/loss.png']").count() == 1  # the static PNGs stay
    finally:
        page.close()


def test_step_slider_changes_the_heatmap(browser, grokking_run, tmp_path):
    page, errors = open_page(browser, grokking_run / "index.html")
    try:
        box = page.locator("#heat-erank")
        plot = box.locator(".js-plotly-plot").first
        box.scroll_into_view_if_needed()
        before_z = plot.evaluate("gd => gd.data[0].z")
        before_label = box.locator(".step").inner_text()
        plot.screenshot(path=tmp_path / "heatmap_last_step.png")
        slider = box.locator("input[type=range]")
        slider.focus()
        page.keyboard.press("Home")  # the first look, as a person would move it
        page.wait_for_function("() => document.querySelector('#heat-erank').dataset.frame === '0'")
        plot.screenshot(path=tmp_path / "heatmap_first_step.png")
        after_z = plot.evaluate("gd => gd.data[0].z")
        assert after_z != before_z
        assert box.locator(".step").inner_text().startswith("step 0 ")
        assert before_label != box.locator(".step").inner_text()
        first = (tmp_path / "heatmap_first_step.png").read_bytes()
        assert first != (tmp_path / "heatmap_last_step.png").read_bytes()  # the pixels changed
        assert errors == []
    finally:
        page.close()


def test_hovering_an_event_shows_its_text(browser, grokking_run, tmp_path):
    page, errors = open_page(browser, grokking_run / "index.html")
    try:
        plot = page.locator("#curves .js-plotly-plot").first
        texts = plot.evaluate("gd => gd.data.find(t => t.name === 'events').hovertext")
        at = next(i for i, t in enumerate(texts) if t.startswith("memorization"))
        # the events trace is the plot's last scatter trace: one marker per event
        marker = plot.locator(".scatterlayer .trace").last.locator("path.point").nth(at)
        marker.scroll_into_view_if_needed()
        box = marker.bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        label = page.locator(".hoverlayer .hovertext")
        label.wait_for(timeout=5_000)
        text = label.text_content()
        plot.screenshot(path=tmp_path / "event_hover.png")
        logged = [json.loads(x) for x in (grokking_run / "events.jsonl").read_text().splitlines()]
        event = next(e for e in logged if e["kind"] == "memorization")  # what the run recorded
        assert f"memorization at step {event['at']}" in text and event["message"] in text
        assert errors == []
    finally:
        page.close()


def test_compare_three_seeds_shows_three_curves_and_a_band(browser, tmp_path):
    runs = [write_run(tmp_path / f"seed{i}", steps=300, seed=i) for i in range(3)]
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "compare")]) == 0
    page, errors = open_page(browser, tmp_path / "compare" / "index.html")
    try:
        plot = page.locator("#compare-curves .js-plotly-plot")
        plot.screenshot(path=tmp_path / "compare_seeds.png")
        names = trace_names(page, "#compare-curves .js-plotly-plot")
        assert {"seed0", "seed1", "seed2"} <= set(names)
        band = "group 1 (3 seeds): min-max band"
        assert band in names and "group 1 (3 seeds): median" in names
        # drawn, not only listed: one SVG line per seed, and a filled band area
        lines = plot.locator(".scatterlayer .trace .js-line")
        drawn = [lines.nth(i).get_attribute("d") or "" for i in range(lines.count())]
        assert sum(len(d) > 50 for d in drawn) >= 4  # three seeds and the median
        fills = plot.locator(".scatterlayer .trace .js-fill")
        assert any(len(fills.nth(i).get_attribute("d") or "") > 50 for i in range(fills.count()))
        assert "run.seed" in page.inner_text("#diff")
        assert errors == [] and browser.blocked == []
    finally:
        page.close()


def test_linear_icl_page_shows_the_packs_own_figure(browser, tmp_path):
    out = tmp_path / "licl"
    assert main(["run", "linear-icl", "--preset", "merged-quick", "--out", str(out)]) == 0
    page, errors = open_page(browser, out / "index.html")
    try:
        img = page.locator("section#pack img")
        img.scroll_into_view_if_needed()
        page.wait_for_function("() => document.querySelector('section#pack img').complete")
        assert img.evaluate("i => i.naturalWidth") > 100  # decoded from plots/linear_icl.png
        assert "cliff" in page.inner_text("#events")
        page.screenshot(path=tmp_path / "linear_icl_page.png", full_page=True)
        assert errors == [] and browser.blocked == []
    finally:
        page.close()


def test_watched_page_reloads_with_new_steps_and_keeps_the_choice(browser, tmp_path):
    from dynmon.page import RunTail, write_run_page
    from dynmon.sinks.local import RunFolderSink

    run = write_run(tmp_path / "run", steps=50)
    tail = RunTail(run)
    tail.update()
    index = write_run_page(run, tail=tail, refresh=2)  # what `report --watch` writes
    page, errors = open_page(browser, index)
    try:
        page.select_option("#metric-erank select", "L1.H0")
        sink = RunFolderSink(run)  # the run goes on: steps 50..59
        for s in range(50, 60):
            sink.write(s, {"loss": 0.5}, {})
        sink.close()
        tail.update()
        with page.expect_navigation(timeout=15_000):  # the page reloads itself
            write_run_page(run, tail=tail, refresh=2)
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        last = page.eval_on_selector(
            "#curves .js-plotly-plot", "gd => Math.max(...gd.data.find(t => t.name === 'loss').x)"
        )
        assert last == 59
        assert page.eval_on_selector("#metric-erank select", "s => s.value") == "L1.H0"
        assert errors == []
    finally:
        page.close()
