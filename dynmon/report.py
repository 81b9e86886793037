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

from dynmon.keys import HEAD_KEY
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
EVENT_COLORS = {
    "cliff": "#d62728",
    "onset": "#2ca02c",
    "memorization": "#9467bd",
    "grokking": "#ff7f0e",
    "metric_error": "#444444",
    "saturation": "#17becf",
    "circuit_formation": "#1f77b4",
    "circuit_formation_online": "#aec7e8",
    "cleanup": "#e377c2",
    "generalization": "#bcbd22",
    "rise": "#98df8a",
}
OTHER_EVENT_COLOR = "#8c564b"
PLATEAU_COLOR = "#7f7f7f"
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


LAYER_KEY = re.compile(r"^dynmon/(?P<metric>[^/]+)/L(?P<layer>\d+)\.(?P<circuit>\w+)$")


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
    steps, values = run.array_series(f"dynmon/{metric}/{circuit}")
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
    return [k for k in run.keys() if not k.startswith("dynmon/")]


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


def _auto_log(ax, *value_arrays: np.ndarray, ratio: float = 30.0) -> None:
    """Log y when every value is positive and max/min exceeds ``ratio`` (1.5 decades)."""
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


def _plateaus(events: list[dict[str, Any]], end: float) -> list[tuple[float, float]]:
    """``(start, end)`` of each plateau, paired per key; an open one runs to ``end``."""
    open_at: dict[str, float] = {}
    spans = []
    for e in events:
        key = str(e.get("key", ""))
        if e["kind"] == "plateau_start":
            open_at.setdefault(key, e["step"])
        elif e["kind"] == "plateau_end" and key in open_at:
            spans.append((open_at.pop(key), e["step"]))
    spans += [(start, end) for start in open_at.values()]
    return spans


def _draw_events(axes: Iterable, events: list[dict[str, Any]], end: float, label_top: bool) -> list:
    """Plateaus shaded, other events as vertical lines across every axis; returns legend handles."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    axes = list(axes)
    spans = _plateaus(events, end)
    marks = [e for e in events if not e["kind"].startswith("plateau")]
    for ax in axes:
        for a, b in spans:
            ax.axvspan(a, b, color=PLATEAU_COLOR, alpha=0.12, linewidth=0, zorder=0)
        for e in marks:
            color = EVENT_COLORS.get(e["kind"], OTHER_EVENT_COLOR)
            style = ":" if e["kind"] == "metric_error" else "--"
            ax.axvline(e["step"], color=color, linestyle=style, linewidth=1.0, alpha=0.85)
    if label_top and axes and len(marks) <= 12:
        for e in marks:
            axes[0].annotate(
                e["kind"],
                xy=(e["step"], 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -3),
                textcoords="offset points",
                rotation=90,
                va="top",
                ha="left",
                fontsize=7,
                color=EVENT_COLORS.get(e["kind"], OTHER_EVENT_COLOR),
            )
    handles: list = []
    if spans:
        handles.append(Patch(color=PLATEAU_COLOR, alpha=0.25, label="plateau"))
    for kind in dict.fromkeys(e["kind"] for e in marks):
        color = EVENT_COLORS.get(kind, OTHER_EVENT_COLOR)
        style = ":" if kind == "metric_error" else "--"
        handles.append(Line2D([], [], color=color, linestyle=style, label=kind))
    return handles


def _last_step(run: Run) -> float:
    steps = [r["step"] for r in run.metrics]
    return float(max(steps)) if steps else 0.0


def _finish(axes, run: Run, events: bool = True, label_top: bool = True) -> list:
    """Events on every panel, ``step`` on the bottom axis, x limits over the whole run."""
    flat = list(np.ravel(axes))
    handles = _draw_events(flat, _events(run), _last_step(run), label_top) if events else []
    steps = [r["step"] for r in run.metrics]
    if steps and max(steps) > min(steps):
        flat[0].set_xlim(min(steps), max(steps))
    for ax in np.atleast_2d(axes)[-1]:
        ax.set_xlabel("step")
    return handles


# -- the figures ----------------------------------------------------------------------------------
def _loss_groups(run: Run) -> list[tuple[str, str, list[str]]]:
    """The run's own scalars as panels ``(kind, y label, keys)``: losses, values in [0, 1]
    (accuracies), then up to four others, one panel each."""
    losses, fractions, rest = [], [], []
    for k in _user_keys(run):
        s = _series(run, k)
        if s is None:
            continue
        if "loss" in k.lower() or k.lower() in ("ppl", "perplexity"):
            losses.append(k)
        elif np.nanmin(s[1]) >= 0 and np.nanmax(s[1]) <= 1:
            fractions.append(k)
        else:
            rest.append(k)
    groups = [("loss", "loss", losses)] if losses else []
    if fractions:
        accuracy = all("acc" in k.lower() for k in fractions)
        label = fractions[0] if len(fractions) == 1 else ("accuracy" if accuracy else "value")
        groups.append(("fraction", label, fractions))
    groups += [("other", k, [k]) for k in rest[:4]]
    return groups


def _draw_loss(run: Run):
    groups = _loss_groups(run)
    if not groups:
        return None
    fig, axes = _figure(len(groups), height=2.6 if len(groups) == 1 else 2.0)
    for ax, (kind, ylabel, keys) in zip(axes[:, 0], groups, strict=True):
        values = []
        for i, k in enumerate(keys):
            steps, v = _series(run, k)
            _plot_noisy(ax, steps, v, k, f"C{i % 10}")
            values.append(v)
        if kind == "loss":
            _auto_log(ax, *values)
        elif kind == "fraction":
            ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(ylabel)
        if len(keys) > 1 or kind == "loss":
            ax.legend(loc="upper right")
    handles = _finish(axes, run)
    if handles:
        axes[-1, 0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{run.name}: learning curves and detected events")
    return fig


def _draw_layer_lines(run: Run, metrics: Iterable[str], title: str):
    """Rows of metrics, columns of circuits: one line per layer, the overall mean dashed."""
    found = [(m, _layer_means(run, m)) for m in metrics]
    found = [(m, by_circuit) for m, by_circuit in found if by_circuit]
    if not found:
        return None
    circuits = list(dict.fromkeys(c for _, by_circuit in found for c in by_circuit))
    fig, axes = _figure(len(found), len(circuits), height=2.2)
    for row, (metric, by_circuit) in enumerate(found):
        for col, circuit in enumerate(circuits):
            ax = axes[row, col]
            ax.set_title(f"{circuit}: {RANK_LABELS.get(metric, metric)}")
            if circuit not in by_circuit:
                ax.set_visible(False)
                continue
            steps, values = by_circuit[circuit]
            colors = _layer_colors(values.shape[1])
            for layer in range(values.shape[1]):
                ax.plot(steps, values[:, layer], color=colors[layer], label=f"L{layer}")
            overall = _series(run, f"dynmon/{metric}/{circuit}")
            if overall is not None:
                ax.plot(*overall, color="black", linestyle=":", linewidth=1.2, label="mean")
            if col == 0:
                ax.set_ylabel(RANK_LABELS.get(metric, metric).split(" (")[0])
    _finish(axes, run, label_top=False)
    axes[0, -1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), title="layer")
    fig.suptitle(f"{run.name}: {title}")
    return fig


def _draw_ranks(run: Run):
    return _draw_layer_lines(run, RANK_METRICS, "per-layer mean rank of each head's circuit")


def _draw_subspace(run: Run):
    return _draw_layer_lines(
        run,
        ("subspace_dist", "subspace_dist_ref", "subspace_dist_final"),
        "per-layer mean subspace distance (0 to 1)",
    )


def _draw_head_heatmaps(run: Run, metric: str, label: str, cmap: str, vmin=None, vmax=None):
    """One panel per circuit: heads (``L0.H0``...) down, steps across, a colorbar each."""
    circuits = []
    for c in _circuits(run, metric):
        grid = _head_grid(run, metric, c)
        if grid is not None and np.isfinite(grid[1]).any():
            circuits.append((c, grid))
    if not circuits:
        return None
    n_rows = circuits[0][1][1].shape[1] * circuits[0][1][1].shape[2]
    height = float(np.clip(0.16 * n_rows + 0.9, 2.0, 5.5))
    fig, axes = _figure(len(circuits), height=height)
    for ax, (circuit, (steps, grid)) in zip(axes[:, 0], circuits, strict=True):
        T, L, H = grid.shape
        image = grid.reshape(T, L * H).T  # [L*H, T]: one row per head, layer-major
        edges = _edges(steps)
        mesh = ax.pcolormesh(
            edges, np.arange(L * H + 1), image, cmap=cmap, vmin=vmin, vmax=vmax, shading="flat"
        )
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
        fig.colorbar(mesh, ax=ax, label=label, pad=0.01, fraction=0.04)
    _finish(axes, run, events=False)
    lo, hi = axes[0, 0].get_xlim()
    edges = np.concatenate([_edges(steps) for _, (steps, _) in circuits])
    axes[0, 0].set_xlim(min(lo, edges.min()), max(hi, edges.max()))  # first and last cells whole
    _mark_events_on_heatmaps(axes[:, 0], _events(run))
    fig.suptitle(f"{run.name}: {label} of every head over time")
    return fig


def _edges(steps: np.ndarray) -> np.ndarray:
    """Cell edges halfway between look steps (so uneven schedules keep a true step axis)."""
    s = steps.astype(float)
    if len(s) == 1:
        return np.array([s[0] - 0.5, s[0] + 0.5])
    mid = (s[1:] + s[:-1]) / 2
    return np.concatenate([[s[0] - (mid[0] - s[0])], mid, [s[-1] + (s[-1] - mid[-1])]])


def _mark_events_on_heatmaps(axes, events: list[dict[str, Any]]) -> None:
    """Event lines (no shading: it would hide the colours) over heatmaps."""
    for ax in axes:
        for e in events:
            if e["kind"].startswith("plateau"):
                continue
            color = EVENT_COLORS.get(e["kind"], OTHER_EVENT_COLOR)
            ax.axvline(e["step"], color=color, linestyle="--", linewidth=1.0)
            ax.annotate(
                e["kind"],
                xy=(e["step"], 0.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, 3),
                textcoords="offset points",
                fontsize=7,
                color="white",
                rotation=90,
                va="bottom",
            )


def _draw_erank_heads(run: Run):
    return _draw_head_heatmaps(run, "erank", "effective rank", "viridis")


def _draw_subspace_heads(run: Run):
    return _draw_head_heatmaps(run, "subspace_dist", "subspace distance", "magma", 0.0, 1.0)


def _per_matrix(run: Run, metric: str) -> list[str]:
    """``dynmon/<metric>/<parameter name>`` keys (not heads, layers or circuits)."""
    prefix = f"dynmon/{metric}/"
    return [
        k
        for k in run.keys()
        if k.startswith(prefix) and not HEAD_KEY.match(k) and not LAYER_KEY.match(k)
    ]


def _draw_norms(run: Run):
    from matplotlib.lines import Line2D

    panels = []  # (title, ylabel, all-weights series, per-matrix keys, log y)
    for title, ylabel, main, metric, log in (
        ("weight norm, all weights", "‖θ‖", "dynmon/weight_norm", None, False),
        ("weight norm per matrix", "‖W‖_F", None, "norm", False),
        ("gradient norm", "‖∇L‖", "dynmon/grad_norm", "grad_norm", True),
        ("update ratio ‖Δθ‖/‖θ‖", "ratio", "dynmon/update_ratio", "update_ratio", True),
    ):
        total = _series(run, main) if main else None
        per = [k for k in _per_matrix(run, metric) if _series(run, k) is not None] if metric else []
        if total is not None or per:
            panels.append((title, ylabel, total, per, log))
    if not panels:
        return None
    names = list(dict.fromkeys(k.split("/", 2)[2] for *_, per, _ in panels for k in per))
    color_of = dict(zip(names, _matrix_colors(len(names)), strict=True))  # same colour everywhere
    fig, axes = _figure(len(panels), height=1.9)
    legend_drawn = False
    for ax, (title, ylabel, total, per, log) in zip(axes[:, 0], panels, strict=True):
        for k in per:
            name = k.split("/", 2)[2]
            ax.plot(*_series(run, k), color=color_of[name], linewidth=0.9, alpha=0.8, label=name)
        if total is not None:
            ax.plot(*total, color="black", linewidth=1.8, label="all weights")
        _auto_log(ax, *(line.get_ydata() for line in ax.get_lines()), ratio=30 if log else 8)
        if per and len(names) > 12:
            title += f" ({len(per)} matrices" + (", black: all weights)" if total else ")")
        elif per and not legend_drawn:  # one legend: a colour means one matrix in every panel
            handles, labels = ax.get_legend_handles_labels()
            handles += [
                Line2D([], [], color=color_of[n], label=n) for n in names if n not in labels
            ]
            ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.05), fontsize=6.5)
            legend_drawn = True
        elif per and total is not None:
            title += " (black: all weights)"
        ax.set_title(title)
        ax.set_ylabel(ylabel)
    _finish(axes, run, label_top=False)
    fig.suptitle(f"{run.name}: weight norms, gradient norms and update ratios")
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
        if re.match(r"^dynmon/(sharpness|hessian|lambda_max)", k) and not HEAD_KEY.match(k)
    ]


def _draw_curvature(run: Run):
    keys = [k for k in _curvature_keys(run) if _series(run, k) is not None]
    if not keys:
        return None
    fig, axes = _figure(len(keys), height=1.9)
    for ax, k in zip(axes[:, 0], keys, strict=True):
        ax.plot(*_series(run, k), color="#1f77b4", marker=".")
        ax.set_ylabel(k.split("/", 1)[1].replace("_", " "))
    _finish(axes, run, label_top=False)
    fig.suptitle(f"{run.name}: curvature of the loss")
    return fig


def _draw_overview(run: Run):
    """Loss on top, then erank, subspace distance and sharpness on one shared time axis."""
    groups = _loss_groups(run)
    panels: list[tuple[str, Callable]] = []
    for kind, ylabel, keys in groups[:2]:  # losses, then accuracies: the curve people know
        if kind in ("loss", "fraction"):
            log = kind == "loss"  # accuracies read best on a linear 0-1 axis
            panels.append((ylabel, lambda ax, k=keys, lg=log: _overview_loss(ax, run, k, lg)))
    for metric, ylabel in (("erank", "effective rank"), ("subspace_dist", "subspace dist.")):
        by_circuit = _layer_means(run, metric)
        if by_circuit:
            panels.append((ylabel, lambda ax, b=by_circuit: _overview_layers(ax, b)))
    sharp = [k for k in _curvature_keys(run) if "sharpness" in k and _series(run, k) is not None]
    if sharp:
        panels.append(("sharpness", lambda ax: ax.plot(*_series(run, sharp[0]), color="#333")))
    if len(panels) < 2:  # the loss figure already says everything
        return None
    fig, axes = _figure(len(panels), height=1.55)
    for ax, (ylabel, draw) in zip(axes[:, 0], panels, strict=True):
        draw(ax)
        ax.set_ylabel(ylabel)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    handles = _finish(axes, run)
    if handles:
        axes[-1, 0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.suptitle(f"{run.name}: training dynamics on one time axis")
    return fig


def _overview_loss(ax, run: Run, keys: list[str], log: bool = True) -> None:
    values = []
    for i, k in enumerate(keys[:3]):
        steps, v = _series(run, k)
        _plot_noisy(ax, steps, v, k, f"C{i}")
        values.append(v)
    if log:
        _auto_log(ax, *values)


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


FIGURES: list[tuple[str, Callable[[Run], Any], str]] = [
    ("overview", _draw_overview, "Loss, effective rank, subspace distance and sharpness."),
    ("loss", _draw_loss, "Learning curves with detected events."),
    ("erank", _draw_ranks, "Per-layer mean rank of each head's QK and OV circuit."),
    ("erank_heads", _draw_erank_heads, "Effective rank of every head over time."),
    ("subspace", _draw_subspace, "Per-layer mean distance of each head's top subspaces."),
    ("subspace_heads", _draw_subspace_heads, "Subspace distance of every head over time."),
    ("norms", _draw_norms, "Weight norm, gradient norm and update ratio."),
    ("curvature", _draw_curvature, "Sharpness and Hessian trace on the probe batch."),
]


# -- the page -------------------------------------------------------------------------------------
def _html(tail: Any, out: Path, drawn: list[tuple[str, str]], failed: list[str]) -> Path:
    """Write the interactive page of the run ``tail`` holds into ``out``, the PNGs ``drawn``
    shown as the static figures and those that ``failed`` listed; returns its path."""
    from dynmon.page import write_run_page

    return write_run_page(tail.path, out, tail=tail, static=drawn, failed=failed)
