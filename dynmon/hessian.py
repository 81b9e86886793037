"""Curvature of a model's loss: the Hessian as a linear operator, its extreme eigenvalues,
trace and spectral density (the maths; the monitor metrics built on them are in
``dynmon.metrics.curvature``).

The loss is the user's closure ``loss_fn(model, batch) -> scalar`` on a fixed probe batch, so
models with dict outputs (HF) work. ``HessianOperator`` runs that closure once with a gradient
graph (``create_graph=True``) and answers each Hessian-vector product with one double-backward
pass through it; the estimators in ``dynmon.linalg`` only see ``matvec`` (and ``matmat``, whose
batched passes vmap over a block: through that graph, or forward-over-reverse by ``torch.func``
on a re-run of the closure under the same isolation).

No side effects: ``.grad`` is never written (``torch.autograd.grad`` only), each module's
``training`` flag is restored, buffers are swapped for copies while the loss runs (batch-norm
updates land there), the optimizer is only read (for the learning rate), and randomness
(dropout masks, probes) comes from a private generator inside a forked RNG, so
``torch.get_rng_state()`` is unchanged. Attention runs on SDPA's math backend while the
graph is built, because the fused CPU/CUDA kernels have no double backward. The model is run
unwrapped (DDP, torch.compile), so no collective or compiled graph is involved.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import warnings
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

import torch
from torch import Tensor, nn

from dynmon.adapters.unwrap import unwrap
from dynmon.linalg import (
    EigResult,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_eigenvalues,
    power_iteration,
    slq_density,
)

__all__ = [
    "HessianOperator",
    "select_params",
    "selection_and_seed",
    "hessian_eigenvalues",
    "hessian_trace",
    "hessian_density",
    "ParamSpec",
    "LossFn",
]

# A parameter block: a name (module path like "blocks.0.attn", parameter name, or name prefix),
# a module, a parameter, or an iterable of these (their union). None means every trainable one.
ParamSpec = None | str | nn.Module | Tensor | Iterable[str | nn.Module | Tensor]
LossFn = Callable[[nn.Module, Any], Tensor]


# --------------------------------------------------------------------------------------------
# choosing parameters


def selection_and_seed(
    model: nn.Module, params: ParamSpec, generator: torch.Generator | None
) -> tuple[nn.Module, dict[str, Tensor], int]:
    """The unwrapped model, its selected trainable parameters (an error if none) and a seed
    drawn from ``generator`` (a fixed one when None) for the estimator's private RNG."""
    root = unwrap(model)
    selected = select_params(root, params)
    if not selected:
        raise ValueError("the model has no parameter with requires_grad=True")
    g = generator if generator is not None else torch.Generator().manual_seed(0)
    return root, selected, int(torch.randint(0, 2**62, (1,), generator=g, device=g.device))


def select_params(model: nn.Module, params: ParamSpec = None) -> dict[str, Tensor]:
    """The parameters a Hessian is taken over, by ``named_parameters`` name, each once.

    ``None``: every parameter with ``requires_grad``. A string is tried as a module path
    (``model.get_submodule``, so TransformerLens bridge aliases like ``"blocks.0.attn"`` work),
    then as a parameter path, then as a prefix of parameter names.
    """
    root = unwrap(model)
    named = list(root.named_parameters())  # each tensor once
    if params is None:
        return {n: p for n, p in named if p.requires_grad}
    name_of = {id(p): n for n, p in named}
    items = [params] if isinstance(params, (str, nn.Module, Tensor)) else list(params)
    chosen: dict[str, Tensor] = {}
    for item in items:
        for p in _resolve(root, named, item):
            if id(p) not in name_of:
                raise ValueError(f"a tensor of shape {tuple(p.shape)} is not a model parameter")
            chosen[name_of[id(p)]] = p
    frozen = [n for n, p in chosen.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"parameters {frozen[:5]} do not require grad; leave them out")
    if not chosen:
        raise ValueError(f"{params!r} selects no parameters")
    return chosen


def _resolve(root: nn.Module, named: list[tuple[str, Tensor]], item: Any) -> list[Tensor]:
    """The parameters one block item stands for."""
    if isinstance(item, nn.Module):
        return list(item.parameters())
    if isinstance(item, Tensor):
        return [item]
    if not isinstance(item, str):
        raise TypeError(f"a parameter block is a name, module or parameter, got {item!r}")
    with contextlib.suppress(AttributeError):
        return list(root.get_submodule(item).parameters())
    with contextlib.suppress(AttributeError):
        return [root.get_parameter(item)]
    found = [p for n, p in named if n == item or n.startswith(item + ".")]
    if not found:
        children = [n for n, _ in root.named_children()]
        raise ValueError(
            f"no module or parameter named {item!r} in {type(root).__name__};"
            f" its top-level modules are {children}"
        )
    return found


# --------------------------------------------------------------------------------------------
# running the loss without side effects


@contextlib.contextmanager
def _isolated(model: nn.Module, *, train: bool, seed: int) -> Iterator[None]:
    """Evaluate ``model`` in train/eval mode with a private RNG seed and double-backward-able
    attention; restore every module's ``training`` flag and the global RNG. Buffers are swapped
    for copies meanwhile, so updates (batch-norm statistics) land in the copies, which the
    graph may keep, and the model's own buffers are never written."""
    modes = [(m, m.training) for m in model.modules()]
    buffers = [(m, name, b) for m in model.modules() for name, b in m.named_buffers(recurse=False)]
    cuda = sorted({_cuda_index(t.device) for t in model.parameters() if t.device.type == "cuda"})
    try:
        for m, name, b in buffers:
            setattr(m, name, b.detach().clone())
        model.train(train)
        with torch.random.fork_rng(devices=cuda), _sdpa_math(), torch.enable_grad():
            torch.default_generator.manual_seed(seed)
            for i in cuda:
                torch.cuda.default_generators[i].manual_seed(seed)
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        for m, name, b in buffers:
            setattr(m, name, b)


def _cuda_index(device: torch.device) -> int:
    """The ordinal of a CUDA device (the current one for a bare ``"cuda"``)."""
    return device.index if device.index is not None else torch.cuda.current_device()


def _sdpa_math() -> contextlib.AbstractContextManager:
    """Restrict scaled-dot-product attention to its math backend (twice differentiable)."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - older torch
        return contextlib.nullcontext()
    return sdpa_kernel(SDPBackend.MATH)


# --------------------------------------------------------------------------------------------
# the operator


class _Graph:
    """The loss and its gradient graph over the selected parameters, shared by operator blocks,
    with what it takes to run the loss again (closure, batch, mode, seed) for batched products."""

    def __init__(
        self,
        model: nn.Module,
        names: list[str],
        params: list[Tensor],
        grads: list[Tensor | None],
        rerun: tuple[LossFn, Any, bool, int],
    ) -> None:
        self.model, self.names, self.params, self.grads = model, names, params, grads
        self.loss_fn, self.batch, self.dropout, self.seed = rerun


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as a module, so ``functional_call`` can swap the model's
    parameters by name (``model.<name>``) for the duration of one call."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, batch: Any) -> None:
        super().__init__()
        self.model = model
        self._loss = (loss_fn, batch)  # a tuple, so the batch's tensors are not registered

    def forward(self) -> Tensor:
        loss_fn, batch = self._loss
        return loss_fn(self.model, batch).reshape(())


class _BatchingFailed(RuntimeError):
    """The batched pass disagreed with the operator's own graph."""


class HessianOperator:
    """Hessian-vector products ``∇²_θ loss_fn(model, batch) · v`` on flat vectors over ``θ``.

    ``θ`` is ``params`` flattened and concatenated in ``names`` order (default: every trainable
    parameter the loss depends on; an explicit selection keeps unused ones as zero rows).
    Construction costs one forward and backward (with ``create_graph``) and keeps that graph
    alive until the operator is dropped; each ``matvec`` is one double-backward pass.
    ``dropout=False`` evaluates in eval mode; ``True`` in train mode with the dropout masks
    drawn once from ``generator`` (fixed across matvecs, so the operator stays linear).
    ``matmat`` applies a block of vectors in one vmapped pass when ``batched`` (default: on
    CUDA, where single products are launch-bound), else one ``matvec`` each: blocks of at least
    ``forward_min_block`` vectors go forward-over-reverse (``vmap`` of ``jvp`` of ``grad``,
    re-running the loss once per block), smaller ones reverse-over-reverse through the kept
    graph. On CPU neither reaches 2x the loop on small models (benchmarks/bench_peers.py).
    """

    # the forward-over-reverse pass re-runs the loss and pays a fixed cost per call (forward-mode
    # rules of the backward ops); it overtook reverse-over-reverse from about 32 vectors a block
    # on the bench models (bench_peers.py section 4)
    forward_min_block: int = 32

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batch: Any,
        params: ParamSpec = None,
        *,
        dropout: bool = False,
        generator: torch.Generator | None = None,
        batched: bool | None = None,
    ) -> None:
        root, selected, seed = selection_and_seed(model, params, generator)
        with _isolated(root, train=dropout, seed=seed):
            loss = loss_fn(root, batch)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise TypeError(f"loss_fn must return a scalar tensor, got {loss!r}")
            loss = loss.reshape(())
            if not loss.requires_grad:
                raise ValueError("the loss does not depend on the selected parameters")
            grads = torch.autograd.grad(
                loss, list(selected.values()), create_graph=True, allow_unused=True
            )
        pairs = list(zip(selected.items(), grads, strict=True))
        if params is None:  # only what the loss uses (drops e.g. fused weights others view)
            pairs = [(np, gr) for np, gr in pairs if gr is not None]
        if not pairs or all(gr is None for _, gr in pairs):
            raise ValueError("the loss does not depend on the selected parameters")
        self.loss = loss.detach()
        graph = _Graph(
            root,
            [n for (n, _), _ in pairs],
            [p for (_, p), _ in pairs],
            [gr for _, gr in pairs],
            (loss_fn, batch, dropout, seed),
        )
        self._bind(graph, graph.names)
        # batched products pay off where one product is launch-bound (GPU); on CPU they
        # measured about 1-1.6x the per-vector loop on the bench models (bench_peers.py)
        self._batched = self.device.type == "cuda" if batched is None else bool(batched)
        self._forward = True  # forward-over-reverse for large blocks, until it fails once

    def _bind(self, graph: _Graph, names: list[str]) -> None:
        """Point this operator at the parameters ``names`` of a built graph."""
        index = {n: i for i, n in enumerate(graph.names)}
        self._graph = graph
        self._idx = [index[n] for n in names]
        self.names = list(names)
        self.params = [graph.params[i] for i in self._idx]
        self.sizes = [p.numel() for p in self.params]
        n = sum(self.sizes)
        self.shape = (n, n)
        self.dtype = functools.reduce(torch.promote_types, (p.dtype for p in self.params))
        self.device = self.params[0].device

    def restrict(self, params: ParamSpec) -> HessianOperator:
        """The diagonal block ``H_BB`` over a subset ``B`` of these parameters (same graph)."""
        chosen = select_params(self._graph.model, params)
        outside = [n for n in chosen if n not in self.names]
        if outside:
            raise ValueError(f"block parameters {outside[:5]} are outside this operator")
        block = copy.copy(self)
        block._bind(self._graph, [n for n in self.names if n in chosen])
        return block

    def unflatten(self, v: Tensor) -> dict[str, Tensor]:
        """A flat ``[n]`` vector as one tensor per parameter (views), by name."""
        chunks = v.split(self.sizes)
        return {n: c.view(p.shape) for n, c, p in zip(self.names, chunks, self.params, strict=True)}

    def _kept_grads(self) -> list[Tensor | None]:
        """The kept graph's gradients of this operator's parameters (None: unused)."""
        return [self._graph.grads[i] for i in self._idx]

    def matvec(self, v: Tensor) -> Tensor:
        """``H v`` for a flat ``[n]`` vector, in the operator's dtype and device."""
        if v.shape != (self.shape[0],):
            raise ValueError(f"expected a vector of shape ({self.shape[0]},), got {v.shape}")
        grads = self._kept_grads()
        outputs, cotangents = [], []
        for gr, p, c in zip(grads, self.params, v.split(self.sizes), strict=True):
            if gr is not None and gr.requires_grad:  # else that gradient is constant: zero rows
                outputs.append(gr)
                cotangents.append(c.view(p.shape).to(device=p.device, dtype=gr.dtype))
        if not outputs:
            return torch.zeros_like(v, dtype=self.dtype, device=self.device)
        try:
            hv = torch.autograd.grad(
                outputs, self.params, cotangents, retain_graph=True, allow_unused=True
            )
        except RuntimeError as exc:
            if "not implemented" not in str(exc):
                raise
            raise RuntimeError(
                f"{exc}. The model uses an op without a double backward (often a fused attention"
                " kernel); for HF models pass attn_implementation='eager'"
            ) from exc
        return torch.cat(
            [
                (h if h is not None else torch.zeros_like(p))
                .reshape(-1)
                .to(device=self.device, dtype=self.dtype)
                for h, p in zip(hv, self.params, strict=True)
            ]
        )

    def matmat(self, V: Tensor) -> Tensor:
        """``H V`` for a block of vectors, the columns of ``V`` ``[n, b]``, in the operator's
        dtype and device. When the operator is ``batched``, one vmapped pass per block:
        forward-over-reverse for blocks of at least ``forward_min_block`` vectors (without
        dropout), else reverse-over-reverse through the kept graph; otherwise one ``matvec`` per
        column. Where a batched pass fails (an op without a forward-mode or batching rule) it
        warns once and uses the next one from then on for this operator, the loop last."""
        n = self.shape[0]
        if V.dim() != 2 or V.shape[0] != n:
            raise ValueError(f"expected a block of shape ({n}, b), got {tuple(V.shape)}")
        b = V.shape[1]
        if b == 1 or not self._batched:
            return torch.stack([self.matvec(V[:, j]) for j in range(b)], dim=1)
        rows = V.mT  # [b, n]: one probe vector per row
        try:
            out = None
            # dropout: a re-run under torch.func need not redraw the kept graph's masks
            # (nn.TransformerEncoderLayer's came out different), so only the kept graph is used
            if b >= self.forward_min_block and self._forward and not self._graph.dropout:
                try:
                    out = self._forward_over_reverse(rows)
                except (RuntimeError, NotImplementedError) as exc:  # e.g. no forward-mode rule
                    warnings.warn(
                        f"forward-over-reverse Hessian-vector products failed ({exc}); using"
                        " the reverse-over-reverse pass for this operator",
                        RuntimeWarning,
                        stacklevel=2,
                    )
                    self._forward = False
            if out is None:
                out = self._reverse_over_reverse(rows)
        except (RuntimeError, NotImplementedError) as exc:  # no batching rule
            warnings.warn(
                f"batched Hessian-vector products failed ({exc}); falling back to one"
                " matvec per vector",
                RuntimeWarning,
                stacklevel=2,
            )
            self._batched = False
            return self.matmat(V)
        return out.mT

    def _flat_rows(self, hv: Iterable[Tensor | None], b: int) -> Tensor:
        """Per-parameter products ``[b, *shape]`` (None: zero) as one ``[b, n]`` block."""
        return torch.cat(
            [
                (h if h is not None else torch.zeros((b, *p.shape), dtype=p.dtype, device=p.device))
                .reshape(b, -1)
                .to(device=self.device, dtype=self.dtype)
                for h, p in zip(hv, self.params, strict=True)
            ],
            dim=1,
        )  # [b, n]

    def _reverse_over_reverse(self, rows: Tensor) -> Tensor:
        """``[b, n]`` products by one double-backward pass through the kept gradient graph,
        vmapped over the cotangents (autograd's ``is_grads_batched``)."""
        b = rows.shape[0]
        outputs, cotangents = [], []
        grads = self._kept_grads()
        for gr, p, c in zip(grads, self.params, rows.split(self.sizes, dim=1), strict=True):
            if gr is not None and gr.requires_grad:  # else that gradient is constant: zero rows
                outputs.append(gr)
                cotangents.append(c.reshape(b, *p.shape).to(device=p.device, dtype=gr.dtype))
        if not outputs:
            return torch.zeros((b, self.shape[0]), dtype=self.dtype, device=self.device)
        hv = torch.autograd.grad(
            outputs,
            self.params,
            cotangents,
            retain_graph=True,
            allow_unused=True,
            is_grads_batched=True,
        )
        return self._flat_rows(hv, b)

    def _forward_over_reverse(self, rows: Tensor) -> Tensor:
        """``[b, n]`` products as ``vmap`` over the block of ``jvp(grad(loss))`` (torch.func):
        the loss is run again with the selected parameters swapped in by ``functional_call``
        (the rest held fixed), under the same isolation, mode and dropout seed as the kept
        graph. The gradient that comes out on the way is checked against the kept graph's, so
        a model that reads its weights around ``functional_call`` cannot give wrong products."""
        from torch.func import functional_call, grad, jvp, vmap

        graph, b = self._graph, rows.shape[0]
        module = _LossModule(graph.model, graph.loss_fn, graph.batch)
        keys = [f"model.{n}" for n in self.names]
        primals = tuple(p.detach() for p in self.params)
        tangents = tuple(
            c.reshape(b, *p.shape).to(device=p.device, dtype=p.dtype)  # [b, *shape]
            for c, p in zip(rows.split(self.sizes, dim=1), self.params, strict=True)
        )

        def loss_at(*values: Tensor) -> Tensor:
            return functional_call(module, dict(zip(keys, values, strict=True)), ())

        gradient = grad(loss_at, argnums=tuple(range(len(primals))))

        def hvp(*v: Tensor) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
            return jvp(gradient, primals, v)

        # no_grad: the parameters held fixed build no autograd graph; torch.func ignores it
        with _isolated(graph.model, train=graph.dropout, seed=graph.seed), torch.no_grad():
            g, hv = vmap(hvp, randomness="same")(*tangents)
        self._check_gradient([x[0] for x in g])
        return self._flat_rows(hv, b)

    def _check_gradient(self, g: list[Tensor]) -> None:
        """Raise ``_BatchingFailed`` unless ``g`` matches the kept graph's gradient."""
        kept = self._kept_grads()
        want = torch.cat(
            [
                (k.detach() if k is not None else torch.zeros_like(p)).reshape(-1).to(self.dtype)
                for k, p in zip(kept, self.params, strict=True)
            ]
        )
        got = torch.cat([x.reshape(-1).to(self.dtype) for x in g])
        tol = 1e-4 if self.dtype in (torch.float32, torch.float64) else 1e-2
        err = torch.linalg.vector_norm(got - want)  # sync point: once per block
        if not bool(err <= tol * torch.linalg.vector_norm(want) + torch.finfo(self.dtype).tiny):
            raise _BatchingFailed(
                "the re-run loss's gradient differs from the kept graph's (relative error"
                f" {(err / torch.linalg.vector_norm(want)).item():.2e}): the model reads its"
                " parameters in a way torch.func.functional_call cannot swap"
            )


# --------------------------------------------------------------------------------------------
# public diagnostics


def _private_generator(seed: int, generator: torch.Generator | None) -> torch.Generator:
    """The caller's generator, else a fresh one seeded with ``seed``."""
    return generator if generator is not None else torch.Generator().manual_seed(seed)


def hessian_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    k: int = 1,
    *,
    params: ParamSpec = None,
    method: Literal["lanczos", "power"] = "lanczos",
    which: Literal["LA", "LM", "SA"] = "LA",
    tol: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
    generator: torch.Generator | None = None,
    dropout: bool = False,
    reorth: Literal["full", "none"] = "full",
    return_eigenvectors: bool = False,
) -> EigResult:
    """Top-``k`` eigenvalues of the loss Hessian on ``batch`` (``k=1``: the sharpness).

    ``method="lanczos"`` stops on the Ritz residual (``tol`` relative); ``"power"`` is power
    iteration with deflation, which finds the largest-magnitude eigenvalues whatever ``which``
    says. ``reorth="none"`` keeps 3 Krylov vectors instead of up to ``max_iter`` (for large
    models, ``k=1``). See ``EigResult`` for what comes back (``.eigenvalues``, ``.num_matvecs``).
    """
    if method not in ("lanczos", "power"):
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    g = _private_generator(seed, generator)
    op = HessianOperator(model, loss_fn, batch, params, dropout=dropout, generator=g)
    if method == "power":
        if which == "SA":
            raise ValueError("power iteration finds largest-magnitude eigenvalues; use lanczos")
        return power_iteration(
            op, k, tol=tol, max_iter=max_iter, generator=g, return_eigenvectors=return_eigenvectors
        )
    return lanczos_eigenvalues(
        op,
        k,
        which=which,
        tol=tol,
        max_iter=max_iter,
        generator=g,
        reorth=reorth,
        return_eigenvectors=return_eigenvectors,
    )


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    *,
    params: ParamSpec = None,
    method: Literal["hutchinson", "hutch++"] = "hutchinson",
    num_probes: int = 100,
    seed: int = 0,
    generator: torch.Generator | None = None,
    dropout: bool = False,
    block_size: int | None = 16,
    batched: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Trace of the loss Hessian on ``batch`` and the standard error of the estimate.

    ``num_probes`` is the number of Hessian-vector products for either method (Hutch++ spends
    two thirds of them on a low-rank sketch), in blocks of ``block_size``, each one batched
    pass when ``batched`` (default: on CUDA; blocks of 32 or more go forward-over-reverse, see
    ``HessianOperator``). Two 0-D float64 tensors.
    """
    if method not in ("hutchinson", "hutch++"):
        raise ValueError(f"method must be 'hutchinson' or 'hutch++', got {method!r}")
    g = _private_generator(seed, generator)
    op = HessianOperator(
        model, loss_fn, batch, params, dropout=dropout, generator=g, batched=batched
    )
    if method == "hutch++":
        return hutchpp_trace(op, num_probes, generator=g, block_size=block_size)
    return hutchinson_trace(op, num_probes, generator=g, block_size=block_size)


def hessian_density(
    model: nn.Module,
    loss_fn: LossFn,
    batch: Any,
    *,
    params: ParamSpec = None,
    num_probes: int = 4,
    num_steps: int = 100,
    seed: int = 0,
    generator: torch.Generator | None = None,
    dropout: bool = False,
    block_size: int | None = None,
    batched: bool | None = None,
) -> tuple[Tensor, Tensor]:
    """Hessian spectral density by stochastic Lanczos quadrature: ``(nodes, weights)``.

    Smooth it onto a grid with ``dynmon.linalg.gaussian_density``. Costs
    ``num_probes · num_steps`` Hessian-vector products (default 4 x 100: more accurate than
    PyHessian's 1 x 100, see ``slq_density``); the probes' Lanczos runs advance
    together, ``block_size`` of them (``None``: all) per block of products (one batched pass
    when ``batched``, default on CUDA; see ``HessianOperator``).
    """
    g = _private_generator(seed, generator)
    op = HessianOperator(
        model, loss_fn, batch, params, dropout=dropout, generator=g, batched=batched
    )
    return slq_density(op, num_probes, num_steps, generator=g, block_size=block_size)
