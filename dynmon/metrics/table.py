"""The metric table: every metric the Monitor can run, with what it needs and what it costs.

Each row wraps pure functions from ``spectral``, ``subspace`` and ``norms`` and turns their
tensors into keys (``dynmon/<metric>/<target>``). Nothing here keeps state: metrics that compare
two times return a snapshot and receive it back (and the reference one) from the Monitor.
"""

from __future__ import annotations

from dynmon.keys import head_scalars, key
from dynmon.metrics import inputs, norms, spectral, subspace
from dynmon.metrics.inputs import head_factors  # noqa: F401  (re-exported)
from dynmon.metrics.spec import LookContext, MetricSpec, Output

CIRCUITS = ("QK", "OV")


def _rank_metric(name: str, fn) -> MetricSpec:
    """A per-head rank measure of the QK and OV spectra: per head, per layer, overall, heatmap."""

    def compute(ctx: LookContext) -> Output:
        out = Output()
        for circuit, s in ctx.spectra.items():
            values = fn(s)  # [L, H]
            out.scalars.update(head_scalars(name, values, circuit, ctx.n_heads or None))
            out.arrays[key(name, circuit)] = values
        if name == "erank":  # the spectra themselves travel with the cheapest metric
            for circuit, s in ctx.spectra.items():
                out.arrays[key("svdvals", circuit)] = s
        return out

    return compute


def _marginal_erank(ctx: LookContext) -> Output:
    k = int(ctx.options.get("marginal_k", 1))
    return _rank_metric("marginal_erank", lambda s: spectral.marginal_erank(s, k=k))(ctx)


def _numerical_rank(ctx: LookContext) -> Output:
    tol = float(ctx.options.get("rank_tol", 1e-3))
    return _rank_metric("numerical_rank", lambda s: spectral.numerical_rank(s, tol=tol))(ctx)


def _subspace_dist(ctx: LookContext) -> Output:
    """Distance between each head's top-k singular subspaces now and at the previous / reference
    look: the mean of the left (read) and right (write) subspace distances.

    The layer-streamed look (``inputs.head_pass``) has already computed the overlaps with the
    previous and reference states; this row picks k and turns them into keys. Its snapshot is
    the new per-layer state (factor copies and small float64 matrices, docs/metrics.md)."""
    out = Output(snapshot=ctx.head_state)
    for circuit, s in ctx.spectra.items():
        k_opt = ctx.options.get("subspace_k", "auto")
        k = subspace.choose_k(s, cap=s.shape[-1]) if k_opt == "auto" else int(k_opt)
        out.scalars[key("subspace_k", circuit)] = float(k)
        for name, which in (("subspace_dist", "prev"), ("subspace_dist_ref", "ref")):
            blocks = ctx.head_blocks.get(circuit, {}).get(which)
            if blocks is None:
                continue
            d = inputs.drift_from_blocks(*blocks, k, ctx.head_ranks)  # [L, H]
            out.scalars.update(head_scalars(name, d, circuit, ctx.n_heads or None))
            out.arrays[key(name, circuit)] = d
    return out


def _weight_spectra(ctx: LookContext) -> Output:
    """Effective and stable rank of every 2-D weight (embeddings included)."""
    out = Output()
    for name, w in ctx.weights.items():
        s = spectral.gram_svdvals(w)  # the small Gram side: docs/metrics.md#weight_erank
        out.scalars[key("erank", name)] = spectral.erank(s)
        out.scalars[key("stable_rank", name)] = spectral.stable_rank(s)
    return out


def _norms(ctx: LookContext) -> Output:
    """Total weight norm and the Frobenius norm of every 2-D weight."""
    out = Output()
    each, total = norms.named_norms(ctx.weights, ctx.model.parameters())
    out.scalars[key("weight_norm")] = total
    for name, n in each.items():
        out.scalars[key("norm", name)] = n
    return out


def _grad_norm(ctx: LookContext) -> Output:
    """Global gradient norm over the parameters that hold a ``.grad`` (after the step)."""
    grads = [p.grad for p in ctx.model.parameters() if p.grad is not None]
    out = Output()
    if grads:
        each, total = norms.named_norms(ctx.grads, grads)
        out.scalars[key("grad_norm")] = total
        for name, n in each.items():
            out.scalars[key("grad_norm", name)] = n
    return out


def _update_ratio(ctx: LookContext) -> Output:
    """‖θ_t − θ_{t−1}‖ / ‖θ_{t−1}‖ per weight over the last monitor step."""
    out = Output()
    if not ctx.prev_weights:
        return out
    new, old = [], []
    for name, w in ctx.weights.items():
        if name in ctx.prev_weights:
            out.scalars[key("update_ratio", name)] = norms.update_ratio(w, ctx.prev_weights[name])
            new.append(w)
            old.append(ctx.prev_weights[name])
    if new:
        diff = norms.global_norm(a - b for a, b in zip(new, old, strict=True))
        out.scalars[key("update_ratio")] = diff / norms.global_norm(old)
    return out


def _curvature_rows() -> list[MetricSpec]:
    """Curvature metrics live in their own module (the Hessian operator and its estimators)."""
    from dynmon.metrics.curvature import HESSIAN_TRACE, SHARPNESS

    return [SHARPNESS, HESSIAN_TRACE]


def _role_rows() -> list[MetricSpec]:
    """Head roles live in their own module (patterns from a forward of the model on a probe)."""
    from dynmon.metrics.head_roles import HEAD_ROLES

    return [HEAD_ROLES]


def _extra_rows() -> list[MetricSpec]:
    """Metrics beyond the peers (esd_alpha, grad_noise, llc), each in its own module."""
    from dynmon.metrics.esd import ESD_ALPHA
    from dynmon.metrics.gradnoise import GRAD_NOISE
    from dynmon.metrics.llc import LLC

    return [ESD_ALPHA, GRAD_NOISE, LLC]


def _rows() -> dict[str, MetricSpec]:
    rows = [
        MetricSpec(
            "erank",
            _rank_metric("erank", spectral.erank),
            frozenset({"head_spectra"}),
            "economy",
            "Roy-Vetterli effective rank of each head's QK and OV circuit",
        ),
        MetricSpec(
            "stable_rank",
            _rank_metric("stable_rank", spectral.stable_rank),
            frozenset({"head_spectra"}),
            "economy",
            "stable rank ‖M‖_F²/‖M‖₂² of each head's QK and OV",
        ),
        MetricSpec(
            "participation_ratio",
            _rank_metric("participation_ratio", spectral.participation_ratio),
            frozenset({"head_spectra"}),
            "full",
            "participation ratio (Σσ²)²/Σσ⁴ of each head's QK and OV",
        ),
        MetricSpec(
            "numerical_rank",
            _numerical_rank,
            frozenset({"head_spectra"}),
            "full",
            "#σ > tol·σ₁ of each head's QK and OV (option rank_tol, default 1e-3)",
        ),
        MetricSpec(
            "marginal_erank",
            _marginal_erank,
            frozenset({"head_spectra"}),
            "full",
            "erank after removing the leading k singular values (option marginal_k, default 1)",
        ),
        MetricSpec(
            "subspace_dist",
            _subspace_dist,
            frozenset({"head_subspace"}),
            "economy",
            "principal-angle distance of each head's top-k QK/OV subspaces to the previous and"
            " the reference look",
        ),
        MetricSpec("norms", _norms, frozenset({"weights"}), "economy", "weight norms"),
        MetricSpec("grad_norm", _grad_norm, frozenset({"grads"}), "economy", "gradient norms"),
        MetricSpec(
            "update_ratio",
            _update_ratio,
            frozenset({"weights", "prev_weights"}),
            "full",
            "update-to-weight ratio over the last step, per weight and overall",
        ),
        MetricSpec(
            "weight_erank",
            _weight_spectra,
            frozenset({"weights"}),
            "full",
            "erank and stable rank of every 2-D weight matrix",
        ),
        *_curvature_rows(),
        *_role_rows(),
        *_extra_rows(),
    ]
    return {row.name: row for row in rows}


METRICS: dict[str, MetricSpec] = _rows()
PRESETS: dict[str, tuple[str, ...]] = {
    "economy": tuple(n for n, r in METRICS.items() if r.cost == "economy"),
    "full": tuple(n for n, r in METRICS.items() if r.cost in ("economy", "full")),
}
