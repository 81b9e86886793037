"""The pack's figure, ``plots/linear_icl.png``: measured loss, theory and the learned key-query
map's effective rank on one step axis (``linear_icl_sweep.png`` for a rank sweep).

Panel 1: training and fresh-data loss, the theory curve where there is one (ATTN_M σ̃(t), the
linear transformer's gradient flow), the plateau levels L(M_m) as dotted lines and the detected
plateaus shaded. Panel 2: erank of Γ = Σ_h Γ_h and its numerical rank, each head's erank thin.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dynmon.keys import key
from dynmon.report import save_figure
from dynmon.runfolder import load_run

from ..readback import finite_series as _series

FIGURE = "linear_icl.png"
SWEEP_FIGURE = "linear_icl_sweep.png"


def _levels(ax: Any, summary: dict[str, Any]) -> None:
    for i, lv in enumerate(summary.get("theory_plateaus", [])):
        label = "theory L(M_m)" if i == 0 else None
        ax.axhline(lv["level"], color="tab:red", ls=":", lw=0.9, label=label)
    for i, p in enumerate(summary.get("plateaus", [])):
        label = "detected plateau" if i == 0 else None
        ax.axvspan(p["start"], p["end"], color="tab:orange", alpha=0.12, label=label)


def draw(run_dir: Path | str, summary: dict[str, Any]) -> Path | None:
    """Draw ``plots/linear_icl.png`` into the run folder; returns its path (None without data)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if not run.metrics:
        return None
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 7), sharex=True, height_ratios=[1.4, 1])
    for name, style in (
        ("loss", dict(color="0.6", lw=1.0, label="training loss")),
        ("test/loss", dict(color="k", lw=1.4, label="fresh-data loss")),
        ("theory/loss", dict(color="tab:red", lw=1.2, ls="--", label="theory")),
    ):
        s, v = _series(run, name)
        if s:
            ax1.plot(s, v, **style)
    _levels(ax1, summary)
    ax1.set_yscale("log")
    ax1.set_ylabel("loss")
    ax1.legend(fontsize=8)
    ax1.set_title(f"linear ICL: {summary.get('model', '')}")
    names = {k for k in run.keys() if k.startswith(key("erank", "KQ.H"))}
    heads = sorted(names, key=lambda k: int(k.rsplit("H", 1)[1]))
    for i, k in enumerate(heads):
        ax2.plot(
            *_series(run, k),
            color="tab:blue",
            lw=0.6,
            alpha=0.5,
            label="erank per head" if i == 0 else None,
        )
    ax2.plot(*_series(run, key("erank", "KQ")), color="tab:blue", lw=1.8, label="erank of Σ_h Γ_h")
    ax2.plot(
        *_series(run, key("numerical_rank", "KQ")),
        color="tab:green",
        lw=1.2,
        drawstyle="steps-post",
        label="numerical rank of Σ_h Γ_h",
    )
    ax2.set_ylabel("rank")
    ax2.set_xlabel("step")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, run_dir, FIGURE)


def draw_sweep(run_dir: Path | str, summary: dict[str, Any]) -> Path | None:
    """``plots/linear_icl_sweep.png``: each R's fresh-data loss with its theory levels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    run = load_run(run_dir)
    if not run.metrics:
        return None
    fig, ax = plt.subplots(figsize=(9, 5))
    for name in summary.get("distinct_plateaus", {}):
        (line,) = ax.plot(*_series(run, f"test/loss/{name}"), lw=1.3, label=name)
        for lv in summary["theory_plateaus"][name]:
            ax.axhline(lv["level"], color=line.get_color(), ls=":", lw=0.7)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("fresh-data loss")
    ax.legend(title="rank per head")
    fig.tight_layout()
    return save_figure(fig, run_dir, SWEEP_FIGURE)
