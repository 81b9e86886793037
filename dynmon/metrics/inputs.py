"""Per-head inputs of a look, streamed one attention layer at a time.

For every layer this computes the singular values of each head's QK and OV circuits from the
Gram matrices of the factors (``gram.py``) and, when subspace drift is tracked, the overlaps of
each head's singular subspaces with those of the previous and the reference look. Only one
layer's factors are ever materialised; layers may differ in head count and width.

Drift without bases (docs/metrics.md#subspace_dist). A head's top singular vectors are
``U = A X`` with ``X = R⁻¹u`` (``u`` from the SVD of the core), so the overlap with an earlier
basis ``U₀ = A₀X₀`` is ``U₀ᵀU = X₀ᵀ(A₀ᵀA)X``: a ``dh x dh`` cross-Gram. To keep small distances
accurate the cross-Grams are carried forward from the change ``Δ = A − A₀`` alone
(``A₀ᵀA = G₀ + A₀ᵀΔ``, ``AᵀA = G₀ + A₀ᵀΔ + ΔᵀA₀ + ΔᵀΔ``), so rounding scales with ``Δ``, not
with ``A``. The state a layer keeps is a copy of its factors (weights' dtype, on the snapshot
device), their float64 Gram matrices and cross-Grams with the reference, and the coefficient
matrices ``X``. Heads whose factors are too ill-conditioned for the Gram path use explicit
float64 QR bases, recomputed for the earlier look from the stored factors.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor

from dynmon.adapters.base import HeadWeights
from dynmon.metrics.gram import (
    CholFactor,
    cholesky_factor,
    finite_gram,
    gram,
    qr_factor,
    working_dtype,
)
from dynmon.threads import intra_op_threads

CIRCUITS = ("QK", "OV")
_CIRCUIT_FACTORS = {"QK": ("Q", "K"), "OV": ("V", "O")}
STATE_VERSION = 2
# Heads x dh³ above which a multi-threaded look runs a layer's two circuits side by side, one
# thread each (measured: 9% faster looks with 32 heads of dh 128, 8% with 12 heads of dh 64)
PARALLEL_CIRCUITS_WORK = 2**20


def head_factors(heads: Iterable[HeadWeights]) -> dict[str, tuple[Tensor, Tensor]]:
    """Per-circuit factors ``(A, B)`` of all heads, ``M = A Bᵀ``, each ``[L, H, D, dh]``.

    Stacks every layer (memory: a copy of all attention weights); the Monitor streams layers
    instead. For offline use on histories (``analyze``, the induction pack).
    """
    heads = list(heads)
    shapes = {tuple(tuple(t.shape) for t in (h.W_Q, h.W_K, h.W_V, h.W_O)) for h in heads}
    if len(shapes) != 1:
        raise ValueError(
            f"attention layers have different head shapes {sorted(shapes)} (W_Q, W_K, W_V, W_O);"
            " stacking them needs one shape: use the Monitor's layer-streamed look instead"
        )
    W_Q = torch.stack([h.W_Q for h in heads])  # [L, H, D, dh]
    W_K = torch.stack([h.W_K for h in heads])  # [L, H, D, dh]
    W_V = torch.stack([h.W_V for h in heads])  # [L, H, D, dh]
    W_O = torch.stack([h.W_O for h in heads])  # [L, H, dh, D]
    return {"QK": (W_Q, W_K), "OV": (W_V, W_O.mT)}


def layer_factors(hw: HeadWeights) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """The distinct factors of one layer (``Q, K, V: [h, D, dh]``, ``O = W_Oᵀ: [H, D, dh]``) and,
    for grouped-query K/V, the index of each query head's K/V head (None: one per head)."""
    H = hw.n_heads
    n_kv = hw.n_kv_heads
    factors = {"Q": hw.W_Q, "K": hw.W_K, "V": hw.W_V, "O": hw.W_O.mT}
    index: dict[str, Tensor | None] = {f: None for f in factors}
    if n_kv and n_kv < H and H % n_kv == 0:
        group = H // n_kv
        for f in ("K", "V"):  # every group-th head is distinct when expanded by repeat_interleave
            if factors[f].shape[0] == H:
                factors[f] = factors[f][::group]  # [H_kv, D', dh]
            index[f] = torch.arange(H, device=hw.W_Q.device) // group  # [H]
    return factors, index


def _take(t: Tensor, idx: Tensor | None) -> Tensor:
    """Per query head: ``t`` itself, or its grouped K/V heads gathered by ``idx``."""
    return t if idx is None else t[idx]


def _rows(t: Tensor, idx: Tensor | None, heads: Tensor) -> Tensor:
    """``_take(t, idx)[heads]`` without gathering every head first."""
    return t[heads.to(t.device)] if idx is None else t[idx[heads].to(t.device)]


def _block_sums(M: Tensor) -> Tensor:
    """``b[..., k-1] = ‖M[..., :k, :k]‖_F²`` for every k: ``[..., r, r] -> [..., r]``."""
    S = M.square().cumsum(-1).cumsum(-2)  # [..., r, r]
    return S.diagonal(dim1=-2, dim2=-1)


def _explicit_bases(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Orthonormal float64 ``U [..., D, r]``, ``S``, ``V [..., D, r]`` of ``A Bᵀ`` by QR."""
    Q_A, R_A = torch.linalg.qr(A.to(torch.float64))  # [..., D, dh], [..., dh, dh]
    Q_B, R_B = torch.linalg.qr(B.to(torch.float64))
    u, s, vh = torch.linalg.svd(R_A @ R_B.mT, full_matrices=False)
    return Q_A @ u, s, Q_B @ vh.mT


class Workspace:
    """Working-precision buffers reused across the layers of one look.

    A factor's working copy, the previous and reference looks' copies and the change ``Δ`` are
    each as large as the factor; allocating them afresh for every factor of every layer costs
    page faults comparable to the matmuls (measured at D 4096: ``.float()`` of a bfloat16
    factor 3x slower than ``copy_`` into a reused buffer), so each named buffer is allocated
    once at the largest size it is asked for.
    """

    def __init__(self) -> None:
        self._flat: dict[str, Tensor] = {}
        self._pool: ThreadPoolExecutor | None = None

    def pool(self) -> ThreadPoolExecutor:
        """Two worker threads for the layers' circuits, the same ones for the whole look (their
        malloc arenas are reused, not one more pair per layer)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(CIRCUITS), thread_name_prefix="dynmon-look")
        return self._pool

    def close(self) -> None:
        """Stop the worker threads (the buffers go with the workspace)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _get(self, name: str, n: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """At least ``n`` elements of buffer ``name``, reallocated only when too small."""
        flat = self._flat.get(name)
        if flat is None or flat.numel() < n or flat.dtype != dtype or flat.device != device:
            flat = torch.empty(n, dtype=dtype, device=device)
            self._flat[name] = flat
        return flat[:n]

    def buffer(self, name: str, like: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised tensor shaped and laid out as ``like`` (``empty_like``'s strides, so
        converting ``like`` into it is a straight copy, not a transpose), a view of buffer
        ``name``."""
        strides = torch.empty_like(like, dtype=dtype, device="meta").stride()
        return self._get(name, like.numel(), dtype, device).as_strided(like.shape, strides)

    def working(self, F: Tensor, name: str, like: Tensor | None = None) -> Tensor:
        """``F`` in working precision on ``like``'s device and dtype (by default ``F``'s device and
        ``working_dtype``): ``F`` itself if it already is, else a copy into the buffer ``name``."""
        device = F.device if like is None else like.device
        wd = working_dtype(F) if like is None else like.dtype
        if F.dtype == wd and F.device == device:
            return F
        return self.buffer(name, F, wd, device).copy_(F)

    def side_by_side(self, like: Tensor, n: int, dtype: torch.dtype) -> tuple[Tensor, list[Tensor]]:
        """``n`` uninitialised ``dtype`` tensors shaped as ``like`` (``[..., D, dh]``, on its
        device) side by side along ``dh`` in the buffer ``"S"``, and ``Xᵀ`` ``[..., n·dh, D]`` over
        them: one product ``Xᵀ @ Y`` then gives every ``Fᵢᵀ Y``, faster than ``n`` products
        (measured at D 4096: 54 against 64 ms for three). Each head's columns stay contiguous
        along ``D`` or along ``dh`` as in ``like``, so converting a factor in is a straight copy.
        """
        *batch, D, dh = like.shape
        flat = self._get("S", like.numel() * n, dtype, like.device)
        if like.stride(-2) == 1:  # each head stored as dh rows of D (nn.Linear q/k/v)
            Xt = flat.view(*batch, n * dh, D)
            return Xt, [Xt[..., i * dh : (i + 1) * dh, :].mT for i in range(n)]
        X = flat.view(*batch, D, n * dh)  # each head stored as D rows of dh
        return X.mT, [X[..., i * dh : (i + 1) * dh] for i in range(n)]


def _changes(
    ws: Workspace, F: Tensor, F0: Tensor, F_ref: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """``A₀ᵀΔ``, ``ΔᵀΔ`` and (given ``F_ref``) ``A_refᵀΔ`` in float64, ``Δ = A − A₀``, from
    products in working precision; ``F`` is the factor, ``F0``/``F_ref`` the stored copies.

    Stored copies that must be converted anyway (half precision, another device) are converted
    side by side with ``Δ``, so the two or three products are one; the values are those of the
    separate products (bitwise)."""
    wd = working_dtype(F)
    if F.dtype == wd and F0.dtype == wd and F0.device == F.device:  # nothing to convert
        delta = torch.sub(F, F0, out=ws.buffer("D", F, wd, F.device))  # Δ [h, D, dh]
        P = (F0.mT @ delta).to(torch.float64)
        Q = (delta.mT @ delta).to(torch.float64)
        if F_ref is None:
            return P, Q, None
        R = ws.working(F_ref, "R", like=F)
        return P, Q, (R.mT @ delta).to(torch.float64)
    Xt, slots = ws.side_by_side(F, 2 if F_ref is None else 3, wd)  # [A₀ | Δ | A_ref]
    A0 = slots[0].copy_(F0)
    delta = slots[1].copy_(F).sub_(A0)  # converted in place: one large buffer fewer
    if F_ref is not None:
        slots[2].copy_(F_ref)
    parts = (Xt @ delta).to(torch.float64).split(F.shape[-1], dim=-2)  # [h, n·dh, dh]
    return parts[0], parts[1], parts[2] if F_ref is not None else None


@dataclass
class LayerResult:
    """One layer's outputs: spectra per circuit ``[H, r]`` and, when tracked, the overlap block
    sums ``{circuit: {"prev"|"ref": (b_U [H, r], b_V [H, r])}}`` and the state for next time."""

    spectra: dict[str, Tensor]
    blocks: dict[str, dict[str, tuple[Tensor, Tensor]]] = field(default_factory=dict)
    state: dict[str, Any] | None = None
    svd: dict[str, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)
    nonfinite: dict[str, Tensor] = field(default_factory=dict)  # circuit -> bool [H]


def _compatible(state: Any, factors: dict[str, Tensor]) -> bool:
    return (
        isinstance(state, dict)
        and state.get("version") == STATE_VERSION
        and all(state["F"][f].shape == F.shape for f, F in factors.items())
    )


def layer_pass(
    hw: HeadWeights,
    *,
    track: bool = False,
    prev: dict[str, Any] | None = None,
    ref: dict[str, Any] | None = None,
    is_reference: bool = False,
    store_device: torch.device | str | None = None,
    vectors: bool = False,
    workspace: Workspace | None = None,
) -> LayerResult:
    """Spectra (and, if ``track``, drift against ``prev``/``ref`` states) of one layer's heads.

    ``vectors`` also returns the explicit ``U, S, V`` per circuit (the legacy ``head_svd`` need).
    ``workspace`` holds the large temporaries across layers (``head_pass`` passes one).
    """
    factors, index = layer_factors(hw)
    eps = torch.finfo(working_dtype(*factors.values())).eps
    old_F = prev["F"] if isinstance(prev, dict) and isinstance(prev.get("F"), dict) else {}
    ref_F = ref["F"] if isinstance(ref, dict) and isinstance(ref.get("F"), dict) else {}
    if prev is not None and not _compatible(prev, factors):
        prev = None
    if ref is not None and (prev is None or not _compatible(ref, factors)):
        ref = None
    ws = workspace if workspace is not None else Workspace()
    grams: dict[str, Tensor] = {}
    cross_prev: dict[str, Tensor] = {}
    cross_ref: dict[str, Tensor] = {}
    for f, F in factors.items():
        restart = not track or prev is None or bool(prev["bad"][f].any())  # sync point (rare)
        if restart:
            A = ws.working(F, "A")  # the factor in working precision (F itself if already so)
            grams[f] = gram(A)  # [h, dh, dh]
            if ref is not None and prev is not None and not bool(ref["bad"][f].any()):
                F_ref = ws.working(ref["F"][f], "R", like=A)  # restart: cross-Gram anew
                cross_ref[f] = (F_ref.mT @ A).to(torch.float64)
            continue
        with_ref = ref is not None and prev.get("C") is not None
        own_ref = with_ref and ref["F"][f] is not prev["F"][f]  # else the previous look was it
        P, Q, P_ref = _changes(ws, F, prev["F"][f], ref["F"][f] if own_ref else None)
        G0 = prev["G"][f].to(F.device)
        cross_prev[f] = G0 + P  # A₀ᵀA (P = A₀ᵀΔ)
        grams[f] = G0 + P + P.mT + Q  # AᵀA, carried forward (Q = ΔᵀΔ)
        if with_ref:
            P_ref = P if P_ref is None else P_ref  # A_refᵀΔ
            cross_ref[f] = prev["C"][f].to(F.device) + P_ref  # A_refᵀA
    # a factor holding NaN/Inf shows in its Gram matrix: stand in the identity, report NaN
    nonfinite: dict[str, Tensor] = {}  # factor -> bool [h]
    for f in list(grams):
        grams[f], bad_f = finite_gram(grams[f])
        nonfinite[f] = bad_f
        if bool(bad_f.any()):  # sync point (one flag): no drift through a non-finite factor
            cross_prev.pop(f, None)
            cross_ref.pop(f, None)

    result = LayerResult(spectra={})
    state_X: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    work = partial(
        _circuit_pass,
        factors=factors,
        index=index,
        grams=grams,
        eps=eps,
        nonfinite=nonfinite,
        crosses={"prev": cross_prev, "ref": cross_ref},
        olds={"prev": prev, "ref": ref},
        track=track,
        vectors=vectors,
    )
    H, dh = hw.n_heads, factors["Q"].shape[-1]
    threads = torch.get_num_threads()
    if (track or vectors) and threads > 1 and H * dh**3 >= PARALLEL_CIRCUITS_WORK:
        # the dh x dh work (SVDs above all) barely gains from intra-op threads: run the two
        # circuits side by side on one thread each instead
        try:
            with intra_op_threads(1):
                outs = list(ws.pool().map(work, CIRCUITS))
        finally:
            if workspace is None:
                ws.close()
        for out in outs:  # kept until the next look: allocate it here, not in a worker's arena
            out.X = None if out.X is None else tuple(t.clone() for t in out.X)
    else:
        outs = [work(c) for c in CIRCUITS]
    for circuit, out in zip(CIRCUITS, outs, strict=True):
        result.spectra[circuit] = out.spectrum
        result.nonfinite[circuit] = out.nan_heads
        if out.svd is not None:
            result.svd[circuit] = out.svd
        if out.X is not None:
            state_X[circuit] = out.X
            result.blocks[circuit] = out.blocks
    if track:
        dev = store_device
        result.state = {
            "version": STATE_VERSION,
            "F": {f: _keep(F, f, old_F, ref_F, dev) for f, F in factors.items()},
            "G": {f: G.to(dev or G.device) for f, G in grams.items()},
            "C": (
                {f: grams[f].to(dev or grams[f].device) for f in factors}
                if is_reference
                else (
                    {f: c.to(dev or c.device) for f, c in cross_ref.items()}
                    if len(cross_ref) == len(factors)
                    else None
                )
            ),
            "X": {c: tuple(t.to(dev or t.device) for t in x) for c, x in state_X.items()},
            "bad": {f: b.to(dev or b.device) for f, b in nonfinite.items()},
        }
    return result


def _cholesky_all(grams: dict[str, Tensor], eps: float) -> dict[str, CholFactor]:
    """``cholesky_factor`` of several factors' Gram matrices ``[h, dh, dh]`` in one batched call
    (a few dozen small ops instead of that many per factor; per matrix the same values)."""
    if len({G.shape[1:] for G in grams.values()}) != 1:
        return {f: cholesky_factor(G, eps) for f, G in grams.items()}
    sizes = [G.shape[0] for G in grams.values()]
    c = cholesky_factor(torch.cat(list(grams.values())), eps)  # [Σh, dh, dh]
    parts = zip(c.R.split(sizes), c.R_inv.split(sizes), c.ok.split(sizes), strict=True)
    return {f: CholFactor(*p) for f, p in zip(grams, parts, strict=True)}


@dataclass
class _CircuitOut:
    """One circuit's outputs in ``layer_pass``."""

    spectrum: Tensor  # [H, r]
    nan_heads: Tensor  # bool [H]
    svd: tuple[Tensor, Tensor, Tensor] | None = None
    X: tuple[Tensor, Tensor, Tensor] | None = None  # (X_A, X_B, ok) kept for next time
    blocks: dict[str, tuple[Tensor, Tensor]] = field(default_factory=dict)


def _circuit_pass(
    circuit: str,
    *,
    factors: dict[str, Tensor],
    index: dict[str, Tensor | None],
    grams: dict[str, Tensor],
    eps: float,
    nonfinite: dict[str, Tensor],
    crosses: dict[str, dict[str, Tensor]],
    olds: dict[str, dict[str, Any] | None],
    track: bool,
    vectors: bool,
) -> _CircuitOut:
    """Spectrum, and when asked the bases' coefficients and drift block sums, of one circuit of
    one layer from its two factors' Gram matrices (``layer_pass``)."""
    fa, fb = _CIRCUIT_FACTORS[circuit]
    chols = _cholesky_all({fa: grams[fa], fb: grams[fb]}, eps)
    ia, ib = index[fa], index[fb]
    Fa, Fb = factors[fa], factors[fb]  # distinct heads; _rows picks query heads lazily
    R_A, R_B = _take(chols[fa].R, ia), _take(chols[fb].R, ib)
    nan_heads = _take(nonfinite[fa], ia) | _take(nonfinite[fb], ib)  # [H]
    ok = _take(chols[fa].ok, ia) & _take(chols[fb].ok, ib) | nan_heads  # [H]
    if Fa.shape[-2] < Fa.shape[-1] or Fb.shape[-2] < Fb.shape[-1]:
        ok = torch.zeros_like(ok)
    bad = (~ok).nonzero(as_tuple=True)[0]  # sync point: which heads take the QR path
    if bad.numel():
        R_A, R_B = R_A.clone(), R_B.clone()
        for R, F, i in ((R_A, Fa, ia), (R_B, Fb, ib)):
            r = qr_factor(_rows(F, i, bad))  # [n_bad, r, dh]
            R[bad] = 0
            R[bad, : r.shape[-2]] = r
    core = R_A @ R_B.mT  # [H, dh, dh] float64
    wd = working_dtype(Fa, Fb)
    if not (track or vectors):
        s = torch.linalg.svdvals(core)  # [H, dh]
        return _CircuitOut(s.masked_fill(nan_heads[:, None], math.nan).to(wd), nan_heads)
    u, s, vh = torch.linalg.svd(core)  # [H, dh, dh], [H, dh], [H, dh, dh]
    out = _CircuitOut(s.masked_fill(nan_heads[:, None], math.nan).to(wd), nan_heads)
    X_A = _take(chols[fa].R_inv, ia) @ u  # [H, dh, r]: U = A X_A on Gram-path heads
    X_B = _take(chols[fb].R_inv, ib) @ vh.mT  # [H, dh, r]: V = B X_B
    if vectors:
        out.svd = _vectors(_take(Fa, ia), _take(Fb, ib), X_A, X_B, s, bad)
    if not track:
        return out
    out.X = (X_A, X_B, ok)
    for which in ("prev", "ref"):
        old, cross = olds[which], crosses[which]
        if old is None or fa not in cross or fb not in cross or circuit not in old["X"]:
            continue
        X_A0, X_B0, ok0 = (t.to(core.device) for t in old["X"][circuit])
        M_U = X_A0.mT @ _take(cross[fa], ia) @ X_A  # U₀ᵀU [H, r, r]
        M_V = X_B0.mT @ _take(cross[fb], ib) @ X_B  # V₀ᵀV
        slow = (~(ok & ok0)).nonzero(as_tuple=True)[0]  # sync point
        if slow.numel():
            M_U, M_V = M_U.clone(), M_V.clone()
            A0 = _rows(old["F"][fa], ia, slow).to(Fa.device)
            B0 = _rows(old["F"][fb], ib, slow).to(Fa.device)
            U0, _, V0 = _explicit_bases(A0, B0)
            U1, _, V1 = _explicit_bases(_rows(Fa, ia, slow), _rows(Fb, ib, slow))
            M_U[slow] = U0.mT @ U1
            M_V[slow] = V0.mT @ V1
        nan = nan_heads[:, None]
        out.blocks[which] = (
            _block_sums(M_U).masked_fill(nan, math.nan),
            _block_sums(M_V).masked_fill(nan, math.nan),
        )
    return out


def _keep(
    F: Tensor,
    f: str,
    old_F: dict[str, Tensor],
    ref_F: dict[str, Tensor],
    device: torch.device | str | None,
) -> Tensor:
    """The copy of factor ``F`` a layer keeps for the next look: written into the previous
    look's copy when that one is not also the reference (no large allocation per look), else
    a new tensor on ``device``."""
    target = torch.device(device) if device is not None else F.device
    old = old_F.get(f)
    if (
        old is not None
        and old is not ref_F.get(f)
        and old.shape == F.shape
        and old.dtype == F.dtype
        and old.device == target
    ):
        return old.copy_(F.detach())
    return F.detach().to(device=target, copy=True)


def _vectors(
    A: Tensor, B: Tensor, X_A: Tensor, X_B: Tensor, s: Tensor, bad: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Explicit ``U, S, V`` (``[H, D, r]``) in the factors' working dtype."""
    wd = working_dtype(A, B)
    U = A.to(wd) @ X_A.to(wd)  # [H, D, r]
    V = B.to(wd) @ X_B.to(wd)
    if bad.numel():
        U1, _, V1 = _explicit_bases(A[bad], B[bad])
        U[bad], V[bad] = U1.to(wd), V1.to(wd)
    return U, s.to(wd), V


@dataclass
class HeadPass:
    """All layers' per-head inputs: spectra ``[L, Hmax, rmax]`` (zero-padded ranks, NaN for
    heads a layer does not have), head counts, drift block sums (same layout) and state."""

    spectra: dict[str, Tensor]
    n_heads: list[int]
    ranks: list[int]
    blocks: dict[str, dict[str, tuple[Tensor, Tensor]]]
    state: list[dict[str, Any]] | None
    svd: dict[str, tuple[Tensor, Tensor, Tensor]]


def _pad_stack(rows: list[Tensor], n_heads: list[int], r_max: int, fill_r: float) -> Tensor:
    """Stack ``[H_l, r_l]`` rows into ``[L, Hmax, rmax]``: ranks padded with ``fill_r``, missing
    heads with NaN."""
    h_max = max(n_heads)
    out = rows[0].new_full((len(rows), h_max, r_max), float("nan"))
    for i, t in enumerate(rows):
        out[i, : t.shape[0], : t.shape[1]] = t
        out[i, : t.shape[0], t.shape[1] :] = fill_r
    return out


def head_pass(
    layers: Iterable[HeadWeights],
    *,
    track: bool = False,
    prev: list[dict[str, Any]] | None = None,
    ref: list[dict[str, Any]] | None = None,
    is_reference: bool = False,
    store_device: torch.device | str | None = None,
    vectors: bool = False,
) -> HeadPass:
    """Run ``layer_pass`` over the layers one at a time, freeing each old state as it goes."""
    spectra: dict[str, list[Tensor]] = {c: [] for c in CIRCUITS}
    blocks: dict[str, dict[str, list[tuple[Tensor, Tensor]]]] = {c: {} for c in CIRCUITS}
    svd: dict[str, list[tuple[Tensor, Tensor, Tensor]]] = {c: [] for c in CIRCUITS}
    n_heads: list[int] = []
    states: list[dict[str, Any]] = []
    free_prev = isinstance(prev, list) and prev is not ref
    workspace = Workspace()
    n_bad = 0
    try:
        for i, hw in enumerate(layers):
            old = prev[i] if isinstance(prev, list) and i < len(prev) else None
            old_ref = ref[i] if isinstance(ref, list) and i < len(ref) else None
            res = layer_pass(
                hw,
                track=track,
                prev=old,
                ref=old_ref,
                is_reference=is_reference,
                store_device=store_device,
                vectors=vectors,
                workspace=workspace,
            )
            if free_prev and i < len(prev):
                prev[i] = None  # type: ignore[call-overload]  # the old layer's copy can go now
            n_heads.append(hw.n_heads)
            n_bad += sum(int(b.sum()) for b in res.nonfinite.values())  # sync point
            for c in CIRCUITS:
                spectra[c].append(res.spectra[c])
                for which, pair in res.blocks.get(c, {}).items():
                    blocks[c].setdefault(which, []).append(pair)
                if vectors:
                    svd[c].append(res.svd[c])
            if res.state is not None:
                states.append(res.state)
    finally:
        workspace.close()
    if n_bad:
        warnings.warn(
            f"dynmon: {n_bad} head circuits hold NaN/Inf weights; their values are NaN",
            RuntimeWarning,
            stacklevel=3,
        )
    if not n_heads:
        return HeadPass({}, [], [], {}, None, {})
    ranks = [int(s.shape[-1]) for s in spectra["QK"]]
    r_max = max(max(int(s.shape[-1]) for s in spectra[c]) for c in CIRCUITS)
    out_blocks: dict[str, dict[str, tuple[Tensor, Tensor]]] = {}
    for c in CIRCUITS:
        for which, pairs in blocks[c].items():
            if len(pairs) != len(n_heads):
                continue  # some layer had no earlier state (shape changed): skip this look
            b_U = _pad_stack([p[0] for p in pairs], n_heads, r_max, math.nan)
            b_V = _pad_stack([p[1] for p in pairs], n_heads, r_max, math.nan)
            out_blocks.setdefault(c, {})[which] = (b_U, b_V)
    stacked_svd = {}
    if vectors:
        for c in CIRCUITS:
            shapes = {tuple(u.shape) for u, _, _ in svd[c]}
            if len(shapes) == 1:
                stacked_svd[c] = tuple(torch.stack(t) for t in zip(*svd[c], strict=True))
    return HeadPass(
        spectra={c: _pad_stack(spectra[c], n_heads, r_max, 0.0) for c in CIRCUITS},
        n_heads=n_heads,
        ranks=ranks,
        blocks=out_blocks,
        state=states if track else None,
        svd=stacked_svd,
    )


def drift_from_blocks(b_U: Tensor, b_V: Tensor, k: int, ranks: list[int]) -> Tensor:
    """Subspace distance of the top-k bases, ``[L, H]``: the mean over the read (U) and write (V)
    sides of ``√((k − ‖U₀ᵀU‖²_F)/k)`` for k-column orthonormal bases
    (docs/metrics.md#subspace_dist), with ``k`` capped at each layer's rank ``ranks[l]``."""
    k_eff = torch.tensor([min(k, r) for r in ranks], dtype=b_U.dtype, device=b_U.device)
    idx = (k_eff.long() - 1)[:, None, None].expand(-1, b_U.shape[1], 1)  # [L, H, 1]

    def side(b: Tensor) -> Tensor:
        top = b.gather(-1, idx)[..., 0]  # [L, H]
        return ((k_eff[:, None] - top) / k_eff[:, None]).clamp(0.0, 1.0).sqrt()

    return 0.5 * (side(b_U) + side(b_V))
