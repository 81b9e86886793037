"""Lightning: ``DynmonCallback`` runs a ``dynmon.Monitor`` after each optimizer step of a fit.

Thin by design: it only turns Lightning hooks into ``monitor.step(...)``, with public trainer API.

* the step is ``trainer.global_step`` after the update (1 after the first optimizer step), and the
  loss the one ``training_step`` returned for the batch that completed it (with gradient
  accumulation, the last micro-batch's);
* output goes to the local run folder (``<trainer.log_dir>/dynmon`` unless ``run_dir`` is given)
  and to the trainer's own loggers: into a ``WandbLogger``'s run (heatmaps, events table) and a
  ``TensorBoardLogger``'s writer (heatmap images) through dynmon's sinks, and as scalars through
  ``log_metrics`` to any other logger (``CSVLogger``...);
* the monitor's state travels in the trainer's checkpoints (``state_dict`` / ``load_state_dict``
  of the callback), so ``trainer.fit(..., ckpt_path=...)`` continues its looks, snapshots and
  detectors, and writes on into the same run folder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor, nn

from dynmon.keys import HEAD_KEY, event_key, is_dynmon_key
from dynmon.monitor import Monitor

try:
    import lightning.pytorch as pl
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "dynmon.integrations.lightning needs Lightning: pip install 'dynmon[lightning]' "
        "(or pip install lightning)"
    ) from exc


class LoggerSink:
    """Forward dynmon's scalars (and event markers) to one Lightning logger via ``log_metrics``.

    Only ``dynmon/*`` keys go out (the LightningModule logs its own loss); per-head keys are left
    out unless ``per_head_scalars`` (they are in the run folder, and heatmaps in W&B/TensorBoard).
    """

    def __init__(self, logger: Any, per_head_scalars: bool = False) -> None:
        self.logger = logger
        self.per_head_scalars = per_head_scalars

    def write_config(self, config: Mapping[str, Any]) -> None:
        """The configuration stays in the run folder (a logger's hparams belong to the user)."""

    def write(
        self, step: int, scalars: Mapping[str, float], arrays: Mapping[str, np.ndarray]
    ) -> None:
        """``log_metrics`` of this step's ``dynmon/*`` scalars at dynmon's step."""
        metrics = {
            k: float(v)
            for k, v in scalars.items()
            if is_dynmon_key(k) and (self.per_head_scalars or not HEAD_KEY.match(k))
        }
        if metrics:
            self.logger.log_metrics(metrics, step=int(step))

    def write_event(self, event: Mapping[str, Any]) -> None:
        """An event as a marker scalar ``dynmon/event/<kind>`` (its value, or 1.0)."""
        value = event.get("value")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        marker = float(value) if number and np.isfinite(value) else 1.0
        kind = str(event.get("kind", "event"))
        self.logger.log_metrics({event_key(kind): marker}, step=int(event.get("step", 0)))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """The summary stays in the run folder."""

    def close(self) -> None:
        """Lightning finalizes its loggers itself."""

    def __repr__(self) -> str:
        return f"LoggerSink({type(self.logger).__name__})"


def logger_sinks(loggers: list[Any], per_head_scalars: bool = False) -> list[Any]:
    """One sink per trainer logger: W&B and TensorBoard loggers get dynmon's own sinks writing
    into their run / writer; any other logger gets a ``LoggerSink``."""
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    sinks: list[Any] = []
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            from dynmon.sinks.wandb import WandbSink

            sinks.append(
                WandbSink(
                    run=logger.experiment, user_scalars=False, per_head_scalars=per_head_scalars
                )
            )
        elif isinstance(logger, TensorBoardLogger):
            from dynmon.sinks.tensorboard import TensorBoardSink

            sinks.append(
                TensorBoardSink(
                    writer=logger.experiment, user_scalars=False, per_head_scalars=per_head_scalars
                )
            )
        else:
            sinks.append(LoggerSink(logger, per_head_scalars))
    return sinks


def _loss(outputs: Any) -> Tensor | float | None:
    """The loss ``training_step`` returned: a tensor, or ``outputs["loss"]``; None if absent."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("loss")
    return outputs if isinstance(outputs, (Tensor, float, int)) else None


class DynmonCallback(pl.Callback):
    """Watch a LightningModule (or its submodule ``module``) while ``trainer.fit`` trains it.

    Args:
        run_dir: the local run folder; ``<trainer.log_dir>/dynmon`` when None (a resumed fit
            writes on into the folder recorded in its checkpoint).
        module: dotted name of the submodule to watch (``"model"``); the whole module when None.
        sinks: the Monitor's own sinks (default ``["local"]``); the trainer's loggers are added.
        log_to_loggers: also write to the trainer's loggers (see ``logger_sinks``).
        per_head_scalars: also send per-head scalars to the loggers (heatmaps are sent anyway).
        **monitor_kwargs: passed to ``dynmon.Monitor`` (``schedule``, ``metrics``, ``loss_fn``,
            ``probe_batch``, ``options``, ``strict``...); ``optimizer`` defaults to the
            trainer's first optimizer.
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        module: str | None = None,
        sinks: list[Any] | None = None,
        log_to_loggers: bool = True,
        per_head_scalars: bool = False,
        **monitor_kwargs: Any,
    ) -> None:
        if "model" in monitor_kwargs:
            raise TypeError(
                "DynmonCallback watches the LightningModule it is fitted with; name a submodule "
                "with module='<dotted name>' instead of model="
            )
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.module = module
        self.sinks = sinks
        self.log_to_loggers = log_to_loggers
        self.per_head_scalars = per_head_scalars
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self._pending: dict[str, Any] | None = None
        self._open = False
        self._seen_step = -1

    # -- building the monitor once everything is restored ------------------------------------
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Build the monitor (weights, optimizer and checkpointed state are all in place now)."""
        if not self._open:  # first fit, or a later fit of the same callback: continue the state
            if self.monitor is not None:
                self._pending = self.state_dict()
            self.monitor = self._build(trainer, pl_module)
            self._open = True
        self._seen_step = trainer.global_step

    def _watched(self, pl_module: pl.LightningModule) -> nn.Module:
        if self.module is None:
            return pl_module
        try:
            return pl_module.get_submodule(self.module)
        except AttributeError as exc:
            names = [n for n, _ in pl_module.named_children()]
            raise ValueError(
                f"DynmonCallback(module={self.module!r}): no such submodule in "
                f"{type(pl_module).__name__}; its children are {names}"
            ) from exc

    def _build(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Monitor:
        state = self._pending or {}
        run_dir = self.run_dir
        if run_dir is None and state.get("run_dir"):
            run_dir = Path(state["run_dir"])  # a resumed fit writes on into its folder
        if run_dir is None:
            run_dir = Path(trainer.log_dir or trainer.default_root_dir) / "dynmon"
        sinks = list(self.sinks) if self.sinks is not None else ["local"]
        if self.log_to_loggers and trainer.is_global_zero:
            sinks += logger_sinks(trainer.loggers, self.per_head_scalars)
        kwargs = dict(self.monitor_kwargs)
        if "optimizer" not in kwargs and trainer.optimizers:
            kwargs["optimizer"] = trainer.optimizers[0]
        monitor = Monitor(
            self._watched(pl_module),
            run_dir=run_dir,
            sinks=sinks,
            rank=trainer.global_rank,
            **kwargs,
        )
        self.run_dir = run_dir
        if state.get("monitor") is not None:
            monitor.load_state_dict(state["monitor"])
        self._pending = None
        return monitor

    # -- the hot path ----------------------------------------------------------------------
    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        """``monitor.step`` once per optimizer step (micro-batches of an accumulation skip)."""
        if not self._open or trainer.global_step == self._seen_step:
            return
        self._seen_step = trainer.global_step
        self.monitor.step(step=trainer.global_step, loss=_loss(outputs))

    # -- state in the trainer's checkpoints -----------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The monitor's state and run folder, saved under ``checkpoint["callbacks"]``."""
        if self.monitor is None:
            return dict(self._pending or {})
        return {
            "monitor": self.monitor.state_dict(),
            "run_dir": None if self.run_dir is None else str(self.run_dir),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep the state until the monitor is built in ``on_train_start`` (or load it now)."""
        if self._open and self.monitor is not None and state_dict.get("monitor") is not None:
            self.monitor.load_state_dict(state_dict["monitor"])
        else:
            self._pending = dict(state_dict)

    # -- the end ---------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Finish open events, write the summary, flush the sinks."""
        self._close()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        """Close on a crash too, so the run folder ends cleanly."""
        self._close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Backstop for fits that end without ``on_fit_end``."""
        if stage == "fit":
            self._close()

    def _close(self) -> None:
        if self._open and self.monitor is not None:
            self.monitor.close()
        self._open = False
