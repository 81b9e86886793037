"""The pack's own Monitor metric: spectra of the learned key-query maps Γ_h and Γ = Σ_h Γ_h.

Linear attention is no standard attention module, so dynmon's adapters do not see it; this
``MetricSpec`` reads the model directly and reuses dynmon's pure functions (``spectral``,
``subspace``). Keys: ``dynmon/erank/KQ.H<h>`` (each head's Γ_h), ``dynmon/erank/KQ`` (the sum Γ),
``dynmon/stable_rank/KQ``, ``dynmon/numerical_rank/KQ`` (σ > rank_tol·σ₁, option ``rank_tol``,
default 1e-3), ``dynmon/subspace_dist/KQ`` and ``dynmon/subspace_dist_ref/KQ`` (mean of the left
and right top-k singular subspace distances of Γ to the previous and the reference look; k from
the spectrum by ``subspace.choose_k``, logged as ``dynmon/subspace_k/KQ``); arrays
``dynmon/erank/KQ.heads`` and ``dynmon/svdvals/KQ``.
"""

from __future__ import annotations

import torch

from dynmon.keys import key
from dynmon.metrics import spectral, subspace
from dynmon.metrics.spec import LookContext, MetricSpec, Output


@torch.no_grad()
def kq_spectra(ctx: LookContext) -> Output:
    """Erank per head and of the sum, ranks and subspace motion of the sum (module doc)."""
    model = ctx.model
    heads = model.kq_heads()  # [H, D, D]
    total = model.kq_sum()  # [D, D]
    tol = float(ctx.options.get("rank_tol", 1e-3))
    out = Output()
    head_erank = spectral.erank(spectral.svdvals(heads))  # [H]
    for h, value in enumerate(head_erank):
        out.scalars[key("erank", f"KQ.H{h}")] = value
    out.arrays[key("erank", "KQ.heads")] = head_erank
    U, S, V = spectral.top_singular_vectors(total)
    out.scalars[key("erank", "KQ")] = spectral.erank(S)
    out.scalars[key("stable_rank", "KQ")] = spectral.stable_rank(S)
    out.scalars[key("numerical_rank", "KQ")] = spectral.numerical_rank(S, tol=tol)
    out.arrays[key("svdvals", "KQ")] = S
    k = subspace.choose_k(S, tol=tol, cap=S.shape[-1])
    out.scalars[key("subspace_k", "KQ")] = float(k)
    out.snapshot = (U, V)
    for name, old in (("subspace_dist", ctx.snapshot), ("subspace_dist_ref", ctx.reference)):
        if old is None:
            continue
        U0, V0 = old
        d = 0.5 * (
            subspace.subspace_distance(U[:, :k], U0[:, :k])
            + subspace.subspace_distance(V[:, :k], V0[:, :k])
        )
        out.scalars[key(name, "KQ")] = d
    return out


KQ_SPECTRA = MetricSpec(
    "linear_icl_kq",
    kq_spectra,
    frozenset(),
    "economy",
    "erank of each head's learned key-query map and of their sum, numerical rank and subspace"
    " distance of the sum (linear-ICL pack)",
)
