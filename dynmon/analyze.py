"""``dynmon analyze``: the spectral and subspace measures over a directory of saved checkpoints.

Checkpoints are found, read and loaded by ``dynmon.checkpoints`` (its docstring says which
files count, how the step is read from the path, and where the model comes from).

Each checkpoint, in step order, is loaded into the model and a ``dynmon.Monitor`` looks at it,
so the run folder is a live run's (``dynmon report`` draws it). Since the whole history is known,
the seed paper's distance to the *final* matrix, ``‖M_f (I − M_t⁺ M_t)‖_F / ‖M_f‖_F`` per head for
QK and OV (docs/metrics.md#subspace_dist_final), is logged as
``dynmon/subspace_dist_final/<target>`` (per head, per layer, per circuit, and
``dynmon/subspace_dist_final`` averaged over heads and both circuits).
"""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import Tensor, nn

from dynmon import adapters
from dynmon.checkpoints import (
    Checkpoint,
    CheckpointError,
    find_checkpoints,
    load_into,
    load_state_dict,
    model_builder,
)
from dynmon.checkpoints import save_tl_config as save_tl_config  # the README's name for it
from dynmon.keys import head_scalars, key
from dynmon.metrics import subspace
from dynmon.metrics.spec import LookContext, MetricSpec, Output
from dynmon.metrics.table import head_factors

FINAL = "subspace_dist_final"
DEFAULT_METRICS = ("erank", "stable_rank", "subspace_dist", "norms")


@dataclass(frozen=True)
class AnalyzeConfig:
    """What ``analyze`` ran on, written to ``config.json`` under ``run``."""

    ckpt_dir: str
    model: str
    metrics: list[str]
    checkpoints: list[str]
    steps: list[int]


# -- the offline metric --------------------------------------------------------------------------
def distances_to_final(
    factors: Mapping[str, tuple[Tensor, Tensor]], final: Mapping[str, tuple[Tensor, Tensor]]
) -> dict[str, Tensor]:
    """``‖M_f (I − M_t⁺ M_t)‖_F / ‖M_f‖_F`` of every head, per circuit (``M = A Bᵀ``).

    ``factors[c]`` is ``(A, B)`` as ``[..., L, H, D, dh]`` (leading dims, e.g. steps, broadcast
    against ``final[c]``'s); returns ``[..., L, H]`` per circuit. One definition for
    ``dynmon analyze`` and the induction pack's hindsight.
    """
    return {
        c: subspace.projection_residual_factored(A, B, *final[c]) for c, (A, B) in factors.items()
    }


def final_distance_metric(final: Mapping[str, tuple[Tensor, Tensor]]) -> MetricSpec:
    """The seed paper's distance of each head's QK/OV to its final matrix, as a metric row."""

    def compute(ctx: LookContext) -> Output:
        out = Output()
        means = []
        for circuit, d in distances_to_final(head_factors(ctx.heads), final).items():  # [L, H]
            out.scalars.update(head_scalars(FINAL, d, circuit))
            out.arrays[key(FINAL, circuit)] = d
            means.append(d.flatten())
        out.scalars[key(FINAL)] = torch.cat(means).nanmean()
        return out

    return MetricSpec(
        FINAL,
        compute,
        frozenset({"heads"}),
        "opt-in",
        "seed paper's ‖M_f (I − M_t⁺M_t)‖_F/‖M_f‖_F of each head's QK/OV to the final matrix",
    )


# -- the run -------------------------------------------------------------------------------------
def analyze(
    ckpt_dir: str | Path,
    out: str | Path,
    *,
    model: str | None = None,
    metrics: list[str] | None = None,
    options: Mapping[str, Any] | None = None,
    strict: bool = False,
    progress: bool = True,
    stream: TextIO | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run the monitor over every checkpoint in step order into the run folder ``out``;
    return the summary. ``model`` is ``module:factory`` (else ``CKPT_DIR/config.json``).

    A file that cannot be read is skipped with one warning naming it and the reason, and listed
    under ``analyze.skipped`` in ``summary.json``; the last readable file is the "final" one.
    ``out`` must be new or empty (``overwrite`` deletes an earlier dynmon run folder there, and
    nothing else); a fatal error leaves no partial ``out`` behind.
    """
    import dynmon
    from dynmon.lock import RunFolderBusy
    from dynmon.progress import Progress, latest_event
    from dynmon.runfolder import prepare_output

    ckpts = find_checkpoints(ckpt_dir)
    build, source = model_builder(ckpt_dir, model, beside=ckpts[0].path.parent)
    try:
        net = build()
    except TypeError as exc:  # a factory that wants arguments
        raise CheckpointError(
            f"the model factory {source!r} could not be called without arguments: {exc}; wrap it "
            "in a function of no arguments that returns the nn.Module"
        ) from None
    if not isinstance(net, nn.Module):
        raise CheckpointError(f"the model factory {source!r} returned a {type(net).__name__}")
    net.eval()
    skips = _Skips()
    final_ckpt, final_state = _last_readable(ckpts, skips)
    with torch.no_grad():
        load_into(net, final_state, final_ckpt.path)
        final = {
            c: (A.detach().clone(), B.detach().clone())
            for c, (A, B) in head_factors(adapters.heads(net)).items()
        }
    del final_state
    names = list(metrics or DEFAULT_METRICS)
    config = AnalyzeConfig(
        ckpt_dir=str(ckpt_dir),
        model=source,
        metrics=[*names, FINAL],
        checkpoints=[str(c.path) for c in ckpts],
        steps=[c.step for c in ckpts],
    )
    out = prepare_output(out, overwrite=overwrite, command="dynmon analyze")
    try:
        mon = dynmon.Monitor(
            net,
            run_dir=out,
            schedule=[c.step for c in ckpts],
            # "economy": False: exactly the metrics named (a dict naming no preset adds economy)
            metrics={"economy": False, **dict.fromkeys(names), final_distance_metric(final): None},
            strict=strict,
            config=config,
            options=options,
        )
        bar = Progress(ckpts[-1].step, "analyze", enabled=progress, stream=stream)
        with mon, bar:
            for ckpt in ckpts:
                state = None if ckpt.path in skips.records else skips.read(ckpt)
                if state is None:
                    continue
                with torch.no_grad():
                    load_into(net, state, ckpt.path)
                del state
                mon.step(ckpt.step)
                bar.update(ckpt.step, event=latest_event(mon.events))
            info: dict[str, Any] = {
                "checkpoints": len(ckpts) - len(skips.records),
                "model": source,
                "final": str(final_ckpt.path),
            }
            if skips.records:
                info["skipped"] = sorted(skips.records.values(), key=lambda r: r["step"])
            summary = {"analyze": info}
            mon.update_summary(summary)
        return summary
    except RunFolderBusy:
        raise  # another writer's folder: not ours to remove
    except Exception:
        shutil.rmtree(out, ignore_errors=True)  # new or emptied above: only our own files
        raise


class _Skips:
    """The checkpoints that could not be read: one warning each, kept for ``summary.json``."""

    def __init__(self) -> None:
        self.records: dict[Path, dict[str, Any]] = {}

    def read(self, ckpt: Checkpoint) -> dict[str, Tensor] | None:
        """The checkpoint's state dict, or None (recorded and warned about once)."""
        try:
            return load_state_dict(ckpt.path)
        except CheckpointError as exc:
            self.records[ckpt.path] = {
                "step": ckpt.step,
                "path": str(ckpt.path),
                "reason": str(exc),
            }
            warnings.warn(f"dynmon analyze: skipped {exc}", RuntimeWarning, 3)
            return None


def _last_readable(ckpts: list[Checkpoint], skips: _Skips) -> tuple[Checkpoint, dict[str, Tensor]]:
    """The last checkpoint that reads (its matrices are the "final" ones), and its state."""
    for ckpt in reversed(ckpts):
        state = skips.read(ckpt)
        if state is not None:
            return ckpt, state
    reasons = "; ".join(r["reason"] for r in list(skips.records.values())[:3])
    raise CheckpointError(f"none of the {len(ckpts)} checkpoints could be read: {reasons}")
