"""The local learning coefficient (LLC) of the current weights, by SGLD (Lau et al. 2023).

Around the current weights ``w*`` SGLD samples the localised, tempered posterior
``p(w) ∝ exp(−nβ L(w) − γ/2 ‖w − w*‖²)`` with the update (devinterp's, Lau et al.'s)

    w ← w − ε/2 · (nβ ∇L(w) + γ (w − w*)) + √ε · N(0, I)

and the estimate is ``λ̂ = nβ · (E_w[L(w)] − L(w*))``, the mean over the draws of each chain
(after ``num_burnin`` steps, every ``steps_between``-th step), averaged over chains; its
standard error is the spread over chains / √chains. For a regular minimum λ = d/2 (d the
number of parameters); smaller values mean a degenerate, "simpler" minimum, and jumps mark
developmental phase transitions (devinterp).

Drift: the estimate from the second half of the draws minus that from the first half
(``drift``). A chain that has not reached its stationary distribution keeps raising its loss,
so a drift beyond 3 standard errors (of the difference, at least twice the estimate's) and 20%
of the estimate warns (``ConvergenceWarning``; with one chain there is no test):
raise ``num_burnin`` or ``num_draws``, or lower ``lr``. A non-finite loss stops and raises.

The model is never written: the chains run on copies of the weights through
``torch.func.functional_call``, all chains at once by ``vmap`` (one chain at a time where an op
has no batching rule); ``.grad``, buffers, ``training`` and the global RNG stay as they were and
the noise comes from the given (the Monitor's private) generator.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dynmon.hessian import ParamSpec, _isolated, selection_and_seed
from dynmon.keys import key
from dynmon.linalg import ConvergenceWarning
from dynmon.metrics.gradnoise import _batch_size, _Loss
from dynmon.metrics.spec import LookContext, MetricSpec, Output

__all__ = ["SGLDConfig", "LLCResult", "sgld_llc", "estimate_llc", "llc_metric", "LLC"]

F64 = torch.float64
Params = dict[str, Tensor]
LossAt = Callable[[Params, Any], Tensor]  # loss_at(params, batch) -> scalar


@dataclass(frozen=True)
class SGLDConfig:
    """SGLD settings: step size ``lr`` (ε), ``nbeta`` (nβ; None: B/log B of the batch size B),
    ``localization`` (γ), chains, draws per chain, burn-in steps, steps between draws."""

    lr: float = 1e-4
    nbeta: float | None = None
    localization: float = 100.0
    num_chains: int = 4
    num_draws: int = 200
    num_burnin: int = 0
    steps_between: int = 1

    def check(self) -> None:
        """Clear errors for settings SGLD cannot run with."""
        if not (self.lr > 0 and self.localization >= 0):
            raise ValueError(
                f"need lr > 0 and localization >= 0, got {self.lr}, {self.localization}"
            )
        if self.nbeta is not None and not self.nbeta > 0:
            raise ValueError(f"nbeta must be > 0, got {self.nbeta}")
        if self.num_chains < 1 or self.num_draws < 2 or self.num_burnin < 0:
            raise ValueError(
                "need num_chains >= 1, num_draws >= 2, num_burnin >= 0; got"
                f" {self.num_chains}, {self.num_draws}, {self.num_burnin}"
            )
        if self.steps_between < 1:
            raise ValueError(f"steps_between must be >= 1, got {self.steps_between}")


@dataclass(frozen=True)
class LLCResult:
    """``llc`` (mean over chains), ``stderr``, ``per_chain`` ``[chains]``, ``drift`` (second-half
    minus first-half estimate), ``init_loss`` L(w*), ``losses`` ``[chains, draws]`` the sampled
    losses, ``nbeta`` used, and whether the drift test passed (``converged``)."""

    llc: float
    stderr: float
    per_chain: Tensor
    drift: float
    init_loss: float
    losses: Tensor
    nbeta: float
    converged: bool


def sgld_llc(
    loss_at: LossAt,
    w0: Params,
    batches: Iterator[Any],
    init_loss: float,
    nbeta: float,
    config: SGLDConfig,
    *,
    generator: torch.Generator | None = None,
    vmap: bool = True,
    randomness: str = "error",
) -> LLCResult:
    """Run the SGLD chains from ``w0`` on the ``batches`` and estimate the LLC.

    ``loss_at(params, batch)`` is the loss as a pure function of the parameters; ``batches``
    yields one batch per SGLD step (the same batch for every chain at a step).
    ``vmap=True`` runs all chains at once by ``torch.func.vmap``; it falls back to one chain at
    a time (with a warning) if an op cannot be batched; ``randomness`` is vmap's (``"different"``
    for a model in train mode with dropout).
    """
    config.check()
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    C = config.num_chains
    steps = config.num_burnin + config.num_draws * config.steps_between
    # [C, ...] per parameter: every chain starts at w*
    w = {k: v.detach().unsqueeze(0).repeat(C, *([1] * v.dim())) for k, v in w0.items()}
    anchor = {k: v.detach().unsqueeze(0) for k, v in w0.items()}  # [1, ...]
    batched = vmap
    losses = torch.empty((C, config.num_draws), dtype=F64)
    half_lr, sqrt_lr = 0.5 * config.lr, math.sqrt(config.lr)
    for t in range(steps):
        batch = next(batches)
        try:
            grads, loss = _grads_and_losses(loss_at, w, batch, batched, randomness)
        except Exception as exc:  # an op without a batching rule, data-dependent control
            if not batched:
                raise
            warnings.warn(
                f"LLC: vmap over chains failed ({type(exc).__name__}: {exc}); running the"
                " chains one at a time",
                RuntimeWarning,
                stacklevel=2,
            )
            batched = False
            grads, loss = _grads_and_losses(loss_at, w, batch, batched, randomness)
        if not bool(torch.isfinite(loss).all()):  # sync point
            raise FloatingPointError(
                f"LLC: the sampled loss became non-finite at SGLD step {t}: lower llc_lr"
                f" (now {config.lr:g}) or raise llc_gamma (now {config.localization:g})"
            )
        k = t - config.num_burnin
        if k >= 0 and k % config.steps_between == 0:
            losses[:, k // config.steps_between] = loss.detach().to(F64).cpu()
        with torch.no_grad():
            for name, p in w.items():
                drift = nbeta * grads[name] + config.localization * (p - anchor[name])
                noise = torch.randn(p.shape, generator=g, device=g.device, dtype=p.dtype)
                w[name] = p - half_lr * drift + sqrt_lr * noise.to(p.device)
    return _estimate(losses, init_loss, nbeta)


def _estimate(losses: Tensor, init_loss: float, nbeta: float) -> LLCResult:
    """The LLC, its standard error over chains and the half-to-half drift from the losses."""
    C, D = losses.shape
    per_chain = nbeta * (losses.mean(1) - init_loss)  # [C]
    llc = float(per_chain.mean())
    stderr = float(per_chain.std(correction=1) / math.sqrt(C)) if C > 1 else math.nan
    half = D // 2
    first = nbeta * (losses[:, :half].mean(1) - init_loss)  # [C]
    second = nbeta * (losses[:, D - half :].mean(1) - init_loss)  # [C]
    diff = second - first
    drift = float(diff.mean())
    # the halves' difference has about twice the standard error of the whole-run estimate;
    # with few chains the spread of the differences alone is too noisy to test on
    spread = float(diff.std(correction=1) / math.sqrt(C)) if C > 1 else 0.0
    spread = max(spread, 2 * stderr) if C > 1 else math.inf
    converged = not (abs(drift) > 3 * spread and abs(drift) > 0.2 * abs(llc))
    return LLCResult(llc, stderr, per_chain, drift, init_loss, losses, nbeta, converged)


def _grads_and_losses(
    loss_at: LossAt, w: Params, batch: Any, batched: bool, randomness: str
) -> tuple[Params, Tensor]:
    """Gradients ``{name: [C, ...]}`` and losses ``[C]`` of all chains at their weights ``w``:
    one ``vmap`` call when ``batched``, else one ``autograd.grad`` per chain."""
    if batched:
        fn = torch.func.vmap(
            torch.func.grad_and_value(loss_at), in_dims=(0, None), randomness=randomness
        )
        return fn(w, batch)
    C = next(iter(w.values())).shape[0]
    grads: dict[str, list[Tensor]] = {k: [] for k in w}
    losses = []
    for c in range(C):
        leaves = {k: v[c].detach().requires_grad_(True) for k, v in w.items()}
        with torch.enable_grad():
            loss = loss_at(leaves, batch)
            gs = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        for (k, leaf), gr in zip(leaves.items(), gs, strict=True):
            grads[k].append(gr if gr is not None else torch.zeros_like(leaf))
        losses.append(loss.detach())
    return {k: torch.stack(v) for k, v in grads.items()}, torch.stack(losses)


# --------------------------------------------------------------------------------------------
# on a model


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    """Batches from ``loader`` round and round (re-iterating it each pass)."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the LLC loader yielded no batch")


def estimate_llc(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batch: Any = None,
    *,
    loader: Iterable[Any] | None = None,
    params: ParamSpec = None,
    config: SGLDConfig = SGLDConfig(),
    init_batches: int = 1,
    dropout: bool = False,
    generator: torch.Generator | None = None,
    vmap: bool = True,
) -> LLCResult:
    """The LLC of ``model``'s current weights for ``loss_fn`` by SGLD (see the module docstring).

    Data: every step uses ``batch`` (full-batch SGLD), or the next batch of ``loader`` (cycled),
    in which case ``L(w*)`` is the mean over its first ``init_batches`` batches. ``nbeta``
    defaults to ``B / log B`` with ``B`` the batch size (devinterp's default). Only the
    ``params`` selection moves (default: every trainable parameter); the model is not written.
    """
    if (batch is None) == (loader is None):
        raise ValueError("estimate_llc needs exactly one of batch= (full batch) or loader=")
    config.check()
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    root, selected, seed = selection_and_seed(model, params, g)  # the seed comes from g first
    wrapper = _Loss(root, loss_fn)
    w0 = {"m." + k: p.detach() for k, p in selected.items()}

    def loss_at(ps: Params, b: Any) -> Tensor:
        return torch.func.functional_call(wrapper, ps, (b,)).reshape(())

    with _isolated(root, train=dropout, seed=seed):
        if loader is None:
            first = [batch]
            batches: Iterator[Any] = itertools.repeat(batch)
        else:
            first = list(itertools.islice(iter(loader), max(1, init_batches)))
            batches = _cycle(loader)
        if not first:
            raise ValueError("the LLC loader yielded no batch")
        with torch.no_grad():
            init = sum(float(loss_at(w0, b)) for b in first) / len(first)  # sync point
        if not math.isfinite(init):
            raise FloatingPointError(f"LLC: the loss at the current weights is {init}")
        nbeta = config.nbeta
        if nbeta is None:
            B = _batch_size(first[0])
            if B < 2:
                raise ValueError("the default nbeta = B/log B needs a batch of >= 2; set nbeta")
            nbeta = B / math.log(B)
        result = sgld_llc(
            loss_at,
            w0,
            batches,
            init,
            nbeta,
            config,
            generator=g,
            vmap=vmap,
            randomness="different" if dropout else "error",
        )
    if not result.converged:
        warnings.warn(
            f"LLC not converged: the estimate from the second half of the draws differs from"
            f" the first half's by {result.drift:.3g} (LLC {result.llc:.3g} ± {result.stderr:.2g});"
            " raise llc_burnin or llc_draws, or lower llc_lr",
            ConvergenceWarning,
            stacklevel=2,
        )
    return result


def _config(options: Any) -> SGLDConfig:
    """``SGLDConfig`` from the Monitor's ``llc_*`` options."""
    nbeta = options.get("llc_nbeta")
    return SGLDConfig(
        lr=float(options.get("llc_lr", SGLDConfig.lr)),
        nbeta=None if nbeta is None else float(nbeta),
        localization=float(options.get("llc_gamma", SGLDConfig.localization)),
        num_chains=int(options.get("llc_chains", SGLDConfig.num_chains)),
        num_draws=int(options.get("llc_draws", SGLDConfig.num_draws)),
        num_burnin=int(options.get("llc_burnin", SGLDConfig.num_burnin)),
        steps_between=int(options.get("llc_steps_between", SGLDConfig.steps_between)),
    )


def llc_metric(ctx: LookContext) -> Output:
    """LLC of the current weights on the probe batch (or ``options["llc_loader"]``)."""
    if ctx.loss_fn is None or (ctx.probe_batch is None and "llc_loader" not in ctx.options):
        raise ValueError(
            "llc needs the loss on a probe batch: pass loss_fn=lambda model, batch: <scalar"
            " loss> and probe_batch=<batch> to the Monitor (or options={'llc_loader': loader})"
        )
    opts = ctx.options
    loader = opts.get("llc_loader")
    res = estimate_llc(
        ctx.model,
        ctx.loss_fn,
        None if loader is not None else ctx.probe_batch,
        loader=loader,
        params=opts.get("params"),
        config=_config(opts),
        init_batches=int(opts.get("llc_init_batches", 1)),
        dropout=bool(opts.get("dropout", False)),
        generator=ctx.generator,
    )
    return Output(
        scalars={
            key("llc"): res.llc,
            key("llc", "stderr"): res.stderr,
            key("llc", "drift"): res.drift,
            key("llc", "init_loss"): res.init_loss,
        }
    )


LLC = MetricSpec(
    "llc",
    llc_metric,
    needs=frozenset({"curvature"}),
    cost="opt-in",
    doc=(
        "local learning coefficient by SGLD around the current weights (Lau et al. 2023):"
        " dynmon/llc, dynmon/llc/stderr (over chains), dynmon/llc/drift (second-half minus"
        " first-half estimate; a ConvergenceWarning when it is large), dynmon/llc/init_loss;"
        " options llc_lr (ε, default 1e-4), llc_nbeta (nβ, default B/log B), llc_gamma (γ,"
        " default 100), llc_chains (4), llc_draws (200), llc_burnin (0), llc_steps_between"
        " (1), llc_loader (an iterable of batches instead of the probe batch),"
        " llc_init_batches (1), params, dropout"
    ),
)
