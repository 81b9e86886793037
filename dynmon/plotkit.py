"""The report's plotting kit: style, event colours, reading series out of a run, and the drawing
helpers (event marks, plateaus, phases, legends, axes) that the figures of ``dynmon.report`` share.

Kept apart from the figures so a pack's own figure (``save_figure``) or the page
(``dynmon.page``, for the event colours) can use them without the report.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dynmon.keys import HEAD_KEY, LAYER_KEY, is_dynmon_key
from dynmon.keys import key as key_of
from dynmon.runfolder import Run

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
    steps, grid = grid_from_keys(run.series, found)
    return steps, _clean(grid)


def grid_from_keys(
    series: Callable[[str], tuple[np.ndarray, np.ndarray]], found: Mapping[tuple[int, int], str]
) -> tuple[np.ndarray, np.ndarray]:
    """``(steps [T], values [T, L, H])`` from one scalar series per head, ``found`` mapping
    ``(layer, head)`` to its key; NaN where a head has no value at a step."""
    n_layers = 1 + max(layer for layer, _ in found)
    n_heads = 1 + max(head for _, head in found)
    per_key = {lh: series(k) for lh, k in found.items()}
    steps = np.unique(np.concatenate([s for s, _ in per_key.values()]))
    grid = np.full((len(steps), n_layers, n_heads), np.nan)  # [T, L, H]
    for (layer, head), (s, v) in per_key.items():
        grid[np.searchsorted(steps, s), layer, head] = v
    return steps, grid


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
