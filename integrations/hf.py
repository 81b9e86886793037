"""Hugging Face ``Trainer``: ``DynmonCallback`` runs a ``dynmon.Monitor`` after each optimizer step.

Thin by design: it only turns ``TrainerCallback`` events into ``monitor.step(...)``.

* the step is ``state.global_step`` after the update (1 after the first optimizer step);
* the loss: callbacks are not given the training loss (the Trainer only reports it, averaged, at
  logging steps), so a forward hook on the model keeps the ``loss`` of each training forward
  (model in training mode, gradients on) and ``on_step_end`` combines the step's micro-batches as
  the Trainer does: their sum when the Trainer passed ``num_items_in_batch`` (each micro-batch loss
  is then already a share of the step's mean), their mean otherwise. This equals the Trainer's own
  logged loss at ``logging_steps=1``. A model that returns no loss (a ``compute_loss_func`` or
  label smoothing computes it outside the model) gets looks without a loss;
* output goes to the local run folder (``<output_dir>/dynmon`` unless ``run_dir`` is given) and,
  when ``report_to`` includes ``"wandb"``, into the run the Trainer's own ``WandbCallback`` opened;
* ``on_save`` writes the monitor's state to ``checkpoint-<step>/dynmon_state.pt``;
  ``trainer.train(resume_from_checkpoint=...)`` finds it again (the Trainer names checkpoints by
  step) and the monitor continues its looks, snapshots and detectors in the same run folder.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from dynmon.monitor import Monitor

try:
    from transformers import TrainerCallback
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "dynmon.integrations.hf needs transformers: pip install 'dynmon[hf]' "
        "(or pip install transformers accelerate)"
    ) from exc

STATE_FILE = "dynmon_state.pt"


def checkpoint_dir(output_dir: str | Path, global_step: int) -> Path:
    """The folder the Trainer saves step ``global_step``'s checkpoint in."""
    return Path(output_dir) / f"checkpoint-{int(global_step)}"


def _reports_to(args: Any, name: str) -> bool:
    report_to = args.report_to or []
    report_to = [report_to] if isinstance(report_to, str) else list(report_to)
    return name in report_to or "all" in report_to


def _output_loss(output: Any) -> Tensor | None:
    """``loss`` of a model output: a ``ModelOutput``/dict key, or None."""
    if isinstance(output, Mapping):
        loss = output.get("loss")
        return loss if isinstance(loss, Tensor) and loss.numel() == 1 else None
    return None


class StepLoss:
    """A forward hook that keeps the losses of the training forwards of one optimizer step."""

    def __init__(self, world_size: int = 1, averaged_across_devices: bool = False) -> None:
        self.losses: list[Tensor] = []
        self.normalized = False  # the Trainer passed num_items_in_batch: outputs are shares
        self.scale = world_size if averaged_across_devices else 1
        self.paused = False

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: Any) -> None:
        if self.paused or not module.training or not torch.is_grad_enabled():
            return
        loss = _output_loss(output)
        if loss is not None:
            self.losses.append(loss.detach().reshape(()))
            self.normalized = kwargs.get("num_items_in_batch") is not None

    def pop(self) -> Tensor | None:
        """The step's loss as the Trainer reports it (no sync: stays a tensor)."""
        if not self.losses:
            return None
        stacked = torch.stack(self.losses)  # [micro-batches]
        self.losses = []
        if self.normalized:
            return stacked.sum() * self.scale
        return stacked.mean()


class DynmonCallback(TrainerCallback):
    """Watch the model a ``transformers.Trainer`` trains.

    Args:
        run_dir: the local run folder; ``<args.output_dir>/dynmon`` when None (a resumed run
            writes on into the folder recorded in its checkpoint).
        sinks: the Monitor's own sinks (default ``["local"]``); W&B is added when the Trainer
            reports to it.
        per_head_scalars: also chart per-head scalars in W&B (heatmaps are sent anyway).
        resume_from: a checkpoint folder to take the monitor's state from, when it is not
            ``<output_dir>/checkpoint-<global_step>``.
        **monitor_kwargs: passed to ``dynmon.Monitor`` (``schedule``, ``metrics``, ``loss_fn``,
            ``probe_batch``, ``options``, ``strict``...); ``optimizer`` defaults to the Trainer's.
    """

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        sinks: list[Any] | None = None,
        per_head_scalars: bool = False,
        resume_from: str | Path | None = None,
        **monitor_kwargs: Any,
    ) -> None:
        if "model" in monitor_kwargs:
            raise TypeError(
                "DynmonCallback watches the model the Trainer trains; pass no model= (wrap the "
                "Monitor yourself to watch another module)"
            )
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.sinks = sinks
        self.per_head_scalars = per_head_scalars
        self.resume_from = None if resume_from is None else Path(resume_from)
        self.monitor_kwargs = monitor_kwargs
        self.monitor: Monitor | None = None
        self._loss: StepLoss | None = None
        self._hook: Any = None

    # -- start ---------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        """Build the monitor on the Trainer's model; load its state when the run resumes."""
        if model is None:
            raise ValueError("DynmonCallback needs the model: the Trainer passes it as model=")
        saved = self._saved_state(args, state)
        run_dir = self.run_dir
        if run_dir is None and saved.get("run_dir"):
            run_dir = Path(saved["run_dir"])
        if run_dir is None:
            run_dir = Path(args.output_dir) / "dynmon"
        sinks = list(self.sinks) if self.sinks is not None else ["local"]
        if _reports_to(args, "wandb") and state.is_world_process_zero:
            from dynmon.sinks.wandb import WandbSink

            sinks.append(WandbSink(user_scalars=False, per_head_scalars=self.per_head_scalars))
        kw = dict(self.monitor_kwargs)
        if optimizer is not None:
            kw.setdefault("optimizer", optimizer)
        self.monitor = Monitor(model, run_dir=run_dir, sinks=sinks, rank=args.process_index, **kw)
        self.run_dir = run_dir
        if saved.get("monitor") is not None:
            self.monitor.load_state_dict(saved["monitor"])
        self._loss = StepLoss(args.world_size, bool(args.average_tokens_across_devices))
        self._hook = model.register_forward_hook(self._loss, with_kwargs=True)

    def _saved_state(self, args: Any, state: Any) -> dict[str, Any]:
        """The state saved with the checkpoint this run resumes from ({} for a fresh run)."""
        folder = self.resume_from
        if folder is None and state.global_step > 0:
            folder = checkpoint_dir(args.output_dir, state.global_step)
        if folder is None:
            return {}
        path = Path(folder) / STATE_FILE
        if not path.is_file():
            warnings.warn(
                f"dynmon: resuming at step {state.global_step} but {path} does not exist; the "
                "monitor starts fresh histories (pass resume_from=<checkpoint folder> if the "
                "checkpoint lives elsewhere)",
                RuntimeWarning,
                2,
            )
            return {}
        return torch.load(path, map_location="cpu", weights_only=True)

    # -- the hot path ----------------------------------------------------------------------
    def on_step_end(self, args, state, control, **kwargs):
        """``monitor.step`` after the optimizer step, with the step's training loss."""
        if self.monitor is None or self._loss is None:
            return
        loss = self._loss.pop()
        self._loss.paused = True  # a curvature look runs forwards of its own
        try:
            self.monitor.step(step=state.global_step, loss=loss)
        finally:
            self._loss.paused = False

    # -- state next to the checkpoint ----------------------------------------------------------
    def on_save(self, args, state, control, **kwargs):
        """Write ``checkpoint-<step>/dynmon_state.pt`` (process zero only)."""
        if self.monitor is None or not state.is_world_process_zero:
            return
        folder = checkpoint_dir(args.output_dir, state.global_step)
        if not folder.is_dir():
            warnings.warn(
                f"dynmon: no checkpoint folder {folder} to save the monitor's state in; "
                "a run resumed from this step starts fresh histories",
                RuntimeWarning,
                2,
            )
            return
        state_dict = {"monitor": self.monitor.state_dict(), "run_dir": str(self.run_dir)}
        torch.save(state_dict, folder / STATE_FILE)

    # -- the end ---------------------------------------------------------------------------
    def on_train_end(self, args, state, control, **kwargs):
        """Finish open events, write the summary, flush the sinks; remove the loss hook."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None
        if self.monitor is not None:
            self.monitor.close()
