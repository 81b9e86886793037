"""TensorBoard sink: scalars on dynmon's step, per-head values as heatmap images, events as text.

Tags:

* every scalar goes to ``add_scalar(key, value, step)``; per-head scalars
  (``dynmon/erank/L0.H1.QK``) are left out by default (``per_head_scalars``), as in the W&B sink:
  per-head values arrive as one heatmap image per metric per look, ``dynmon/heatmap/<metric>/...``;
* each event is a Markdown row under the text tag ``dynmon/events`` and a scalar marker
  ``dynmon/event/<kind>`` (the event's value, or 1.0) at the event's step;
* the resolved configuration and the summary are text (``dynmon/config``, ``dynmon/summary``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dynmon.keys import CONFIG_KEY, EVENTS_KEY, HEAD_KEY, SUMMARY_KEY, event_key, is_dynmon_key
from dynmon.runfolder import jsonable, restore
from dynmon.sinks.heatmap import heatmap_key, render_heatmap

EVENTS_TAG, CONFIG_TAG, SUMMARY_TAG = EVENTS_KEY, CONFIG_KEY, SUMMARY_KEY


def _summary_writer(log_dir: str) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise ImportError(
            "TensorBoardSink needs the tensorboard package: pip install 'dynmon[tensorboard]' "
            "(or pip install tensorboard)"
        ) from exc
    return SummaryWriter(log_dir=log_dir)


class TensorBoardSink:
    """Write a monitored run as TensorBoard event files in ``log_dir``, or through ``writer``.

    Args:
        log_dir: the folder for the event files (created); ignored when ``writer`` is given.
        writer: an existing ``SummaryWriter`` (e.g. Lightning's ``TensorBoardLogger.experiment``);
            a writer the sink did not open is flushed but never closed by it.
        heatmap_every: draw per-head heatmaps at every n-th look that carries arrays (0: never).
        per_head_scalars: also write every ``dynmon/<metric>/L<l>.H<h>.<circuit>`` scalar.
        user_scalars: also write keys outside ``dynmon/`` (``loss``); turn off when another
            logger already writes them.
    """

    def __init__(
        self,
        log_dir: str | Path | None = None,
        *,
        writer: Any = None,
        heatmap_every: int = 1,
        per_head_scalars: bool = False,
        user_scalars: bool = True,
    ) -> None:
        if writer is None and log_dir is None:
            raise ValueError("TensorBoardSink needs log_dir=<folder> or writer=<SummaryWriter>")
        if heatmap_every < 0:
            raise ValueError(f"heatmap_every must be >= 0 (0: no heatmaps), got {heatmap_every}")
        self._owns_writer = writer is None
        if writer is None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            writer = _summary_writer(str(log_dir))
        self.writer = writer
        self.heatmap_every = int(heatmap_every)
        self.per_head_scalars = per_head_scalars
        self.user_scalars = user_scalars
        self._looks = 0
        self._summary_writes = 0
        self._closed = False

    @property
    def log_dir(self) -> str:
        """Where the event files are written."""
        return str(self.writer.get_logdir())

    def write_config(self, config: Mapping[str, Any]) -> None:
        """The resolved configuration as JSON text at step 0."""
        self.writer.add_text(CONFIG_TAG, _as_code(config), 0)

    def write(
        self, step: int, scalars: Mapping[str, float], arrays: Mapping[str, np.ndarray]
    ) -> None:
        """Scalars at ``step``; this look's heatmaps as images (``[3, h, w]``)."""
        for k, v in scalars.items():
            if is_dynmon_key(k):
                if not self.per_head_scalars and HEAD_KEY.match(k):
                    continue
            elif not self.user_scalars:
                continue
            self.writer.add_scalar(k, float(v), int(step))
        if arrays:
            if self.heatmap_every > 0 and self._looks % self.heatmap_every == 0:
                for name, values in arrays.items():
                    values = np.asarray(values, dtype=np.float64)
                    if values.ndim not in (2, 3) or values.size == 0:
                        continue
                    pixels = render_heatmap(name, values, int(step))  # [h, w, 3] uint8
                    self.writer.add_image(heatmap_key(name), pixels, int(step), dataformats="HWC")
            self._looks += 1

    def write_event(self, event: Mapping[str, Any]) -> None:
        """A Markdown row under ``dynmon/events`` and a marker scalar ``dynmon/event/<kind>``."""
        ev = restore(jsonable(dict(event)))
        step = int(ev.get("step", 0))
        kind = str(ev.get("kind", "event"))
        value = ev.get("value", ev.get("level"))
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        marker = float(value) if number and math.isfinite(value) else 1.0
        message = str(ev.get("message", "")) or f"{kind} in {ev.get('key', 'the run')}"
        row = f"| {step} | {kind} | {ev.get('key', '')} | {_fmt(value)} | {message} |"
        table = "| step | kind | key | value | message |\n|---|---|---|---|---|\n" + row
        self.writer.add_text(EVENTS_TAG, table, step)
        self.writer.add_scalar(event_key(kind), marker, step)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """The summary so far as JSON text; each write is a new entry (the last one is current)."""
        self.writer.add_text(SUMMARY_TAG, _as_code(summary), self._summary_writes)
        self._summary_writes += 1

    def close(self) -> None:
        """Flush; close the writer if this sink opened it. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.writer.flush()
        if self._owns_writer:
            self.writer.close()

    def __repr__(self) -> str:
        return f"TensorBoardSink({self.log_dir!r}, owns_writer={self._owns_writer})"


def _as_code(d: Mapping[str, Any]) -> str:
    """JSON indented as a Markdown code block (TensorBoard's text plugin renders Markdown)."""
    text = json.dumps(jsonable(dict(d)), indent=2, sort_keys=True)
    return "\n".join("    " + line for line in text.splitlines())


def _fmt(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else ""
