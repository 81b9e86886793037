"""A run folder's report: PNG figures in ``plots/`` and an ``index.html`` that shows them.

``make_report(run_dir)`` reads the folder with ``load_run`` and draws what it holds, skipping
figures whose data is absent (a run with only a loss gets only the loss figure):

* ``loss.png``       loss and the run's own scalars, detected events marked;
* ``erank.png``      per-layer mean effective rank (and other rank measures) of QK and OV;
* ``erank_heads.png`` per-head effective rank over time, heads x steps heatmaps;
* ``subspace.png``   per-layer mean subspace distance (to the previous and the reference look);
* ``subspace_heads.png`` per-head subspace distance heatmaps;
* ``norms.png``      weight norm, gradient norm, update ratios;
* ``curvature.png``  sharpness and Hessian trace;
* ``overview.png``   one shared time axis: loss, erank, subspace distance, sharpness, events.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dynmon.keys import HEAD_KEY, LAYER_KEY, PREFIX, is_dynmon_key
from dynmon.keys import key as key_of
from dynmon.runfolder import Run, load_run

DPI = 120
WIDTH = 7.5  # inches: a page width at DPI
RANK_METRICS = ("erank", "stable_rank", "marginal_erank", "participation_ratio", "numerical_rank")
RANK_LABELS = {
    "erank": "effective rank",
    "stable_rank": "stable rank",
    "marginal_erank": "marginal erank",
    "participation_ratio": "participation ratio",
    "numerical_rank": "numerical rank",
    "subspace_dist": "subspace dist. (prev. look)",
    "subspace_dist_ref": "subspace dist. (reference)",
    "subspace_dist_final": "dist. to final (seed paper)",
}
# Okabe-Ito colours (distinguishable with every common colour-vision deficiency), with a line
# style per kind so that no two kinds look alike even in grey
EVENT_COLORS = {
    "cliff": "#D55E00",
    "rise": "#CC79A7",
    "onset": "#009E73",
    "saturation": "#56B4E9",
    "memorization": "#E69F00",
    "circuit_formation": "#009E73",
    "circuit_formation_online": "#009E73",
    "cleanup": "#CC79A7",
    "grokking": "#0072B2",
    "generalization": "#0072B2",
    "metric_error": "#000000",
    "induction_emergence": "#0072B2",
    "subspace_stabilisation": "#E69F00",
    "role_onset": "#56B4E9",
    "role_formed": "#009E73",
}
EVENT_STYLES = {
    "cliff": "-",
    "rise": (0, (5, 2)),
    "onset": "-.",
    "saturation": ":",
    "grokking": "-",
    "generalization": "--",
    "circuit_formation_online": (0, (1, 1)),
    "metric_error": ":",
    "induction_emergence": "-",
    "subspace_stabilisation": (0, (6, 2, 1, 2)),
    "role_onset": "-.",
    "role_formed": (0, (3, 1, 1, 1)),
}
OTHER_EVENT_COLOR = "#7F7F7F"
PLATEAU_COLOR = "#7f7f7f"
# phases of a grokking run, as bands: (name, colour, event that opens it, events that close it)
PHASES = (
    ("memorisation", "#E69F00", None, ("memorization",)),
    (
        "circuit formation",
        "#009E73",
        "circuit_formation",
        ("cleanup", "grokking", "generalization"),
    ),
    ("cleanup", "#CC79A7", "cleanup", ("grokking", "generalization")),
)
PHASE_KINDS = ("memorization", "circuit_formation", "cleanup")  # drawn as bands, not lines
CURVE_KINDS = ("cliff", "rise", "onset", "saturation", "plateau_start", "plateau_end", "nan")
LR_KEYS = ("lr", "learning_rate")
CIRCUIT_STYLE = {"QK": "-", "OV": "--"}
STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.fontsize": 8,
    "legend.frameon": False,
    "lines.linewidth": 1.4,
    "savefig.dpi": DPI,
}


def save_figure(fig: Any, run_dir: str | Path, name: str) -> Path:
    """Write a pack's own figure to ``run_dir/plots/name`` (beside the report's) and close it."""
    import matplotlib.pyplot as plt

    path = Path(run_dir) / "plots" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_report(run_dir: str | Path, out: str | Path | None = None, *, png: bool = True) -> Path:
    """Write a run folder's interactive page ``<out>/index.html`` (plotly.js beside it; see
    ``dynmon.page``) and, with ``png``, its static figures into ``<out>/plots/`` (for papers;
    the page shows them too). ``out`` defaults to the run folder; returns the page's path."""
    from dynmon.page import RunTail

    tail = RunTail(run_dir)  # a missing folder or metrics.jsonl raises here, before any output
    tail.update()
    out = Path(out) if out is not None else Path(run_dir)
    drawn: list[tuple[str, str]] = []
    failed: list[str] = []
    if png:
        import matplotlib

        run = load_run(run_dir)
        plots = out / "plots"
        plots.mkdir(parents=True, exist_ok=True)
        with matplotlib.rc_context(STYLE):
            for name, draw, caption in FIGURES:
                try:
                    fig = draw(run)
                except Exception as exc:  # one broken figure must not cost the rest of the report
                    warnings.warn(f"dynmon report: {name}.png failed: {exc!r}", RuntimeWarning, 2)
                    failed.append(f"{name}.png: {exc!r}")
                    continue
                if fig is None:
                    continue
                fig.savefig(plots / f"{name}.png", dpi=DPI)
                drawn.append((f"plots/{name}.png", caption))
    return _html(tail, out, drawn, failed)


# -- reading series out of a run ------------------------------------------------------------------
def _clean(values: np.ndarray) -> np.ndarray:
    """Infinite values become NaN (gaps in a line, ignored by axis limits)."""
    return np.where(np.isfinite(values), values, np.nan)


def _series(run: Run, key: str) -> tuple[np.ndarray, np.ndarray] | None:
    steps, values = run.series(key)
    values = _clean(values)
    return (steps, values) if np.isfinite(values).any() else None


def _head_grid(run: Run, metric: str, circuit: str) -> tuple[np.ndarray, np.ndarray] | None:
    """``(steps [T], values [T, L, H])`` of a per-head metric, from arrays or per-head keys."""
    steps, values = run.array_series(key_of(metric, circuit))
    if len(steps) and values.ndim == 3:
        return steps, _clean(values)
    found: dict[tuple[int, int], str] = {}
    for k in run.keys():
        m = HEAD_KEY.match(k)
        if m and m["metric"] == metric and m["circuit"] == circuit:
            found[(int(m["layer"]), int(m["head"]))] = k
    if not found:
        return None
    n_layers = 1 + max(layer for layer, _ in found)
    n_heads = 1 + max(head for _, head in found)
    per_key = {lh: run.series(k) for lh, k in found.items()}
    all_steps = np.unique(np.concatenate([s for s, _ in per_key.values()]))
    grid = np.full((len(all_steps), n_layers, n_heads), np.nan)
    for (layer, head), (s, v) in per_key.items():
        grid[np.searchsorted(all_steps, s), layer, head] = v
    return all_steps, _clean(grid)


def _circuits(run: Run, metric: str) -> list[str]:
    """Circuits (``QK``, ``OV``...) a per-head metric was logged for, from keys or arrays."""
    found: dict[str, None] = {}
    for k in run.keys():
        m = HEAD_KEY.match(k) or LAYER_KEY.match(k)
        if m and m["metric"] == metric:
            found[m["circuit"]] = None
    for name in run.array_names():
        parts = name.split("/")
        if len(parts) == 3 and parts[1] == metric:
            found[parts[2]] = None
    return list(found)


def _layer_means(run: Run, metric: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{circuit: (steps [T], values [T, L])}`` of a per-head metric's layer means."""
    keys: dict[str, dict[int, str]] = {}
    for k in run.keys():
        m = LAYER_KEY.match(k)
        if m and m["metric"] == metric:
            keys.setdefault(m["circuit"], {})[int(m["layer"])] = k
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for circuit in _circuits(run, metric):
        if circuit in keys:
            per_layer = {layer: run.series(k) for layer, k in keys[circuit].items()}
            steps = np.unique(np.concatenate([s for s, _ in per_layer.values()]))
            values = np.full((len(steps), 1 + max(per_layer)), np.nan)
            for layer, (s, v) in per_layer.items():
                values[np.searchsorted(steps, s), layer] = v
        else:
            grid = _head_grid(run, metric, circuit)
            if grid is None:
                continue
            steps, heads = grid
            values = _nanmean(heads, axis=2)
        values = _clean(values)
        if np.isfinite(values).any():
            out[circuit] = (steps, values)
    return out


def _nanmean(a: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices stay NaN
        return np.nanmean(a, axis=axis)


def _user_keys(run: Run) -> list[str]:
    return [k for k in run.keys() if not is_dynmon_key(k)]


def _events(run: Run) -> list[dict[str, Any]]:
    """Events placed where they happened, not where they were detected: a plateau at its
    ``start``/``end``, anything else at ``at`` (detectors report ``step`` = detection time)."""
    placed = []
    for e in run.events:
        field = {"plateau_start": "start", "plateau_end": "end"}.get(e.get("kind"), "at")
        where = e.get(field, e.get("at", e.get("step")))
        if isinstance(where, (int, float)):
            placed.append({**e, "step": where})
    return sorted(placed, key=lambda e: e["step"])


# -- drawing helpers ------------------------------------------------------------------------------
def _figure(n_rows: int, n_cols: int = 1, height: float = 2.1, sharex: bool = True) -> tuple:
    """A figure with a grid of axes sharing the step axis, drawn off-screen (no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(WIDTH, 0.6 + height * n_rows), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False, sharex=sharex)
    return fig, axes


def _layer_colors(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, n)]


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average that skips NaNs."""
    ok = np.isfinite(values)
    kernel = np.ones(window)
    total = np.convolve(np.where(ok, values, 0.0), kernel, mode="same")
    count = np.convolve(ok.astype(float), kernel, mode="same")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def _plot_noisy(ax, steps: np.ndarray, values: np.ndarray, label: str, color) -> None:
    """A line; long noisy series get a faint raw trace under a smoothed one."""
    if len(values) > 150:
        ax.plot(steps, values, color=color, alpha=0.25, linewidth=0.7)
        ax.plot(steps, _smooth(values, max(5, len(values) // 60)), color=color, label=label)
    else:
        ax.plot(steps, values, color=color, label=label, marker="." if len(values) < 40 else None)


def _auto_log(ax, *value_arrays: np.ndarray, ratio: float = 100.0) -> None:
    """Log y when every value is positive and max/min exceeds ``ratio`` (two decades)."""
    arrays = [np.asarray(v, dtype=float) for v in value_arrays]
    finite = np.concatenate([v[np.isfinite(v)] for v in arrays]) if arrays else np.empty(0)
    if not (len(finite) and finite.min() > 0 and finite.max() / finite.min() > ratio):
        return
    from matplotlib.ticker import FuncFormatter, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 30, not 3x10^1
    if finite.max() / finite.min() < 20:  # under ~1.3 decades: label the 2, 3, 5 minor ticks
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))
    else:
        ax.yaxis.set_minor_formatter(NullFormatter())


def _minor_label(v: float, _pos: object) -> str:
    return f"{v:g}" if v > 0 and round(v / 10 ** math.floor(math.log10(v))) in (2, 3, 5) else ""


def _plateaus(events: list[dict[str, Any]], end: float) -> list[tuple[str, float, float]]:
    """``(key, start, end)`` of each plateau, paired per key; an open one runs to ``end``."""
    open_at: dict[str, float] = {}
    spans = []
    for e in events:
        key = str(e.get("key", ""))
        if e["kind"] == "plateau_start":
            open_at.setdefault(key, e["step"])
        elif e["kind"] == "plateau_end" and key in open_at:
            spans.append((key, open_at.pop(key), e["step"]))
    spans += [(key, start, end) for key, start in open_at.items()]
    return spans


def _phases(events: list[dict[str, Any]], first: float) -> list[tuple[str, str, float, float]]:
    """``(name, colour, start, end)`` of the phases the run's events bound (see ``PHASES``): a
    phase opens at its event (the run's first step for memorisation) and closes at the first of
    its closing events after it; one that never closes is not drawn."""
    at: dict[str, float] = {}
    for e in events:
        at.setdefault(e["kind"], e["step"])
    spans = []
    for name, color, opens, closes in PHASES:
        a = first if opens is None else at.get(opens)
        ends = [at[k] for k in closes if k in at and a is not None and at[k] > a]
        if a is not None and ends:
            spans.append((name, color, a, min(ends)))
    return spans


def _event_label(e: dict[str, Any]) -> str:
    key = e.get("key")
    kind = e["kind"].replace("_", " ")
    return f"{kind} ({key})" if key and e["kind"] in CURVE_KINDS else kind


def _mark(ax, e: dict[str, Any], alpha: float = 0.9):
    color = EVENT_COLORS.get(e["kind"], OTHER_EVENT_COLOR)
    style = EVENT_STYLES.get(e["kind"], "--")
    width = 1.6 if e["kind"] in ("grokking", "generalization") else 1.0
    return ax.axvline(
        e["step"], color=color, linestyle=style, linewidth=width, alpha=alpha, label=_event_label(e)
    )


def _annotate(ax, run: Run, keys: Iterable[str] = (), name_phases: bool = False) -> list:
    """Phases as named bands, the events of the curves ``keys`` drawn on this panel (each
    labelled with its curve), plateaus of those curves shaded, and run-level events (grokking,
    a metric error, no curve of their own here) as lines; returns their legend handles."""
    from matplotlib.patches import Patch

    keys = set(keys)
    events = _events(run)
    handles: list = []
    first, last = _first_step(run), _last_step(run)
    for name, color, a, b in _phases(events, first):
        ax.axvspan(a, b, color=color, alpha=0.13, linewidth=0, zorder=0)
        handles.append(Patch(color=color, alpha=0.3, label=f"{name} phase"))
        if name_phases:
            ax.annotate(
                name, xy=((a + b) / 2, 1.0), xycoords=("data", "axes fraction"),
                xytext=(0, -2), textcoords="offset points", ha="center", va="top",
                fontsize=7, color=color, fontweight="bold",
            )  # fmt: skip
    for key, a, b in _plateaus(events, last):
        if key in keys:
            ax.axvspan(a, b, facecolor="none", edgecolor=PLATEAU_COLOR, hatch="///", alpha=0.35,
                       linewidth=0, zorder=0)  # fmt: skip
            handles.append(
                Patch(
                    facecolor="none", edgecolor=PLATEAU_COLOR, hatch="///", label=f"plateau ({key})"
                )
            )
    seen: set[str] = set()
    for e in events:
        kind, key = e["kind"], e.get("key")
        if kind.startswith("plateau") or kind in PHASE_KINDS:
            continue
        if kind in CURVE_KINDS:  # on its curve's panel (everywhere if no figure draws it)
            mine = key in keys or key not in run.keys()
        else:  # run-level events on every panel; a monitor metric's (a head's role) on its own
            mine = not is_dynmon_key(str(key or "")) or key in keys
        if not mine:
            continue
        line = _mark(ax, e)
        if line.get_label() not in seen:
            seen.add(line.get_label())
            handles.append(line)
    return handles


def _legend(ax, extra: list, **kw: Any) -> None:
    """One legend per panel, outside on the right: the panel's lines, then its events."""
    handles, labels = ax.get_legend_handles_labels()
    shown = dict(zip(labels, handles, strict=True))
    for h in extra:
        shown.setdefault(h.get_label(), h)
    shown = {k: v for k, v in shown.items() if not k.startswith("_")}
    if shown:
        ax.legend(
            list(shown.values()), list(shown), loc="upper left", bbox_to_anchor=(1.0, 1.02),
            fontsize=7, handlelength=2.2, **kw,
        )  # fmt: skip


def _first_step(run: Run) -> float:
    steps = [r["step"] for r in run.metrics]
    return float(min(steps)) if steps else 0.0


def _last_step(run: Run) -> float:
    steps = [r["step"] for r in run.metrics]
    return float(max(steps)) if steps else 0.0


def _finish(axes, run: Run, keys: list[Iterable[str]] | None = None, events: bool = True) -> None:
    """Per panel: its events and legend; ``step`` on the bottom axis; x over the whole run.

    ``keys`` lists, per panel (row-major), the curves it draws, so each panel shows only its
    own curves' events (run-level events and phases go on every panel)."""
    grid = np.atleast_2d(axes)
    flat = list(np.ravel(axes))
    n_cols = grid.shape[1]
    for i, ax in enumerate(flat):
        if not ax.get_visible():
            continue
        extra = _annotate(ax, run, keys[i] if keys else (), name_phases=i == 0) if events else []
        visible = [a for a in grid[i // n_cols] if a.get_visible()]
        if ax is visible[-1]:  # side by side, the panels of a row share one legend, on the right
            _legend(ax, extra)
    first, last = _first_step(run), _last_step(run)
    if last > first:
        flat[0].set_xlim(first, last)
    for ax in np.atleast_2d(axes)[-1]:
        ax.set_xlabel("step")


# -- the figures ----------------------------------------------------------------------------------
def _same_curves(run: Run, keys: list[str]) -> dict[str, list[str]]:
    """Keys whose series are identical, kept once: ``{kept: [the others]}`` (the longest name is
    kept: ``train/loss`` over ``loss``)."""
    kept: dict[str, list[str]] = {}
    for k in sorted(keys, key=lambda k: (-len(k), k)):
        steps, values = run.series(k)
        for other in kept:
            s2, v2 = run.series(other)
            if (
                len(s2) == len(steps)
                and np.array_equal(s2, steps)
                and np.allclose(v2, values, rtol=1e-12, atol=0.0, equal_nan=True)
            ):
                kept[other].append(k)
                break
        else:
            kept[k] = []
    first = {k: min(keys.index(x) for x in (k, *twins)) for k, twins in kept.items()}
    return {k: kept[k] for k in sorted(kept, key=first.__getitem__)}  # in the run's own order


def _loss_groups(run: Run) -> list[tuple[str, str, list[str]]]:
    """The run's own scalars as panels ``(kind, y label, keys)``: losses, accuracies, other values
    in [0, 1], then up to four others, one panel each. A curve logged twice under two names is
    drawn once; learning rates are left out (a flat line; the curvature figure uses them)."""
    losses, accs, fractions, rest = [], [], [], []
    for k in _user_keys(run):
        s = _series(run, k)
        if s is None or k.lower().rsplit("/", 1)[-1] in LR_KEYS:
            continue
        if "loss" in k.lower() or k.lower() in ("ppl", "perplexity"):
            losses.append(k)
        elif np.nanmin(s[1]) >= 0 and np.nanmax(s[1]) <= 1:
            (accs if "acc" in k.lower() else fractions).append(k)
        else:
            rest.append(k)
    groups = [("loss", "loss", losses)] if losses else []
    if accs:
        groups.append(("fraction", accs[0] if len(accs) == 1 else "accuracy", accs))
    if fractions:
        groups.append(("fraction", fractions[0] if len(fractions) == 1 else "value", fractions))
    groups += [("other", k, [k]) for k in rest[:4]]
    return groups


def _draw_loss(run: Run):
    groups = _loss_groups(run)
    if not groups:
        return None
    fig, axes = _figure(len(groups), height=2.6 if len(groups) == 1 else 2.0)
    panel_keys = []
    for ax, (kind, ylabel, keys) in zip(axes[:, 0], groups, strict=True):
        values = []
        kept = _same_curves(run, keys)
        for i, (k, twins) in enumerate(kept.items()):
            steps, v = _series(run, k)
            label = k + (f" (= {', '.join(twins)})" if twins else "")
            _plot_noisy(ax, steps, v, label, _LINE_COLORS[i % len(_LINE_COLORS)])
            values.append(v)
        if kind == "fraction":
            ax.set_ylim(-0.03, 1.03)
        else:
            _auto_log(ax, *values)
        ax.set_ylabel(ylabel)
        panel_keys.append(keys)
    _finish(axes, run, panel_keys)
    fig.suptitle(f"{run.name}: learning curves and detected events")
    return fig


# curve colours: dark shades kept apart from the (brighter) event colours
_LINE_COLORS = ["#000000", "#1F4E79", "#7B3294", "#5A5A5A", "#8C510A", "#01665E", "#C51B7D"]


def _per_100_steps(steps: np.ndarray, values: np.ndarray) -> np.ndarray:
    """A distance between consecutive looks as a rate: ``value × 100 / gap`` (the first look,
    with no gap before it, is NaN), so looks 13 and 49 steps apart read on one scale."""
    gaps = np.diff(steps.astype(float), prepend=np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.where(gaps > 0, 100.0 / gaps, np.nan)
    return values * scale.reshape((-1,) + (1,) * (values.ndim - 1))


# how each per-head metric is drawn: (y label, transform of (steps, values) or None)
METRIC_VIEWS: dict[str, tuple[str, Callable | None]] = {
    "subspace_dist_ref": ("distance to the reference look", None),
    "subspace_dist": ("distance per 100 steps", _per_100_steps),
    "subspace_dist_final": ("distance to the final matrix", None),
}


def _view(metric: str) -> tuple[str, Callable | None]:
    return METRIC_VIEWS.get(metric, (RANK_LABELS.get(metric, metric), None))


def _draw_layer_lines(run: Run, metrics: Iterable[str], title: str):
    """Rows of metrics, columns of circuits: one line per layer, the overall mean dotted."""
    found = [(m, _layer_means(run, m)) for m in metrics]
    found = [(m, by_circuit) for m, by_circuit in found if by_circuit]
    if not found:
        return None
    circuits = list(dict.fromkeys(c for _, by_circuit in found for c in by_circuit))
    fig, axes = _figure(len(found), len(circuits), height=2.2)
    for row, (metric, by_circuit) in enumerate(found):
        label, transform = _view(metric)
        for col, circuit in enumerate(circuits):
            ax = axes[row, col]
            ax.set_title(f"{circuit}: {label}")
            if circuit not in by_circuit:
                ax.set_visible(False)
                continue
            steps, values = by_circuit[circuit]
            if transform is not None:
                values = transform(steps, values)
            colors = _layer_colors(values.shape[1])
            for layer in range(values.shape[1]):
                ax.plot(steps, values[:, layer], color=colors[layer], label=f"L{layer}")
            overall = _series(run, key_of(metric, circuit))
            if overall is not None:
                o_steps, o_values = overall
                if transform is not None:
                    o_values = transform(o_steps, o_values)
                ax.plot(o_steps, o_values, color="black", linestyle=":", linewidth=1.2,
                        label="mean")  # fmt: skip
            if col == 0:
                ax.set_ylabel(label.split(" (")[0] if len(label) > 24 else label, fontsize=8)
    _finish(axes, run)
    fig.suptitle(f"{run.name}: {title}")
    return fig


def _draw_ranks(run: Run):
    return _draw_layer_lines(run, RANK_METRICS, "per-layer mean rank of each head's circuit")


def _draw_subspace(run: Run):
    return _draw_layer_lines(
        run,
        ("subspace_dist_ref", "subspace_dist", "subspace_dist_final"),
        "per-layer mean distance of each head's top subspaces (0 to 1)",
    )


def _robust_limits(
    values: np.ndarray, widths: np.ndarray | None = None
) -> tuple[float, float] | tuple[None, None]:
    """Colour limits at the 2nd and 98th percentiles of ``values`` [rows, T], each column
    weighted by the steps it spans (``widths`` [T]), so that a flash over the first few, densely
    spaced looks cannot turn the rest of a heatmap black."""
    w = np.ones(values.shape[-1]) if widths is None else np.asarray(widths, dtype=float)
    w = np.broadcast_to(w, values.shape)
    ok = np.isfinite(values)
    if not ok.any():
        return None, None
    v, w = values[ok], w[ok]
    order = np.argsort(v)
    v, cum = v[order], np.cumsum(w[order])
    lo, hi = np.interp([0.02 * cum[-1], 0.98 * cum[-1]], cum, v)
    if hi <= lo:
        lo, hi = float(v[0]), float(v[-1]) + 1e-12
    return float(lo), float(hi)


def _draw_head_heatmaps(run: Run, metric: str, cmap: str):
    """One panel per circuit: heads (``L0.H0``...) down, steps across, a colorbar each, its
    colour scale from that panel's own values (2nd-98th percentile; the ends say so)."""
    label, transform = _view(metric)
    circuits = []
    for c in _circuits(run, metric):
        grid = _head_grid(run, metric, c)
        if grid is not None and np.isfinite(grid[1]).any():
            steps, values = grid
            circuits.append((c, (steps, transform(steps, values) if transform else values)))
    circuits = [(c, g) for c, g in circuits if np.isfinite(g[1]).any()]
    if not circuits:
        return None
    n_rows = circuits[0][1][1].shape[1] * circuits[0][1][1].shape[2]
    height = float(np.clip(0.16 * n_rows + 0.9, 2.0, 5.5))
    fig, axes = _figure(len(circuits), height=height)
    for ax, (circuit, (steps, grid)) in zip(axes[:, 0], circuits, strict=True):
        T, L, H = grid.shape
        image = grid.reshape(T, L * H).T  # [L*H, T]: one row per head, layer-major
        vmin, vmax = _robust_limits(image, np.diff(_edges(steps)))
        mesh = ax.pcolormesh(
            _edges(steps), np.arange(L * H + 1), image, cmap=cmap, vmin=vmin, vmax=vmax,
            shading="flat",
        )  # fmt: skip
        ax.set_ylim(L * H, 0)  # L0.H0 at the top
        for layer in range(1, L):
            ax.axhline(layer * H, color="white", linewidth=1.2)
        if L * H <= 48:
            ax.set_yticks(np.arange(L * H) + 0.5, [f"L{i // H}.H{i % H}" for i in range(L * H)])
            ax.tick_params(axis="y", labelsize=max(5, 8 - L * H // 16), length=0)
        else:
            ax.set_yticks(np.arange(L) * H + H / 2, [f"L{i}" for i in range(L)])
        ax.grid(False)
        ax.set_title(f"{circuit}: {label} per head")
        ax.set_ylabel("head")
        bar = fig.colorbar(mesh, ax=ax, pad=0.01, fraction=0.04, extend="both")
        bar.set_label(f"{label}\n(2nd-98th percentile)", fontsize=7)
    _finish(axes, run, events=False)
    lo, hi = axes[0, 0].get_xlim()
    edges = np.concatenate([_edges(steps) for _, (steps, _) in circuits])
    axes[0, 0].set_xlim(min(lo, edges.min()), max(hi, edges.max()))  # first and last cells whole
    handles = _mark_events_on_heatmaps(axes[:, 0], run)
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(4, len(handles)),
                   fontsize=7)  # fmt: skip
    fig.suptitle(f"{run.name}: {label} of every head over time")
    return fig


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges halfway between look steps (so uneven schedules keep a true step axis)."""
    s = steps.astype(float)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def _mark_events_on_heatmaps(axes, run: Run) -> list:
    """Phase boundaries and run-level events as lines over heatmaps (no shading: it would hide
    the colours; no text on the cells: a legend below says what each line is)."""
    from matplotlib.lines import Line2D

    events = _events(run)
    marks = []
    for name, color, a, _ in _phases(events, _first_step(run)):
        if a > _first_step(run):  # a phase from the first step needs no line
            marks.append((a, color, (0, (4, 2)), f"{name} phase starts"))
    for e in events:
        if e["kind"] in ("grokking", "generalization") or (
            e["kind"] not in CURVE_KINDS and e["kind"] not in PHASE_KINDS
            and not e["kind"].startswith("plateau")
        ):  # fmt: skip
            color = EVENT_COLORS.get(e["kind"], OTHER_EVENT_COLOR)
            marks.append((e["step"], color, EVENT_STYLES.get(e["kind"], "--"), _event_label(e)))
    handles: dict[str, Any] = {}
    for ax in axes:
        for step, color, style, label in marks:
            ax.axvline(step, color="white", linewidth=2.4, alpha=0.8)
            ax.axvline(step, color=color, linestyle=style, linewidth=1.3)
            handles.setdefault(label, Line2D([], [], color=color, linestyle=style, label=label))
    return list(handles.values())


def _draw_erank_heads(run: Run):
    return _draw_head_heatmaps(run, "erank", "viridis")


def _draw_subspace_heads(run: Run):
    """Distance to the reference look when logged, else the look-to-look distance per 100 steps."""
    ref = key_of("subspace_dist_ref", "")  # the prefix of its per-head and per-circuit keys
    has_ref = any(n.startswith(ref) for n in run.array_names()) or any(
        k.startswith(ref) for k in run.keys()
    )
    return _draw_head_heatmaps(run, "subspace_dist_ref" if has_ref else "subspace_dist", "magma")


def _per_matrix(run: Run, metric: str) -> list[str]:
    """``dynmon/<metric>/<parameter name>`` keys (not heads, layers or circuits)."""
    prefix = key_of(metric, "")
    return [
        k
        for k in run.keys()
        if k.startswith(prefix) and not HEAD_KEY.match(k) and not LAYER_KEY.match(k)
    ]


def short_param_name(name: str) -> str:
    """A parameter's state-dict name, shortened for a legend: wrapper segments such as
    ``_original_component`` (TransformerLens bridges), ``_orig_mod`` (torch.compile) and
    ``module`` (DDP) dropped, and a trailing ``.weight``."""
    parts = [p for p in name.split(".") if p not in ("_original_component", "_orig_mod", "module")]
    if len(parts) > 1 and parts[-1] == "weight":
        parts = parts[:-1]
    return ".".join(parts)


def _draw_norms(run: Run):
    panels = []  # (title, ylabel, all-weights series, per-matrix keys)
    for title, ylabel, main, metric in (
        ("weight norm, all weights", "‖θ‖", key_of("weight_norm"), None),
        ("weight norm per matrix", "‖W‖_F", None, "norm"),
        ("gradient norm", "‖∇L‖", key_of("grad_norm"), "grad_norm"),
        ("update ratio ‖Δθ‖/‖θ‖", "ratio", key_of("update_ratio"), "update_ratio"),
    ):
        total = _series(run, main) if main else None
        per = [k for k in _per_matrix(run, metric) if _series(run, k) is not None] if metric else []
        if total is not None or per:
            panels.append((title, ylabel, total, per))
    if not panels:
        return None
    names = list(dict.fromkeys(k.split("/", 2)[2] for *_, per in panels for k in per))
    color_of = dict(zip(names, _matrix_colors(len(names)), strict=True))  # same colour everywhere
    fig, axes = _figure(len(panels), height=1.9)
    for ax, (title, ylabel, total, per) in zip(axes[:, 0], panels, strict=True):
        for k in per:
            name = k.split("/", 2)[2]
            ax.plot(*_series(run, k), color=color_of[name], linewidth=0.9, alpha=0.8,
                    label=short_param_name(name))  # fmt: skip
        if total is not None:
            ax.plot(*total, color="black", linewidth=1.8, label="all weights")
        _auto_log(ax, *(line.get_ydata() for line in ax.get_lines()))
        named_before = any(p[3] for p in panels[: panels.index((title, ylabel, total, per))])
        if per and (len(names) > 12 or named_before):  # one legend of names: colours stay
            title += f" ({len(per)} matrices, colours as above)" if named_before else ""
            if len(names) > 12 and not named_before:
                title += f" ({len(per)} matrices, coloured in name order)"
            for line in ax.get_lines():
                if line.get_label() != "all weights":
                    line.set_label("_" + line.get_label())
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    _finish(axes, run)
    drawn = [t.split(",")[0].split(" per ")[0] for t, *_ in panels]
    fig.suptitle(f"{run.name}: " + ", ".join(dict.fromkeys(drawn)))
    return fig


def _matrix_colors(n: int) -> list:
    """Distinct colours for up to 20 lines, a gradient (in name order) beyond."""
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    if n <= 20:
        return [colormaps["tab20"](i) for i in range(n)]
    return [colormaps["viridis"](x) for x in np.linspace(0.0, 0.9, n)]


def _curvature_keys(run: Run) -> list[str]:
    return [
        k
        for k in run.keys()
        if re.match(rf"^{PREFIX}/(sharpness|hessian|lambda_max)", k) and not HEAD_KEY.match(k)
    ]


def _learning_rate(run: Run) -> tuple[np.ndarray, np.ndarray] | float | None:
    """The run's learning rate: a logged ``lr`` series, else ``lr`` in its configuration."""
    for k in _user_keys(run):
        if k.lower().rsplit("/", 1)[-1] in LR_KEYS:
            s = _series(run, k)
            if s is not None and np.nanmax(s[1]) > 0:
                return s
    cfg = run.config.get("run", run.config) if isinstance(run.config, dict) else {}
    lr = cfg.get("lr", cfg.get("learning_rate")) if isinstance(cfg, dict) else None
    return float(lr) if isinstance(lr, (int, float)) and lr > 0 else None


def _stability_line(ax, run: Run) -> None:
    """2/lr, where gradient descent on a quadratic of that curvature stops converging (Cohen et
    al.'s edge of stability; adaptive optimisers' threshold differs: the line is a reference)."""
    lr = _learning_rate(run)
    if lr is None:
        return
    label = "2/lr (edge of stability for GD)"
    if isinstance(lr, float):
        ax.axhline(2.0 / lr, color="#D55E00", linestyle="--", linewidth=1.2, label=label)
        return
    steps, values = lr
    with np.errstate(divide="ignore"):
        ax.plot(steps, np.where(values > 0, 2.0 / values, np.nan), color="#D55E00",
                linestyle="--", linewidth=1.2, label=label)  # fmt: skip


def _draw_sharpness(ax, run: Run, key: str) -> None:
    steps, values = _series(run, key)
    ax.plot(steps, values, color="#0072B2", marker=".", label=key.split("/", 1)[1])
    if "sharpness" in key or "lambda_max" in key:
        ymin, ymax = np.nanmin(values), np.nanmax(values)
        _stability_line(ax, run)
        lines = [line.get_ydata() for line in ax.get_lines()]
        _auto_log(ax, *lines)
        if ax.get_yscale() != "log":  # keep the data readable: the line may sit far above
            ax.set_ylim(
                min(0.0, ymin), max(ymax * 1.1, min(np.nanmax(np.concatenate(lines)), ymax * 3))
            )
    else:
        _auto_log(ax, values)


def _draw_curvature(run: Run):
    keys = [k for k in _curvature_keys(run) if _series(run, k) is not None]
    if not keys:
        return None
    fig, axes = _figure(len(keys), height=2.0)
    for ax, k in zip(axes[:, 0], keys, strict=True):
        _draw_sharpness(ax, run, k)
        ax.set_ylabel(k.split("/", 1)[1].replace("_", " "))
    _finish(axes, run)
    drawn = ["sharpness against 2/lr" if "sharpness" in k else k.split("/", 1)[1] for k in keys]
    fig.suptitle(f"{run.name}: curvature of the loss: " + ", ".join(dict.fromkeys(drawn)))
    return fig


def _draw_overview(run: Run):
    """Loss on top, then erank, subspace distance and sharpness on one shared time axis."""
    groups = _loss_groups(run)
    panels: list[tuple[str, Callable, list[str]]] = []  # (y label, draw, curves it shows)
    for kind, ylabel, keys in groups[:2]:  # losses, then accuracies: the curve people know
        if kind in ("loss", "fraction"):
            log = kind == "loss"  # accuracies read best on a linear 0-1 axis
            shown = list(_same_curves(run, keys))[:3]
            panels.append(
                (ylabel, lambda ax, k=shown, lg=log: _overview_loss(ax, run, k, lg), shown)
            )
    by_circuit = _layer_means(run, "erank")
    if by_circuit:
        panels.append(("effective rank", lambda ax, b=by_circuit: _overview_layers(ax, b), []))
    for metric in ("subspace_dist_ref", "subspace_dist"):
        by_circuit = _layer_means(run, metric)
        if by_circuit:
            label, transform = _view(metric)
            if transform is not None:
                by_circuit = {c: (s, transform(s, v)) for c, (s, v) in by_circuit.items()}
            short = "dist. to ref. look" if metric == "subspace_dist_ref" else "dist. / 100 steps"
            panels.append((short, lambda ax, b=by_circuit: _overview_layers(ax, b), []))
            break
    sharp = [k for k in _curvature_keys(run) if "sharpness" in k and _series(run, k) is not None]
    if sharp:
        panels.append(("sharpness", lambda ax: _draw_sharpness(ax, run, sharp[0]), []))
    if len(panels) < 2:  # the loss figure already says everything
        return None
    fig, axes = _figure(len(panels), height=1.55)
    for ax, (ylabel, draw, _) in zip(axes[:, 0], panels, strict=True):
        draw(ax)
        ax.set_ylabel(ylabel)
    _finish(axes, run, [keys for *_, keys in panels])
    fig.suptitle(f"{run.name}: training dynamics on one time axis")
    return fig


def _overview_loss(ax, run: Run, keys: list[str], log: bool = True) -> None:
    values = []
    for i, k in enumerate(keys):
        steps, v = _series(run, k)
        _plot_noisy(ax, steps, v, k, _LINE_COLORS[i % len(_LINE_COLORS)])
        values.append(v)
    if log:
        _auto_log(ax, *values)
    else:
        ax.set_ylim(-0.03, 1.03)


def _overview_layers(ax, by_circuit: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    """Per-layer lines (colour: layer, dash: circuit) when few layers, else circuit means."""
    n_layers = max(v.shape[1] for _, v in by_circuit.values())
    colors = _layer_colors(n_layers)
    for circuit, (steps, values) in by_circuit.items():
        style = CIRCUIT_STYLE.get(circuit, "-.")
        if n_layers <= 4:
            for layer in range(values.shape[1]):
                ax.plot(
                    steps, values[:, layer], color=colors[layer], linestyle=style,
                    label=f"L{layer} {circuit}",
                )  # fmt: skip
        else:
            ax.plot(steps, _nanmean(values, axis=1), linestyle=style, label=f"{circuit} mean")


# captions name no metric a run may lack: each figure's title says what it holds
FIGURES: list[tuple[str, Callable[[Run], Any], str]] = [
    ("overview", _draw_overview, "Learning curves and the monitor's signals on one time axis."),
    ("loss", _draw_loss, "Learning curves with detected events and phases."),
    ("erank", _draw_ranks, "Per-layer mean rank of each head's QK and OV circuit."),
    ("erank_heads", _draw_erank_heads, "Effective rank of every head over time."),
    ("subspace", _draw_subspace, "Per-layer mean distance of each head's top subspaces."),
    ("subspace_heads", _draw_subspace_heads, "Subspace distance of every head over time."),
    ("norms", _draw_norms, "Weight and gradient norms."),
    ("curvature", _draw_curvature, "Curvature of the loss on the probe batch."),
]


# -- the page -------------------------------------------------------------------------------------
def _html(tail: Any, out: Path, drawn: list[tuple[str, str]], failed: list[str]) -> Path:
    """Write the interactive page of the run ``tail`` holds into ``out``, the PNGs ``drawn``
    shown as the static figures and those that ``failed`` listed; returns its path."""
    from dynmon.page import write_run_page

    return write_run_page(tail.path, out, tail=tail, static=drawn, failed=failed)
