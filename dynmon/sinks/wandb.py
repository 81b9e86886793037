"""Weights & Biases sink: scalar charts on dynmon's own step axis, per-head values as heatmaps.

Keys and panels:

* every ``dynmon/*`` key is charted against ``dynmon/step`` (logged with each call), never
  ``wandb.log(step=...)``, so it cannot collide with another logger's step (HF Trainer's W&B
  callback, Lightning's ``WandbLogger``);
* per-head scalars (``dynmon/erank/L0.H1.QK``) are left out by default (``per_head_scalars``): one
  chart per head is unreadable. Layer and overall means stay charts; per-head values arrive as one
  heatmap image per metric per look, ``dynmon/heatmap/<metric>/<circuit>`` (layers x heads, or
  layers x heads x index for spectra);
* events go to the table ``dynmon/events`` and, on an online run, to ``run.alert``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dynmon.keys import HEAD_KEY
from dynmon.runfolder import jsonable, restore

STEP_KEY = "dynmon/step"
EVENTS_KEY = "dynmon/events"
EVENT_COLUMNS = ["step", "kind", "key", "value", "message"]
WARN_KINDS = frozenset({"cliff", "metric_error", "divergence", "nan"})


def _import_wandb() -> Any:
    try:
        import wandb
    except ImportError as exc:
        raise ImportError(
            "WandbSink needs the wandb package: pip install 'dynmon[wandb]' (or pip install wandb)"
        ) from exc
    return wandb


class WandbSink:
    """Log a monitored run to W&B, online or offline; reuses ``run`` or an active ``wandb.run``.

    Args:
        project, entity, name, group, mode, dir, config: passed to ``wandb.init`` when this sink
            starts the run (``mode`` None lets ``WANDB_MODE`` decide).
        run: an existing run to log into; a run the sink did not start is never finished by it.
        heatmap_every: draw per-head heatmaps at every n-th look that carries arrays (0: never).
        per_head_scalars: also chart every ``dynmon/<metric>/L<l>.H<h>.<circuit>`` key.
        user_scalars: also log keys outside ``dynmon/`` (``loss``, ``test/acc``); turn off when
            another logger (HF Trainer, Lightning) already logs them.
        alerts: ``run.alert`` for events on an online run: True (all kinds), False, or the kinds.
    """

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        mode: str | None = None,
        dir: str | Path | None = None,
        config: Mapping[str, Any] | None = None,
        run: Any = None,
        heatmap_every: int = 1,
        per_head_scalars: bool = False,
        user_scalars: bool = True,
        alerts: bool | Iterable[str] = True,
    ) -> None:
        self._wandb = wandb = _import_wandb()
        self.heatmap_every = int(heatmap_every)
        self.per_head_scalars = per_head_scalars
        self.user_scalars = user_scalars
        self.alerts = alerts if isinstance(alerts, bool) else frozenset(alerts)
        self._owns_run = False
        if run is None:
            run = wandb.run
        if run is None:
            if dir is not None:
                Path(dir).mkdir(parents=True, exist_ok=True)
            run = wandb.init(
                project=project,
                entity=entity,
                name=name,
                group=group,
                mode=mode,
                dir=None if dir is None else str(dir),
                config=_plain(config) if config else None,
            )
            self._owns_run = True
        elif config:
            run.config.update(_plain(config), allow_val_change=True)
        self.run = run
        run.define_metric(STEP_KEY, hidden=True)
        run.define_metric("dynmon/*", step_metric=STEP_KEY)
        self._user_keys: set[str] = set()
        self._looks = 0
        self._event_rows: list[list[Any]] = []
        self._closed = False

    @property
    def online(self) -> bool:
        """True when the run talks to a W&B server (not offline, not disabled)."""
        return not (getattr(self.run, "offline", False) or getattr(self.run, "disabled", False))

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Merge the resolved configuration into ``run.config``."""
        self.run.config.update(_plain(config), allow_val_change=True)

    def write(
        self, step: int, scalars: Mapping[str, float], arrays: Mapping[str, np.ndarray]
    ) -> None:
        """One ``run.log`` with ``dynmon/step``, the chosen scalars and this look's heatmaps."""
        payload: dict[str, Any] = {STEP_KEY: int(step)}
        for k, v in scalars.items():
            if k.startswith("dynmon/"):
                if self.per_head_scalars or not HEAD_KEY.match(k):
                    payload[k] = v
            elif self.user_scalars:
                if k not in self._user_keys:  # chart user scalars on the same step axis
                    self.run.define_metric(k, step_metric=STEP_KEY)
                    self._user_keys.add(k)
                payload[k] = v
        if arrays:
            if self.heatmap_every > 0 and self._looks % self.heatmap_every == 0:
                for name, values in arrays.items():
                    image = self._heatmap(name, np.asarray(values, dtype=np.float64), step)
                    if image is not None:
                        payload[_heatmap_key(name)] = image
            self._looks += 1
        if len(payload) > 1:
            self.run.log(payload)

    def _heatmap(self, name: str, values: np.ndarray, step: int) -> Any:
        """One image per metric per look: a ``[L, H]`` grid, or ``L`` panels of ``[H, k]``."""
        if values.ndim not in (2, 3) or values.size == 0:
            return None
        pixels = render_heatmap(name, values, step)
        return self._wandb.Image(pixels, caption=f"{name} at step {step}")

    def write_event(self, event: Mapping[str, Any]) -> None:
        """Add a row to the ``dynmon/events`` table; alert on an online run."""
        ev = jsonable(dict(event))
        step = int(ev.get("step", 0))
        value = ev.get("value", ev.get("level"))
        row = [
            step,
            str(ev.get("kind", "event")),
            str(ev.get("key", "")),
            float(value) if isinstance(value, (int, float)) else math.nan,
            str(ev.get("message", "")),
        ]
        self._event_rows.append(row)
        self.run.log({STEP_KEY: step, EVENTS_KEY: self._table()})
        if self.online and (self.alerts is True or (self.alerts and row[1] in self.alerts)):
            self._alert(row)

    def _table(self) -> Any:
        """The events so far as a table (a new table each time: logged tables are immutable)."""
        return self._wandb.Table(columns=EVENT_COLUMNS, data=[list(r) for r in self._event_rows])

    def _alert(self, row: list[Any]) -> None:
        step, kind, key, _, message = row
        level = self._wandb.AlertLevel.WARN if kind in WARN_KINDS else self._wandb.AlertLevel.INFO
        try:
            self.run.alert(
                title=f"dynmon: {kind} at step {step}",
                text=message or f"{kind} in {key or 'the run'} at step {step}",
                level=level,
            )
        except Exception as exc:  # an alert is a courtesy; never drop the sink over it
            warnings.warn(f"dynmon: W&B alert failed: {exc!r}", RuntimeWarning, 2)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Merge headline figures into ``run.summary``."""
        self.run.summary.update(_plain(summary))

    def close(self) -> None:
        """Finish the run if this sink started it; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._owns_run:
            self.run.finish()

    def __repr__(self) -> str:
        return f"WandbSink(run={getattr(self.run, 'name', None)!r}, owns_run={self._owns_run})"


def _plain(d: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe values for W&B, keeping NaN and infinities as floats (W&B accepts them)."""
    return restore(jsonable(dict(d)))


def _heatmap_key(name: str) -> str:
    """``dynmon/erank/QK`` -> ``dynmon/heatmap/erank/QK`` (the bare key is the overall mean)."""
    rest = name[len("dynmon/") :] if name.startswith("dynmon/") else name
    return f"dynmon/heatmap/{rest}"


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
