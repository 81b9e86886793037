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

The style, series readers and drawing helpers the figures share are in ``dynmon.plotkit``.
One file (~580 lines): the figures, their list and the page that shows them, one function each.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from dynmon.keys import HEAD_KEY, LAYER_KEY, PREFIX
from dynmon.keys import key as key_of
from dynmon.plotkit import (
    CIRCUIT_STYLE,
    CURVE_KINDS,
    DPI,
    EVENT_COLORS,
    EVENT_STYLES,
    LR_KEYS,
    OTHER_EVENT_COLOR,
    PHASE_KINDS,
    RANK_LABELS,
    RANK_METRICS,
    STYLE,
    _auto_log,
    _circuits,
    _event_label,
    _events,
    _figure,
    _finish,
    _first_step,
    _head_grid,
    _layer_colors,
    _layer_means,
    _nanmean,
    _phases,
    _plot_noisy,
    _series,
    _user_keys,
    save_figure,
)
from dynmon.runfolder import Run, load_run

__all__ = ["make_report", "save_figure", "FIGURES"]


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
