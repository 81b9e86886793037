"""Gradient noise on the probe batch from per-sample gradients: the noise scale and the SNR.

With per-sample gradients ``g_i`` (``i = 1..n``) of the probe batch, ``G = mean g_i`` and the
per-sample covariance ``Σ = Σ_i (g_i − G)(g_i − G)ᵀ / (n − 1)``:

- **simple noise scale** ``B_simple = tr Σ / |G|²`` (McCandlish, Kaplan, Amodei et al. 2018,
  "An empirical model of large-batch training", eq. 2.8): the batch size at which the gradient
  noise and signal are about equal; batches much smaller than it waste steps to noise.
- **unbiased variant** ``tr Σ / (|G|² − tr Σ / n)``: their appendix's two-batch-size estimate with
  batch sizes 1 and n, which removes the noise ``tr Σ / n`` that ``|G|²`` of a finite batch
  carries. NaN when ``|G|²`` is within that noise (no signal measurable on this batch).
- **gradient signal-to-noise ratio** (Liu et al. 2020, "Understanding why neural networks
  generalize well through GSNR of parameters"): per parameter ``G_j² / Σ_jj``, averaged over
  the parameters that have a gradient that varies (mean ``g_ij²`` above ``1e-12`` of the average
  over parameters: below that it is rounding, as for an attention key bias).

Per-sample gradients come from ``torch.func`` (``vmap`` of ``grad`` over the samples, in chunks of
``chunk_size``); a model whose ops have no batching rule falls back to one backward pass per
sample (``torch.autograd.grad``, never ``.backward``). The batch is split along dim 0 of every
tensor it holds (a tensor, tuple, list or dict); ``loss_fn`` on a one-sample batch must be that
sample's loss, and ``G`` is the gradient of the probe loss when ``loss_fn`` averages over samples.
Nothing of the model changes: ``.grad``, weights, buffers, ``training`` and the global RNG are
left as they were (the loss runs under curvature's isolation).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_map

from dynmon.adapters.unwrap import unwrap
from dynmon.hessian import ParamSpec, _isolated, select_params
from dynmon.keys import key
from dynmon.metrics.spec import LookContext, MetricSpec, Output

__all__ = [
    "GradMoments",
    "gradient_noise",
    "per_sample_grad_moments",
    "grad_noise_metric",
    "GRAD_NOISE",
]

F64 = torch.float64
LossFn = Callable[[nn.Module, Any], Tensor]
ACTIVE = 1e-12  # a parameter has a gradient when its mean square exceeds this × the average one


@dataclass(frozen=True)
class GradMoments:
    """Sums over ``n`` samples of the flat per-sample gradient ``g_i`` ``[P]`` and of its
    elementwise square, float64: all the noise measures need."""

    sum: Tensor
    sum_sq: Tensor
    n: int

    @staticmethod
    def of(per_sample: Tensor) -> GradMoments:
        """The moments of an explicit ``[n, P]`` matrix of per-sample gradients."""
        g = per_sample.to(F64)
        return GradMoments(g.sum(0), g.square().sum(0), g.shape[0])


def gradient_noise(m: GradMoments) -> dict[str, Tensor]:
    """Noise scale, its unbiased variant, ``tr Σ``, ``|G|²`` and the mean GSNR from the moments.

    ``Σ`` uses the ``n − 1`` normalisation; all values are 0-D float64 tensors.
    """
    if m.n < 2:
        raise ValueError(f"gradient noise needs at least 2 samples, got {m.n}")
    G = m.sum / m.n  # [P] mean gradient
    var = ((m.sum_sq - m.n * G.square()) / (m.n - 1)).clamp_min(0)  # [P] diag of Σ
    trace = var.sum()
    g2 = G.square().sum()
    signal = g2 - trace / m.n
    nan = torch.tensor(math.nan, dtype=F64)
    mean_sq = m.sum_sq / m.n  # [P]
    varies = (var > 0) & (mean_sq > ACTIVE * mean_sq.mean())  # else its gradient is rounding
    snr = (
        torch.where(varies, G.square() / var.where(varies, 1), 0).sum() / varies.sum()
    )  # NaN: none
    return {
        "b_simple": torch.where(g2 > 0, trace / g2, nan),
        "b_simple_unbiased": torch.where(signal > 0, trace / signal, nan),
        "trace_cov": trace,
        "grad_sq_norm": g2,
        "snr": snr,
    }


# --------------------------------------------------------------------------------------------
# per-sample gradients


class _Loss(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``torch.func.functional_call`` can swap the
    model's parameters for plain tensors however ``loss_fn`` calls the model."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.m = model
        self.loss_fn = loss_fn

    def forward(self, batch: Any) -> Tensor:
        return self.loss_fn(self.m, batch)


def _batch_size(batch: Any) -> int:
    """The common leading dim of the tensors in ``batch``."""
    sizes = {t.shape[0] for t in tree_flatten(batch)[0] if isinstance(t, Tensor) and t.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(
            "per-sample gradients split the probe batch along dim 0 of each tensor it holds;"
            f" found leading sizes {sorted(sizes)}: pass a batch whose tensors share dim 0"
        )
    return sizes.pop()


def _slice(batch: Any, lo: int, hi: int) -> Any:
    return tree_map(lambda t: t[lo:hi] if isinstance(t, Tensor) and t.dim() > 0 else t, batch)


def per_sample_grad_moments(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    params: ParamSpec = None,
    *,
    chunk_size: int = 16,
    max_samples: int | None = None,
    dropout: bool = False,
    generator: torch.Generator | None = None,
    method: str = "auto",
) -> GradMoments:
    """Moments of the per-sample gradients of ``loss_fn`` over the samples of ``batch``.

    ``method``: ``"vmap"`` (``torch.func``, ``chunk_size`` samples at a time), ``"loop"`` (one
    ``autograd.grad`` per sample) or ``"auto"`` (vmap, falling back to the loop with a warning
    when an op cannot be batched). ``max_samples`` uses the first samples only.
    """
    if method not in ("auto", "vmap", "loop"):
        raise ValueError(f"method must be 'auto', 'vmap' or 'loop', got {method!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    root = unwrap(model)
    selected = select_params(root, params)
    if not selected:
        raise ValueError("the model has no parameter with requires_grad=True")
    n = _batch_size(batch)
    if max_samples is not None:
        n = min(n, int(max_samples))
    if n < 2:
        raise ValueError(f"gradient noise needs a probe batch of at least 2 samples, got {n}")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    seed = int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))
    names = list(selected)
    with _isolated(root, train=dropout, seed=seed):
        if method in ("auto", "vmap"):
            try:
                return _moments_vmap(root, loss_fn, batch, selected, n, chunk_size, dropout)
            except Exception as exc:  # an op without a batching rule, data-dependent control
                if method == "vmap":
                    raise
                warnings.warn(
                    f"per-sample gradients: vmap failed ({type(exc).__name__}: {exc}); using one"
                    " backward pass per sample instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return _moments_loop(root, loss_fn, batch, [selected[k] for k in names], n)


def _moments_vmap(
    root: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    selected: dict[str, Tensor],
    n: int,
    chunk_size: int,
    dropout: bool,
) -> GradMoments:
    wrapper = _Loss(root, loss_fn)
    detached = {"m." + k: p.detach() for k, p in selected.items()}

    def one(ps: dict[str, Tensor], sample: Any) -> Tensor:
        single = tree_map(lambda t: t.unsqueeze(0) if isinstance(t, Tensor) else t, sample)
        loss = torch.func.functional_call(wrapper, ps, (single,))
        return loss.reshape(())

    dims = tree_map(lambda t: 0 if isinstance(t, Tensor) and t.dim() > 0 else None, batch)
    per_sample = torch.func.vmap(
        torch.func.grad(one),
        in_dims=(None, dims),
        randomness="different" if dropout else "error",
    )
    total = total_sq = None
    for lo in range(0, n, chunk_size):
        grads = per_sample(detached, _slice(batch, lo, min(lo + chunk_size, n)))
        flat = torch.cat([grads[k].reshape(grads[k].shape[0], -1) for k in detached], 1).to(F64)
        s, s2 = flat.sum(0), flat.square().sum(0)  # [P]
        total = s if total is None else total + s
        total_sq = s2 if total_sq is None else total_sq + s2
    return GradMoments(total.cpu(), total_sq.cpu(), n)


def _moments_loop(
    root: nn.Module, loss_fn: LossFn, batch: Any, params: list[Tensor], n: int
) -> GradMoments:
    total = total_sq = None
    for i in range(n):
        loss = loss_fn(root, _slice(batch, i, i + 1))
        grads = torch.autograd.grad(loss.reshape(()), params, allow_unused=True)
        flat = torch.cat(
            [
                (gr if gr is not None else torch.zeros_like(p)).reshape(-1).to(F64)
                for gr, p in zip(grads, params, strict=True)
            ]
        )
        total = flat if total is None else total + flat
        total_sq = flat.square() if total_sq is None else total_sq + flat.square()
    return GradMoments(total.cpu(), total_sq.cpu(), n)


# --------------------------------------------------------------------------------------------
# the monitor metric


def grad_noise_metric(ctx: LookContext) -> Output:
    """Gradient noise scale (and its unbiased variant), ``tr Σ``, ``|G|²`` and the gradient
    SNR of the probe batch, under ``dynmon/grad_noise/*``."""
    if ctx.loss_fn is None or ctx.probe_batch is None:
        raise ValueError(
            "grad_noise needs the loss on a probe batch: pass loss_fn=lambda model, batch:"
            " <scalar loss> and probe_batch=<batch> to the Monitor"
        )
    opts = ctx.options
    max_samples = opts.get("grad_noise_samples")
    moments = per_sample_grad_moments(
        ctx.model,
        ctx.loss_fn,
        ctx.probe_batch,
        opts.get("params"),
        chunk_size=int(opts.get("grad_noise_chunk", 16)),
        max_samples=None if max_samples is None else int(max_samples),
        dropout=bool(opts.get("dropout", False)),
        generator=ctx.generator,
        method=opts.get("grad_noise_method", "auto"),
    )
    return Output(scalars={key("grad_noise", k): v for k, v in gradient_noise(moments).items()})


GRAD_NOISE = MetricSpec(
    "grad_noise",
    grad_noise_metric,
    needs=frozenset({"curvature"}),
    cost="opt-in",
    doc=(
        "gradient noise on the probe batch from per-sample gradients (torch.func vmap):"
        " dynmon/grad_noise/b_simple = tr Σ/|G|² (McCandlish et al. 2018),"
        " dynmon/grad_noise/b_simple_unbiased = tr Σ/(|G|² − tr Σ/n),"
        " dynmon/grad_noise/trace_cov, dynmon/grad_noise/grad_sq_norm and"
        " dynmon/grad_noise/snr (mean per-parameter G²/Var, Liu et al. 2020); options"
        " grad_noise_chunk (samples per vmap call, default 16), grad_noise_samples (use the"
        " first n samples), grad_noise_method ('auto', 'vmap', 'loop'), params, dropout"
    ),
)
