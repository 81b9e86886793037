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

from dynmon.keys import ALL_KEYS, EVENTS_KEY, HEAD_KEY, STEP_KEY, is_dynmon_key
from dynmon.runfolder import jsonable, restore
from dynmon.sinks.heatmap import heatmap_key, render_heatmap

__all__ = ["WandbSink", "render_heatmap"]  # render_heatmap stays importable from here

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
        run.define_metric(ALL_KEYS, step_metric=STEP_KEY)
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
            if is_dynmon_key(k):
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
                        payload[heatmap_key(name)] = image
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
