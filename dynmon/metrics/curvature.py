"""The curvature metrics of the Monitor: sharpness (top Hessian eigenvalue, edge of stability)
and the Hessian trace, as metric rows over :mod:`dynmon.hessian`.

Edge of stability: full-batch GD on a quadratic diverges once ``sharpness · lr > 2``, so
``dynmon/eos/ratio = sharpness · lr / 2`` near 1 means training sits at the edge of stability
(Cohen et al. 2021). For Adam the relevant quantity is the sharpness of the preconditioned
Hessian ``P⁻¹H``, not of ``H``: the ratio is then only indicative.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dynmon.adapters.unwrap import unwrap
from dynmon.hessian import HessianOperator
from dynmon.keys import key
from dynmon.linalg import hutchinson_trace, hutchpp_trace, lanczos_eigenvalues
from dynmon.metrics.spec import LookContext, MetricSpec, Output

__all__ = [
    "sharpness_metric",
    "hessian_trace_metric",
    "SHARPNESS",
    "HESSIAN_TRACE",
]


def _operator(ctx: LookContext) -> tuple[HessianOperator, torch.Generator]:
    """The probe-batch Hessian over ``options["params"]`` and the generator to draw from."""
    if ctx.loss_fn is None or ctx.probe_batch is None:
        raise ValueError(
            "curvature metrics need the loss on a probe batch: pass loss_fn=lambda model,"
            " batch: <scalar loss> and probe_batch=<batch> to the Monitor"
        )
    g = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(0)
    dropout = bool(ctx.options.get("dropout", False))
    batched = ctx.options.get("hvp_batched")
    op = HessianOperator(
        ctx.model,
        ctx.loss_fn,
        ctx.probe_batch,
        ctx.options.get("params"),
        dropout=dropout,
        generator=g,
        batched=None if batched is None else bool(batched),
    )
    return op, g


def _blocks(model: nn.Module, blocks: Any) -> dict[str, Any]:
    """``options["blocks"]`` as ``{name: block}``: names as given, modules by their path."""
    if blocks is None:
        return {}
    if isinstance(blocks, Mapping):
        return dict(blocks)
    if isinstance(blocks, (str, nn.Module, Tensor)):
        blocks = [blocks]
    root = unwrap(model)
    module_names = {id(m): n for n, m in root.named_modules()}
    param_names = {id(p): n for n, p in root.named_parameters()}
    out = {}
    for i, b in enumerate(blocks):
        name = b if isinstance(b, str) else module_names.get(id(b)) or param_names.get(id(b))
        out[name or f"block{i}"] = b
    return out


def _learning_rate(optimizer: torch.optim.Optimizer | None) -> float | None:
    """The first parameter group's learning rate, if there is an optimizer."""
    if optimizer is None or not optimizer.param_groups:
        return None
    return float(optimizer.param_groups[0]["lr"])  # a tensor lr: sync point


def sharpness_metric(ctx: LookContext) -> Output:
    """Top Hessian eigenvalue(s) of the probe loss by Lanczos, per block, and the
    edge-of-stability indicator sharpness × lr (2 is the (S)GD stability threshold)."""
    op, g = _operator(ctx)
    opts = ctx.options
    k = int(opts.get("k", 1))
    solver = {
        "tol": float(opts.get("tol", 1e-3)),
        "max_iter": int(opts.get("max_iter", 100)),
        "reorth": opts.get("reorth", "full"),
        "generator": g,
    }
    res = lanczos_eigenvalues(op, min(k, op.shape[0]), **solver)
    top = res.eigenvalues[0]
    out = Output()
    out.scalars[key("sharpness")] = top
    if k > 1:
        for i, value in enumerate(res.eigenvalues):
            out.scalars[key("hessian_eig", str(i))] = value
    for name, block in _blocks(ctx.model, opts.get("blocks")).items():
        sub = lanczos_eigenvalues(op.restrict(block), 1, **solver)
        out.scalars[key("sharpness", name)] = sub.eigenvalues[0]
    lr = _learning_rate(ctx.optimizer)
    if lr is not None:
        out.scalars[key("eos", "sharpness_x_lr")] = top * lr
        out.scalars[key("eos", "ratio")] = top * lr / 2
    return out


def hessian_trace_metric(ctx: LookContext) -> Output:
    """Trace of the probe-loss Hessian and its standard error (Hutchinson or Hutch++)."""
    op, g = _operator(ctx)
    method = ctx.options.get("trace_method", "hutchinson")
    num_probes = int(ctx.options.get("num_probes", 32))
    block = ctx.options.get("hvp_block", 16)
    block = None if block is None else int(block)
    if method == "hutch++":
        trace, stderr = hutchpp_trace(op, num_probes, generator=g, block_size=block)
    elif method == "hutchinson":
        trace, stderr = hutchinson_trace(op, num_probes, generator=g, block_size=block)
    else:
        raise ValueError(f"trace_method must be 'hutchinson' or 'hutch++', got {method!r}")
    return Output(scalars={key("hessian_trace"): trace, key("hessian_trace_stderr"): stderr})


SHARPNESS = MetricSpec(
    "sharpness",
    sharpness_metric,
    needs=frozenset({"curvature"}),
    cost="opt-in",
    doc=(
        "top Hessian eigenvalue of the probe-batch loss by Lanczos (dynmon/sharpness; options"
        " k -> dynmon/hessian_eig/<i>, tol, max_iter, reorth, params, blocks ->"
        " dynmon/sharpness/<block>, dropout); with an optimizer, dynmon/eos/sharpness_x_lr"
        " and dynmon/eos/ratio = sharpness·lr/2, where 1 is the (S)GD edge of stability;"
        " for Adam the relevant quantity is the preconditioned sharpness, so the ratio is"
        " only indicative"
    ),
)
HESSIAN_TRACE = MetricSpec(
    "hessian_trace",
    hessian_trace_metric,
    needs=frozenset({"curvature"}),
    cost="opt-in",
    doc=(
        "trace of the probe-batch loss Hessian and its standard error (dynmon/hessian_trace,"
        " dynmon/hessian_trace_stderr; options num_probes (default 32 Hessian-vector products),"
        " trace_method 'hutchinson' or 'hutch++', hvp_block (probes per block, default 16),"
        " hvp_batched (one vmapped pass per block; default on CUDA only), params, dropout)"
    ),
)
