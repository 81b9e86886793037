"""The pack's figure, ``plots/induction.png``: loss, induction score and subspace distance on one
time axis, with the emergence and the subspace stabilisation marked on every panel.

Panels (shared step axis): (1) probe loss on repeated and on first-occurrence tokens and the
training loss; (2) induction score (solid) and previous-token score (dotted) of every head,
coloured by layer, with the head threshold; (3) head-averaged subspace distance of QK and OV to
the previous look (dynmon's online measure), with the stabilisation threshold; (4) distance of
QK and OV to their final matrices (the seed paper's offline measure), per layer.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dynmon.keys import key
from dynmon.metrics.timeseries import moving_average, moving_median
from dynmon.report import save_figure

FIGURE = "induction.png"


def _head_series(run: Any, metric: str, target: str) -> dict[tuple[int, int], tuple]:
    """``{(layer, head): (steps, values)}`` of a per-head key family."""
    from dynmon.keys import HEAD_KEY

    out = {}
    for k in run.keys():
        m = HEAD_KEY.match(k)
        if m and m["metric"] == metric and m["circuit"] == target:
            out[int(m["layer"]), int(m["head"])] = run.series(k)
    return dict(sorted(out.items()))


def draw(run_dir: Path | str, summary: dict[str, Any]) -> Path | None:
    """Draw ``plots/induction.png`` into the run folder; returns its path (None without data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import dynmon

    run_dir = Path(run_dir)
    run = dynmon.load_run(run_dir)
    if not run.metrics:
        return None
    cfg = run.config.get("run", {})
    n_layers = int(cfg.get("n_layers", 1))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.85, max(n_layers, 1)))
    fig, axes = plt.subplots(4, 1, figsize=(9, 11), sharex=True, height_ratios=[1.1, 1.1, 1, 1])
    ax_loss, ax_ind, ax_sub, ax_ref = axes

    # (1) losses
    s, v = run.series("loss")
    if len(s):
        ax_loss.plot(s, v, color="0.8", lw=0.6, label="training loss")
        ax_loss.plot(
            s, moving_average(v, 25), color="0.45", lw=1.0, label="training loss (smoothed)"
        )
    for name, color, label in (
        ("probe/loss_first", "tab:orange", "probe: first-occurrence tokens"),
        ("probe/loss_repeated", "tab:blue", "probe: repeated tokens"),
    ):
        s, v = run.series(name)
        ax_loss.plot(s, v, color=color, lw=1.6, label=label)
    ax_loss.set_ylabel("next-token loss (nats)")
    ax_loss.set_ylim(bottom=0)
    icl = summary.get("icl_score")
    title = f"{n_layers}-layer attention-only, seed {cfg.get('seed', '?')}"
    if icl is not None:
        title += f": ICL score {icl:+.2f}, max induction score {summary['induction_score_max']:.2f}"
    ax_loss.set_title(title, fontsize=10)

    # (2) per-head scores, coloured by layer
    thr = float(cfg.get("head_threshold", 0.4))
    for (layer, head), (s, v) in _head_series(run, "induction_score", "attn").items():
        strong = np.nanmax(v) > thr
        ax_ind.plot(
            s,
            v,
            color=colors[layer],
            lw=1.6 if strong else 0.8,
            alpha=1.0 if strong else 0.5,
            label=f"L{layer}.H{head} induction" if strong else None,
        )
    for (layer, head), (s, v) in _head_series(run, "prev_token_score", "attn").items():
        strong = np.nanmax(v) > thr
        ax_ind.plot(
            s,
            v,
            color=colors[layer],
            ls=":",
            lw=1.6 if strong else 0.7,
            alpha=1.0 if strong else 0.4,
            label=f"L{layer}.H{head} previous-token" if strong else None,
        )
    ax_ind.axhline(thr, color="0.5", lw=0.8, ls="--")
    ax_ind.set_ylabel("attention score")
    ax_ind.set_ylim(0, 1)
    handles = [
        plt.Line2D([], [], color=colors[i], lw=2, label=f"layer {i}") for i in range(n_layers)
    ]
    handles += [
        plt.Line2D([], [], color="k", lw=1.4, label="induction score"),
        plt.Line2D([], [], color="k", lw=1.4, ls=":", label="previous-token score"),
    ]

    # (3) online subspace distance
    qs, qk = run.series(key("subspace_dist", "QK"))
    os_, ov = run.series(key("subspace_dist", "OV"))
    ax_sub.plot(qs, qk, color="tab:purple", lw=1.0, alpha=0.7, label="QK (mean over heads)")
    ax_sub.plot(os_, ov, color="tab:green", lw=1.0, alpha=0.7, label="OV (mean over heads)")
    stab = summary.get("subspace_stabilisation") or {}
    if stab.get("steps"):
        pass
    common = np.intersect1d(qs, os_)
    if len(common):
        d = 0.5 * (qk[np.isin(qs, common)] + ov[np.isin(os_, common)])
        ax_sub.plot(common, moving_median(d, 3), color="k", lw=1.6, label="QK and OV")
    if stab.get("threshold") is not None:
        ax_sub.axhline(stab["threshold"], color="tab:blue", lw=0.8, ls="--", label="threshold")
    look = cfg.get("look_every", "?")
    ax_sub.set_ylabel(f"subspace distance\nto {look} steps before")
    ax_sub.set_ylim(bottom=0)

    # (4) offline distance to the final matrices
    ref = {k: run.hindsight_series(k) for k in run.hindsight_keys()}
    for layer in range(n_layers):
        for circuit, ls in (("QK", "-"), ("OV", "--")):
            name = f"dist_final/L{layer}.{circuit}"
            if name in ref:
                ax_ref.plot(*ref[name], color=colors[layer], ls=ls, lw=1.2)
    if "dist_final/mean" in ref:
        ax_ref.plot(*ref["dist_final/mean"], color="k", lw=1.6)
    ax_ref.set_ylabel("distance to the\nfinal matrix")
    ax_ref.set_ylim(bottom=0)
    ax_ref.set_xlabel("step")
    ref_handles = [
        plt.Line2D([], [], color=colors[i], lw=2, label=f"layer {i}") for i in range(n_layers)
    ]
    ref_handles += [
        plt.Line2D([], [], color="k", lw=1.2, label="QK"),
        plt.Line2D([], [], color="k", lw=1.2, ls="--", label="OV"),
        plt.Line2D([], [], color="k", lw=2, label="mean of all heads"),
    ]

    # markers on every panel
    em, st = summary.get("emergence_step"), summary.get("subspace_stabilisation_step")
    cliff = summary.get("emergence_cliff") or {}
    for ax in axes:
        if cliff.get("start") is not None and cliff.get("end") is not None:
            ax.axvspan(cliff["start"], cliff["end"], color="tab:red", alpha=0.07, lw=0)
        if em is not None:
            ax.axvline(em, color="tab:red", lw=1.2, ls="--")
        if st is not None:
            ax.axvline(st, color="tab:blue", lw=1.2, ls="-.")
        ax.grid(alpha=0.25)
    marks = []
    if em is not None:
        marks.append(plt.Line2D([], [], color="tab:red", ls="--", label=f"emergence ({em})"))
    if st is not None:
        lead = summary.get("subspace_lead")
        marks.append(
            plt.Line2D(
                [], [], color="tab:blue", ls="-.", label=f"subspaces settled ({st}, lead {lead})"
            )
        )
    ax_loss.legend(
        handles=ax_loss.get_legend_handles_labels()[0] + marks, fontsize=7, loc="lower left"
    )
    ax_ind.legend(handles=handles, fontsize=7, loc="upper left", ncol=2)
    ax_sub.legend(fontsize=7, loc="upper right")
    ax_ref.legend(handles=ref_handles, fontsize=7, loc="upper right", ncol=2)
    fig.align_ylabels(axes)
    fig.tight_layout()
    return save_figure(fig, run_dir, FIGURE)
