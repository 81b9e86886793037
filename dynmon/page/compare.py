"""Several runs on one page: curves overlaid, runs that differ only in their seed drawn as a
group (each seed thin, the median bold, the min-max band shaded), the config keys that differ
shown as a table and the events listed per run."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from dynmon.page.envelope import BINS, envelope_bounds
from dynmon.page.keys import is_location_key, is_seed_key, plan_keys
from dynmon.page.payload import (
    CIRCUIT_DASH,
    LABELS,
    PALETTE,
    Source,
    Store,
    event_marks,
    head_grid,
    line,
    metric_series,
    nanmean,
    panel,
    user_groups,
)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``{"a.b.c": value}`` (lists kept whole)."""
    if isinstance(d, dict) and d:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: d} if prefix else {}


def differing_keys(configs: Sequence[dict[str, Any]]) -> list[str]:
    """Flattened config keys whose value is not the same in every run (missing counts)."""
    flats = [flatten(c) for c in configs]
    keys = list(dict.fromkeys(k for f in flats for k in f))
    missing = object()
    return [k for k in keys if len({repr(f.get(k, missing)) for f in flats}) > 1]


def seed_groups(configs: Sequence[dict[str, Any]]) -> list[list[int]]:
    """Indices of runs grouped by their config with the seed keys (and where the run was
    written) left out, in first-seen order."""
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(configs):
        flat = flatten(c).items()
        rest = {k: v for k, v in flat if not (is_seed_key(k) or is_location_key(k))}
        groups.setdefault(repr(sorted(rest.items(), key=lambda kv: kv[0])), []).append(i)
    return list(groups.values())


def seed_stats(
    series: Sequence[tuple[np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """``(steps, median, low, high)`` across seeds on the union of their steps within the range
    every seed covers, each seed interpolated linearly; None when the ranges do not overlap."""
    parts = [(s, v) for s, v in series if np.isfinite(v).any()]
    if len(parts) < 2:
        return None
    start = max(s[np.isfinite(v)][0] for s, v in parts)
    stop = min(s[np.isfinite(v)][-1] for s, v in parts)
    if stop < start:
        return None
    grid = np.unique(np.concatenate([s[(s >= start) & (s <= stop)] for s, _ in parts]))
    aligned = np.stack(
        [np.interp(grid, s[np.isfinite(v)], v[np.isfinite(v)]) for s, v in parts]
    )  # [seeds, T]
    return grid, np.median(aligned, axis=0), aligned.min(axis=0), aligned.max(axis=0)


def _group_lines(
    store: Store,
    sources: Sequence[Source],
    names: Sequence[str],
    groups: list[list[int]],
    key_of: Any,
    tag: str,
    dash: str = "solid",
    suffix: str = "",
) -> list[dict[str, Any]]:
    """Lines for one quantity across runs: ``key_of(i)`` gives run i's stored ref or a series."""
    lines: list[dict[str, Any]] = []
    for g, members in enumerate(groups):
        color = PALETTE[g % len(PALETTE)]
        grouped = len(members) > 1
        raw = []
        for j, i in enumerate(members):
            got = key_of(i)
            if got is None:
                continue
            ref, steps, values = got
            raw.append((steps, values))
            run_color = color if grouped else PALETTE[(g + j) % len(PALETTE)]
            lines.append(
                line(
                    ref,
                    f"{names[i]}{suffix}",
                    run_color,
                    dash,
                    width=1.0 if grouped else 1.8,
                    opacity=0.55 if grouped else 1.0,
                    group=f"g{g}",
                )  # fmt: skip
            )
        stats = seed_stats(raw) if grouped else None
        if stats is None:
            continue
        steps, median, low, high = stats
        label = f"group {g + 1} ({len(raw)} seeds)"
        band = store.add_envelope(f"{tag}/g{g}/band", envelope_bounds(steps, low, high, store.bins))
        mid = store.add(f"{tag}/g{g}/median", steps, median)
        if band:
            lines.insert(0, line(band, f"{label}: min-max band{suffix}", color, dash, band=True))
        if mid:
            lines.append(line(mid, f"{label}: median{suffix}", color, dash, width=2.6))
    return lines


def compare_payload(
    sources: Sequence[Source], names: Sequence[str], configs: Sequence[dict[str, Any]],
    bins: int = BINS,
) -> dict[str, Any]:  # fmt: skip
    """Everything the compare page draws: one panel per run scalar and per-head metric, with
    every run (and group) overlaid."""
    store = Store(bins)
    groups = seed_groups(configs)
    plans = [plan_keys(s.keys(), s.array_names()) for s in sources]
    panels: list[dict[str, Any]] = []

    def scalar(key: str):
        def get(i: int):
            steps, values = sources[i].series(key)
            ref = store.add(f"run{i}/{key}", steps, values)
            return (ref, steps, values) if ref else None

        return get

    user = list(dict.fromkeys(k for p in plans for k in p.user))
    kinds = {}
    for i, s in enumerate(sources):
        for kind, _, keys in user_groups(s, [k for k in user if k in plans[i].user]):
            for k in keys:
                kinds.setdefault(k, kind)
    order = sorted(user, key=lambda k: ("loss", "fraction", "other").index(kinds.get(k, "other")))
    options = {k: _group_lines(store, sources, names, groups, scalar(k), k) for k in order}
    p = panel("compare-curves", "Learning curves", "value", options, store)
    if p:
        for k in order:
            if kinds.get(k) == "fraction" and k in p["log"]:
                p.setdefault("yranges", {})[k] = [-0.03, 1.03]
        p["section"] = "curves"
        panels.append(p)

    metrics = list(dict.fromkeys(hm.metric for pl in plans for hm in pl.head_metrics))
    for metric in metrics:
        refs = []
        for i, pl in enumerate(plans):
            hm = next((h for h in pl.head_metrics if h.metric == metric), None)
            refs.append(metric_series(sources[i], hm, store, prefix=f"run{i}/") if hm else {})
        circuits = list(dict.fromkeys(c for r in refs for c in r))
        targets = list(dict.fromkeys(t for r in refs for c in r.values() for t in c))
        targets.sort(key=lambda t: (t != "mean", "." in t, t))
        options = {}
        for t in targets:
            lines = []
            for c in circuits:

                def get(i: int, c=c, t=t, refs=refs, metric=metric):
                    ref = refs[i].get(c, {}).get(t)
                    if ref is None:
                        return None
                    key = ref.split("/", 1)[1]  # run<i>/dynmon/... -> dynmon/...
                    steps, values = _stored_source(sources[i], key, metric, c, t)
                    return ref, steps, values

                lines += _group_lines(
                    store, sources, names, groups, get, f"{metric}/{c}/{t}",
                    CIRCUIT_DASH.get(c, "dot"), f" {c}",
                )  # fmt: skip
            options[t] = lines
        p = panel(f"compare-{metric}", LABELS.get(metric, metric), metric, options, store,
                  log=False)  # fmt: skip
        if p:
            p["section"] = "circuits"
            panels.append(p)

    marks: dict[str, list] = {"marks": [], "spans": []}
    for i, s in enumerate(sources):
        m = event_marks(s.events, run=names[i])
        marks["marks"] += m["marks"]
    return {
        "xs": store.xs,
        "store": store.series,
        "panels": panels,
        "heatmaps": [],
        "events": marks,
        "groups": [[names[i] for i in g] for g in groups],
    }


def _stored_source(
    source: Source, key: str, metric: str, circuit: str, target: str
) -> tuple[np.ndarray, np.ndarray]:
    """The full-resolution series behind a stored per-head metric ref, for seed statistics:
    the logged key when there is one, else computed from the per-head grid as the page did."""
    if key in source.keys():
        return source.series(key)
    plan = plan_keys(source.keys(), source.array_names())
    hm = next(h for h in plan.head_metrics if h.metric == metric)
    steps, grid = head_grid(source, hm, circuit)
    if target == "mean":
        return steps, nanmean(grid, axis=(1, 2))
    if "." in target:
        layer, head = map(int, target[1:].split(".H"))
        return steps, grid[:, layer, head]
    return steps, nanmean(grid[:, int(target[1:]), :], axis=1)
