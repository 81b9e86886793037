"""Where monitor output goes: the local run folder (default), W&B and TensorBoard."""

from __future__ import annotations

import os
from pathlib import Path

from dynmon.sinks.base import Sink
from dynmon.sinks.local import RunFolderSink
from dynmon.sinks.tensorboard import TensorBoardSink
from dynmon.sinks.wandb import WandbSink

__all__ = ["RunFolderSink", "Sink", "TensorBoardSink", "WandbSink", "make_sink"]

SPECS = ("local", "wandb", "tensorboard")
TENSORBOARD_DIR = "tensorboard"  # inside the run folder


def make_sink(spec: str | Sink, run_dir: str | Path, *, group: str | None = None) -> Sink:
    """Turn ``"local"``, ``"wandb"``, ``"tensorboard"`` or a Sink into a sink for ``run_dir``.

    ``"wandb"`` starts a run named after the run folder (project ``WANDB_PROJECT`` or ``dynmon``,
    files under ``WANDB_DIR`` or the run folder, in the W&B ``group`` given, else the one
    ``WANDB_RUN_GROUP`` names) or joins the active ``wandb.run``;
    ``"tensorboard"`` writes event files into ``<run_dir>/tensorboard``.
    """
    if isinstance(spec, str):
        name = spec.strip().lower()
        run_dir = Path(run_dir)
        if name == "local":
            return RunFolderSink(run_dir)
        if name == "wandb":
            return WandbSink(
                project=None if os.environ.get("WANDB_PROJECT") else "dynmon",
                name=run_dir.resolve().name,
                group=group or os.environ.get("WANDB_RUN_GROUP"),
                dir=None if os.environ.get("WANDB_DIR") else run_dir,
            )
        if name == "tensorboard":
            return TensorBoardSink(run_dir / TENSORBOARD_DIR)
    elif isinstance(spec, Sink):
        return spec
    raise ValueError(
        f"unknown sink {spec!r}: use one of {list(SPECS)} or an object with the Sink methods "
        "(write_config, write, write_event, write_summary, close)"
    )
