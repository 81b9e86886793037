"""Write the interactive page of one run (``index.html`` + ``plotly.min.js``) and of several runs
compared; both read the run folders with ``RunTail``."""

from __future__ import annotations

import html
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dynmon.page.compare import compare_payload, differing_keys, flatten, seed_groups
from dynmon.page.payload import placed_events, run_payload
from dynmon.page.render import copy_plotly, events_table, page, table, write_atomic
from dynmon.page.roles import best_heads, icl_rows, role_events
from dynmon.page.summary import summary_tables
from dynmon.page.tail import RunTail

INDEX = "index.html"


def _rel(target: Path, start: Path) -> str:
    """``target`` relative to ``start`` with forward slashes (an ``src``/``href`` that works
    from ``file://``)."""
    return Path(os.path.relpath(target.resolve(), start.resolve())).as_posix()


def pack_figures(run_dir: Path) -> list[Path]:
    """PNGs the pack drew into ``plots/`` itself (not the report's own figures)."""
    from dynmon.report import FIGURES

    own = {f"{name}.png" for name, _, _ in FIGURES}
    plots = run_dir / "plots"
    return sorted(p for p in plots.glob("*.png") if p.name not in own) if plots.is_dir() else []


def _figures(paths: Sequence[tuple[str, str]]) -> str:
    return "".join(
        f'<figure><img src="{html.escape(src)}" alt="{html.escape(cap)}" loading="lazy">'
        f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        for src, cap in paths
    )


def run_page(
    tail: RunTail,
    out: Path,
    static: Sequence[tuple[str, str]] = (),
    failed: Sequence[str] = (),
    refresh: float | None = None,
) -> str:
    """The HTML of one run's page. ``static``: the report's PNGs as ``(src, caption)``, relative
    to ``out``; ``failed``: figures that could not be drawn; ``refresh``: reload period (s)."""
    payload = run_payload(tail)
    rng = tail.step_range
    span = f"steps {rng[0]}–{rng[1]}" if rng else "no steps logged yet"
    subtitle = f"{html.escape(str(tail.path))} · {span} · {len(tail.events)} events"
    subtitle += f" · {len(tail.keys())} keys"
    if refresh:
        subtitle += f" · watching: updated {time.strftime('%H:%M:%S')}, reloads every {refresh:g} s"
    sections: list[tuple[str, str, str]] = []
    packs = [(_rel(p, out), p.stem) for p in pack_figures(tail.path)]
    if packs:
        sections.append(("pack", "The pack's own figures", _figures(packs)))
    sections.append(("events", "Events", events_table(placed_events(tail.events))))
    best = best_heads(tail)
    if best:  # head_roles ran: best head per role, formation events, in-context score
        body = "<h3>Best head per role (last look)</h3>"
        body += table(["role", "head", "score", "step"], best)
        formed = role_events(tail.events)
        body += "<h3>Formation events</h3>" + table(["at", "kind", "role", "head", "score"], formed)
        icl = icl_rows(tail)
        if icl:
            body += "<h3>In-context score (repeated − first-occurrence loss)</h3>"
            body += table(["", "step", "icl_score"], icl)
        sections.append(("roles", "Head roles", body))
    grouped = "".join(
        f"<h3>{html.escape(title)}</h3>" + table(head, rows)
        for title, head, rows in summary_tables(tail.summary)
    )
    sections.append(("summary", "Summary", grouped or '<p class="empty">none</p>'))
    sections.append(
        ("config", "Configuration", table(["key", "value"], list(flatten(tail.config).items())))
    )
    if static:
        body = "<details><summary>the report's PNG figures (for papers)</summary>"
        sections.append(("static", "Static figures", body + _figures(static) + "</details>"))
    if failed:
        items = "".join(f"<li>{html.escape(f)}</li>" for f in failed)
        sections.append(("failed", "Figures that failed", f"<ul>{items}</ul>"))
    return page(tail.name, subtitle, payload, sections, refresh)


def write_run_page(
    run_dir: str | Path,
    out: str | Path | None = None,
    *,
    tail: RunTail | None = None,
    static: Sequence[tuple[str, str]] = (),
    failed: Sequence[str] = (),
    refresh: float | None = None,
) -> Path:
    """Write ``<out>/index.html`` (``out`` defaults to the run folder) and ``plotly.min.js``
    beside it; pass ``tail`` to reuse a reader that already holds the run (``--watch``)."""
    if tail is None:
        tail = RunTail(run_dir)
        tail.update()
    out = Path(out) if out is not None else Path(run_dir)
    out.mkdir(parents=True, exist_ok=True)
    copy_plotly(out)
    index = out / INDEX
    write_atomic(index, run_page(tail, out, static, failed, refresh))
    return index


def _names(paths: Sequence[Path]) -> list[str]:
    """Short unique names: the folder name, with parents added until no two runs share one."""
    depth = 1
    while True:
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


def write_compare_page(run_dirs: Sequence[str | Path], out: str | Path) -> Path:
    """Write ``<out>/index.html`` comparing the runs: curves overlaid, seed groups as median and
    band, differing config keys, events per run."""
    paths = [Path(p) for p in run_dirs]
    if len(paths) < 2:
        raise ValueError(
            f"compare needs at least two run folders, got {len(paths)}; for one run use "
            "`dynmon report RUN_DIR`"
        )
    if len({p.resolve() for p in paths}) < len(paths):
        raise ValueError("compare got the same run folder twice; list each run once")
    tails = []
    for p in paths:
        t = RunTail(p)
        t.update()
        tails.append(t)
    names = _names(paths)
    configs = [t.config for t in tails]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    payload = compare_payload(tails, names, configs)
    diff = differing_keys(configs)
    flats = [flatten(c) for c in configs]
    missing = "—"
    config_rows = [[k, *(flats[i].get(k, missing) for i in range(len(paths)))] for k in diff]
    groups = seed_groups(configs)
    group_rows = [
        [f"group {g + 1}", ", ".join(names[i] for i in members), len(members)]
        for g, members in enumerate(groups)
    ]
    runs_rows: list[list[Any]] = []
    for name, t, p in zip(names, tails, paths, strict=True):
        rng = t.step_range
        link = p / INDEX
        runs_rows.append([name, str(p), f"{rng[0]}–{rng[1]}" if rng else "", len(t.events),
                          _rel(link, out) if link.is_file() else "no page yet"])  # fmt: skip
    events = "".join(
        f"<h3>{html.escape(name)}</h3>" + events_table(placed_events(t.events))
        for name, t in zip(names, tails, strict=True)
    )
    sections = [
        ("runs", "Runs", table(["run", "folder", "steps", "events", "own page"], runs_rows)),
        ("groups", "Seed groups", table(["group", "runs", "seeds"], group_rows)),
        ("diff", "Config keys that differ", table(["key", *names], config_rows)),
        ("events", "Events per run", events),
    ]
    subtitle = html.escape(f"{len(paths)} runs in {len(groups)} group(s)")
    index = out / INDEX
    copy_plotly(out)
    write_atomic(index, page("compare: " + ", ".join(names), subtitle, payload, sections))
    return index
