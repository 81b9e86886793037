"""The data a page draws, as plain JSON-ready dicts: downsampled series in one store (shared step
grids stored once), panels that name the series they draw, events, heatmap frames.

A panel has ``options`` (what its selector offers: a layer, a head, a key) and for each option
the lines to draw; a line names a series of the store by ``ref``. The page's script only looks
things up: every number is computed here.
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from dynmon.keys import strip_prefix
from dynmon.page.envelope import BINS, Envelope, envelope
from dynmon.page.keys import HeadMetric, KeyPlan, plan_keys
from dynmon.plotkit import EVENT_COLORS, OTHER_EVENT_COLOR, PLATEAU_COLOR, grid_from_keys

MAX_FRAMES = 120  # heatmap frames kept for the step slider
PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip
MAGMA = [  # matplotlib's magma at nine stops (plotly names no magma scale)
    [0.0, "#000004"], [0.125, "#1d1147"], [0.25, "#51127c"], [0.375, "#832681"],
    [0.5, "#b73779"], [0.625, "#e75263"], [0.75, "#fc8961"], [0.875, "#fec488"],
    [1.0, "#fcfdbf"],
]  # fmt: skip
CIRCUIT_DASH = {"QK": "solid", "OV": "dash"}
LABELS = {
    "erank": "effective rank",
    "stable_rank": "stable rank",
    "marginal_erank": "marginal erank",
    "participation_ratio": "participation ratio",
    "numerical_rank": "numerical rank",
    "subspace_dist": "subspace distance (previous look)",
    "subspace_dist_ref": "subspace distance (reference)",
    "subspace_dist_final": "distance to the final matrix",
}


class Source(Protocol):
    """What a page reads from a run: ``RunTail`` and ``dynmon.Run`` both answer this."""

    events: list[dict[str, Any]]

    def keys(self) -> list[str]: ...

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]: ...

    def array_names(self) -> list[str]: ...

    def array_series(self, name: str) -> tuple[np.ndarray, np.ndarray]: ...


class Store:
    """Downsampled series by name; equal step grids are stored once in ``xs``."""

    def __init__(self, bins: int = BINS) -> None:
        self.bins = bins
        self.xs: list[np.ndarray] = []
        self.series: dict[str, dict[str, Any]] = {}
        self._x_ids: dict[bytes, int] = {}

    def add(self, ref: str, steps: np.ndarray, values: np.ndarray) -> str | None:
        """Store ``values`` over ``steps`` (envelope when long) as ``ref``; None if all NaN."""
        if ref in self.series:
            return ref
        env = envelope(steps, values, self.bins)
        return self.add_envelope(ref, env)

    def add_envelope(self, ref: str, env: Envelope) -> str | None:
        if not (np.isfinite(env.lo).any() or np.isfinite(env.hi).any()):
            return None
        entry: dict[str, Any] = {"x": self._x(env.x)}
        if env.exact:
            entry["y"] = env.lo
        else:
            entry["lo"], entry["hi"] = env.lo, env.hi
        self.series[ref] = entry
        return ref

    def _x(self, x: np.ndarray) -> int:
        digest = hashlib.blake2b(np.ascontiguousarray(x, np.float64).tobytes(), digest_size=16)
        key = digest.digest()
        if key not in self._x_ids:
            self._x_ids[key] = len(self.xs)
            self.xs.append(x)
        return self._x_ids[key]


def line(ref: str, name: str, color: str, dash: str = "solid", **extra: Any) -> dict[str, Any]:
    """A line of a panel: draws the store's series ``ref``."""
    return {"ref": ref, "name": name, "color": color, "dash": dash, **extra}


def auto_log(store: Store, lines: Sequence[dict[str, Any]], ratio: float = 30.0) -> bool:
    """Log y when every value drawn is positive and max/min exceeds ``ratio`` (the PNGs' rule)."""
    parts = []
    for spec in lines:
        s = store.series.get(spec["ref"], {})
        parts += [np.asarray(s[k]) for k in ("y", "lo", "hi") if k in s]
    if not parts:
        return False
    v = np.concatenate(parts)
    v = v[np.isfinite(v)]
    return bool(len(v) and v.min() > 0 and v.max() / v.min() > ratio)


def panel(
    pid: str,
    title: str,
    ylabel: str,
    options: dict[str, list[dict[str, Any]]],
    store: Store,
    *,
    log: bool | None = None,
    yrange: tuple[float, float] | None = None,
    default: str | None = None,
) -> dict[str, Any] | None:
    """A plot with a selector over ``options`` (hidden when there is one); None when empty."""
    options = {k: v for k, v in options.items() if v}
    if not options:
        return None
    logs = {k: (auto_log(store, v) if log is None else log) for k, v in options.items()}
    return {
        "id": pid,
        "title": title,
        "ylabel": ylabel,
        "options": list(options),
        "default": default if default in options else next(iter(options)),
        "lines": options,
        "log": logs,
        "yrange": list(yrange) if yrange else None,
    }


# -- a run's keys as panels -----------------------------------------------------------------------
def user_groups(source: Source, keys: list[str]) -> list[tuple[str, str, list[str]]]:
    """The run's own scalars as ``(kind, y label, keys)``: losses together, values in [0, 1]
    together (accuracies), the rest one key each."""
    losses, fractions, rest = [], [], []
    for k in keys:
        v = source.series(k)[1]
        v = v[np.isfinite(v)]
        if not len(v):
            continue
        if "loss" in k.lower() or k.lower() in ("ppl", "perplexity"):
            losses.append(k)
        elif v.min() >= 0 and v.max() <= 1:
            fractions.append(k)
        else:
            rest.append(k)
    groups = [("loss", "loss", losses)] if losses else []
    if fractions:
        accuracy = all("acc" in k.lower() for k in fractions)
        groups.append(("fraction", "accuracy" if accuracy else "value in [0, 1]", fractions))
    groups += [("other", k, [k]) for k in rest]
    return groups


def head_grid(source: Source, hm: HeadMetric, circuit: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(steps [T], values [T, L, H])`` of a per-head metric, from its array or per-head keys."""
    if circuit in hm.array:
        try:
            steps, values = source.array_series(hm.array[circuit])
        except ValueError as exc:  # an array that changed shape: fall back to the keys
            warnings.warn(f"dynmon page: {exc}", RuntimeWarning, 2)
            steps, values = np.zeros(0, np.int64), np.zeros(0)
        if len(steps) and values.ndim == 3:
            return steps, np.where(np.isfinite(values), values, np.nan)
    found = hm.heads.get(circuit)
    if not found:
        return None
    steps, grid = grid_from_keys(source.series, found)
    return steps, np.where(np.isfinite(grid), grid, np.nan)


def nanmean(a: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """Mean over ``axis`` ignoring NaN; all-NaN slices stay NaN without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(a, axis=axis)


def metric_series(
    source: Source, hm: HeadMetric, store: Store, prefix: str = ""
) -> dict[str, dict[str, str]]:
    """Store every head, layer mean and overall mean of ``hm``; returns
    ``{circuit: {target: ref}}`` with targets ``mean``, ``L0``, ``L0.H1``..."""
    out: dict[str, dict[str, str]] = {}
    for circuit in hm.circuits:
        refs: dict[str, str] = {}
        grid = None
        if circuit in hm.array or circuit in hm.heads:
            grid = head_grid(source, hm, circuit)
        base = f"{prefix}dynmon/{hm.metric}"
        if grid is not None:
            steps, values = grid
            for layer in range(values.shape[1]):
                for head in range(values.shape[2]):
                    key = hm.heads.get(circuit, {}).get((layer, head))
                    s, v = source.series(key) if key else (steps, values[:, layer, head])
                    ref = store.add(f"{base}/L{layer}.H{head}.{circuit}", s, v)
                    if ref:
                        refs[f"L{layer}.H{head}"] = ref
        layer_keys = hm.layers.get(circuit, {})
        n_layers = grid[1].shape[1] if grid is not None else 1 + max(layer_keys, default=-1)
        for layer in range(n_layers):
            if layer in layer_keys:
                s, v = source.series(layer_keys[layer])
            elif grid is not None:
                s, v = grid[0], nanmean(grid[1][:, layer, :], axis=1)
            else:
                continue
            ref = store.add(f"{base}/L{layer}.{circuit}", s, v)
            if ref:
                refs[f"L{layer}"] = ref
        if circuit in hm.overall:
            s, v = source.series(hm.overall[circuit])
        elif grid is not None:
            s, v = grid[0], nanmean(grid[1], axis=(1, 2))
        else:
            s = v = None
        if s is not None:
            ref = store.add(f"{base}/{circuit}", s, v)
            if ref:
                refs["mean"] = ref
        if refs:
            out[circuit] = refs
    return out


def metric_options(refs: dict[str, dict[str, str]]) -> dict[str, list[dict[str, Any]]]:
    """The selector of a per-head metric panel: layer means, each layer's heads, each head."""
    options: dict[str, list[dict[str, Any]]] = {"layer means": []}
    layers = sorted({int(t[1:]) for r in refs.values() for t in r if "." not in t and t != "mean"})
    heads = sorted(
        {tuple(map(int, t[1:].split(".H"))) for r in refs.values() for t in r if ".H" in t}
    )
    for circuit, r in refs.items():
        dash = CIRCUIT_DASH.get(circuit, "dot")
        for layer in layers if len(layers) > 1 or "mean" not in r else ():  # 1 layer: its mean
            if f"L{layer}" in r:
                color = PALETTE[layer % len(PALETTE)]
                options["layer means"].append(
                    line(r[f"L{layer}"], f"L{layer} {circuit}", color, dash)
                )
        if "mean" in r:
            options["layer means"].append(
                line(r["mean"], f"{circuit} mean", "#222", dash, width=2.5)
            )
    for layer in layers:
        opt = options.setdefault(f"L{layer} (each head)", [])
        for circuit, r in refs.items():
            dash = CIRCUIT_DASH.get(circuit, "dot")
            for lh in heads:
                t = f"L{lh[0]}.H{lh[1]}"
                if lh[0] == layer and t in r:
                    opt.append(line(r[t], f"H{lh[1]} {circuit}", PALETTE[lh[1] % 10], dash))
    for lh in heads:
        t = f"L{lh[0]}.H{lh[1]}"
        for circuit, r in refs.items():
            if t in r:
                color = (
                    "#1f77b4" if circuit == "QK" else "#d62728" if circuit == "OV" else "#2ca02c"
                )
                options.setdefault(t, []).append(line(r[t], f"{t} {circuit}", color))
    return options


def heatmap(source: Source, hm: HeadMetric, pid: str) -> dict[str, Any] | None:
    """Per-head values ``[layers x heads]`` at up to ``MAX_FRAMES`` looks, for the step slider;
    one colour scale for the whole run so that moving the slider compares like with like."""
    grids = {}
    for circuit in hm.circuits:
        if circuit in hm.array or circuit in hm.heads:
            g = head_grid(source, hm, circuit)
            if g is not None and np.isfinite(g[1]).any():
                grids[circuit] = g
    if not grids:
        return None
    steps = np.unique(np.concatenate([g[0] for g in grids.values()]))
    if len(steps) > MAX_FRAMES:
        steps = steps[np.unique(np.linspace(0, len(steps) - 1, MAX_FRAMES).round().astype(int))]
    z: dict[str, Any] = {}
    finite = []
    for circuit, (s, values) in grids.items():
        at = np.clip(np.searchsorted(s, steps, side="right") - 1, 0, len(s) - 1)
        frames = values[at]  # [F, L, H]: the latest look at or before each frame's step
        frames[steps < s[0]] = np.nan
        z[circuit] = frames
        finite.append(frames[np.isfinite(frames)])
    vals = np.concatenate(finite)
    if not len(vals):  # every kept frame falls before the first look of its circuit
        return None
    subspace = hm.metric.startswith("subspace")
    return {
        "id": pid,
        "title": LABELS.get(hm.metric, hm.metric),
        "metric": hm.metric,
        "steps": steps,
        "circuits": list(z),
        "z": z,
        "zmin": 0.0 if subspace else float(vals.min()),
        "zmax": 1.0 if subspace else float(vals.max()),
        "colorscale": MAGMA if subspace else "Viridis",
    }


# -- events ---------------------------------------------------------------------------------------
def placed_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Events at the step they are about: a plateau at its ``start``/``end``, anything else at
    ``at`` (detectors set ``step`` = when they noticed)."""
    placed = []
    for e in events:
        field = {"plateau_start": "start", "plateau_end": "end"}.get(e.get("kind"), "at")
        where = e.get(field, e.get("at", e.get("step")))
        if isinstance(where, (int, float)) and not isinstance(where, bool) and math.isfinite(where):
            placed.append({**e, "step": where})
    return sorted(placed, key=lambda e: e["step"])


def event_marks(events: list[dict[str, Any]], run: str | None = None) -> dict[str, Any]:
    """Vertical marks with hover text, and plateau spans, for every time plot."""
    marks, spans, open_at = [], [], {}
    for e in placed_events(events):
        kind = str(e.get("kind", "event"))
        key = str(e.get("key", ""))
        if kind == "plateau_start":
            open_at.setdefault((run, key), e["step"])
        elif kind == "plateau_end" and (run, key) in open_at:
            spans.append([open_at.pop((run, key)), e["step"]])
        message = e.get("message") or f"{kind} {key}".strip()
        text = f"{kind} at step {e['step']:g}: {message}"
        marks.append(
            {
                "x": e["step"],
                "kind": kind,
                "text": f"{run}: {text}" if run else text,
                "color": EVENT_COLORS.get(
                    kind, PLATEAU_COLOR if "plateau" in kind else OTHER_EVENT_COLOR
                ),
            }
        )
    spans += [[a, None] for a in open_at.values()]
    return {"marks": marks, "spans": spans}


# -- one run --------------------------------------------------------------------------------------
def run_payload(source: Source, bins: int = BINS) -> dict[str, Any]:
    """Everything the page of one run draws."""
    store = Store(bins)
    plan: KeyPlan = plan_keys(source.keys(), source.array_names())
    panels: list[dict[str, Any]] = []
    for kind, ylabel, keys in user_groups(source, plan.user):
        lines = []
        for i, k in enumerate(keys):
            ref = store.add(k, *source.series(k))
            if ref:
                lines.append(line(ref, k, PALETTE[i % len(PALETTE)]))
        yrange = (-0.03, 1.03) if kind == "fraction" else None
        title = {"loss": "Loss", "fraction": ylabel.capitalize()}.get(kind, ylabel)
        p = panel(f"curve-{len(panels)}", title, ylabel, {"all": lines}, store, yrange=yrange,
                  log=None if kind == "loss" else False)  # fmt: skip
        if p:
            p["section"] = "curves"
            panels.append(p)
    heatmaps = []
    for hm in plan.head_metrics:
        refs = metric_series(source, hm, store)
        p = panel(f"metric-{hm.metric}", LABELS.get(hm.metric, hm.metric), hm.metric,
                  metric_options(refs), store, log=False)  # fmt: skip
        if p:
            p["section"] = "circuits"
            panels.append(p)
        h = heatmap(source, hm, f"heat-{hm.metric}")
        if h:
            heatmaps.append(h)
    for section, title, keys in (
        ("curvature", "Curvature", plan.curvature),
        ("other", "Other monitor scalars", plan.other),
    ):
        options = {}
        for k in keys:
            ref = store.add(k, *source.series(k))
            if ref:
                options[strip_prefix(k)] = [line(ref, k, "#1f77b4")]
        p = panel(f"{section}-0", title, "value", options, store)
        if p:
            p["section"] = section
            panels.append(p)
    return {
        "xs": store.xs,
        "store": store.series,
        "panels": panels,
        "heatmaps": heatmaps,
        "events": event_marks(source.events),
    }
