"""Per-head arrays drawn as labelled heatmap images, shared by the W&B and TensorBoard sinks."""

from __future__ import annotations

import numpy as np

from dynmon.keys import heatmap_key

__all__ = ["heatmap_key", "render_heatmap"]  # heatmap_key stays importable from here


def render_heatmap(name: str, values: np.ndarray, step: int) -> np.ndarray:
    """RGB pixels ``[h, w, 3]`` of a labelled heatmap, drawn off-screen (no pyplot state):
    ``[L, H]`` as one layers x heads grid, ``[L, H, k]`` as one heads x k panel per layer."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    spectra = values.ndim == 3
    grids = list(values) if spectra else [values]  # L x [H, k], or one [L, H]
    n_rows, n_cols = grids[0].shape
    cols = min(len(grids), 4)  # panels per row
    rows = -(-len(grids) // cols)
    cell_w = min(0.12 * n_cols + 0.8, 3.5) if spectra else 0.32 * n_cols + 0.6
    cell_h = 0.22 * n_rows + 0.7 if spectra else 0.32 * n_rows + 0.5
    size = (max(cols * cell_w + 1.2, 3.2), max(rows * cell_h + 0.5, 2.2))
    fig = Figure(figsize=size, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    finite = values[np.isfinite(values)]
    vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    norm = None
    if spectra and vmin > 0 and vmax / vmin > 100:  # spectra spanning decades: log colours
        norm, vmin, vmax = LogNorm(vmin, vmax), None, None
    for i, ax in enumerate(axes):
        if i >= len(grids):
            ax.set_visible(False)
            continue
        grid = grids[i]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=vmin, vmax=vmax, norm=norm)
        if spectra:
            ax.set_title(f"L{i}", fontsize=9)
            ax.set_xlabel("singular value index", fontsize=8)
            ax.set_yticks(range(n_rows), [f"H{h}" for h in range(n_rows)], fontsize=7)
        else:
            ax.set_xticks(range(n_cols), [f"H{h}" for h in range(n_cols)], fontsize=7)
            ax.set_yticks(range(n_rows), [f"L{layer}" for layer in range(n_rows)], fontsize=7)
            if n_rows * n_cols <= 64:  # small enough to print the values in the cells
                for (r, c), v in np.ndenumerate(grid):
                    light = vmax > vmin and (v - vmin) / (vmax - vmin) > 0.6
                    color = "black" if light else "white"
                    ax.text(c, r, f"{v:.3g}", ha="center", va="center", fontsize=6, color=color)
        ax.tick_params(length=0)
    fig.colorbar(im, ax=list(axes[: len(grids)]), shrink=0.9)
    fig.suptitle(f"{name}  (step {step})", fontsize=9)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
