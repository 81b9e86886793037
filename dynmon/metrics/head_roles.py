"""The ``head_roles`` metric: every head's role scores on a fixed repeated-segment probe.

At each look, one no-grad forward of the model on the probe (``dynmon.adapters.patterns``: the
model's own patterns, or a checked recomputation for position-free modules) gives per head the
previous-token, induction, duplicate-token score, attention entropy and sink mass
(``dynmon.metrics.roles``), the copying score of each OV circuit where the embedding and
unembedding are found, and the in-context score (loss on repeated minus first-occurrence tokens)
where the output holds full logits. Formation events come from ``dynmon.role_events``.

The probe is built once, at the first look, from the model's vocabulary and context length
(``roles_batch`` x ``roles_seq_len`` random tokens, default 8 x min(context, 128), a segment of a
quarter of the length written twice), drawn from the Monitor's private generator, and kept in the
metric's snapshot (so it survives ``state_dict``); ``options={"roles_probe": probe}`` passes one.

Options: ``roles_probe``, ``roles_batch``, ``roles_seq_len``, ``roles_segment_len``;
``roles_forward`` (``fn(model, tokens) -> output``), ``roles_patterns`` (``fn(model, tokens) ->
(output, patterns [L, B, H, T, T])`` for models dynmon cannot read); ``roles_events`` (default
True), ``roles_threshold`` (0.4), ``roles_hold`` (2 looks).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from dynmon.adapters.base import HeadWeights
from dynmon.adapters.discover import NoAttentionFound, heads
from dynmon.adapters.embeddings import context_length, embed_unembed, vocab_size
from dynmon.adapters.patterns import forward_with_patterns, logits_of
from dynmon.keys import head_scalars, key
from dynmon.metrics import roles
from dynmon.metrics.spec import LookContext, MetricSpec, Output
from dynmon.role_events import RoleEventConfig, RoleEvents

PATTERN_SCORES = (
    "prev_token_score",
    "induction_score",
    "duplicate_token_score",
    "attn_entropy",
    "sink_mass",
)
LOSSES = ("loss", "loss_first", "loss_repeated", "loss_filler", "icl_score")
DEFAULT_BATCH, MAX_SEQ_LEN = 8, 128


def role_scores(
    model: nn.Module,
    probe: roles.RepeatProbe,
    heads: list[HeadWeights],
    *,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
    patterns_fn: Callable[[nn.Module, Tensor], tuple[Any, Tensor]] | None = None,
) -> dict[str, Tensor]:
    """Per-head ``[L, H]`` scores (``PATTERN_SCORES``, ``copying_score`` when found) and the probe
    losses (``LOSSES``, when the output holds full logits) of ``model`` on ``probe``."""
    device = next(model.parameters()).device
    tokens = probe.tokens.to(device)
    probe = probe.to(device)
    if patterns_fn is not None:
        with torch.no_grad():
            output, patterns = patterns_fn(model, tokens)
    else:
        output, patterns = forward_with_patterns(model, tokens, heads, forward)
    patterns = patterns.float()  # [L, B, H, T, T]
    s: dict[str, Tensor] = {
        "prev_token_score": roles.prev_token_score(patterns),
        "induction_score": roles.induction_score(patterns, probe),
        "duplicate_token_score": roles.duplicate_token_score(patterns, probe),
        "attn_entropy": roles.attention_entropy(patterns),
        "sink_mass": roles.sink_mass(patterns),
    }
    V = vocab_size(model)
    logits = None if V is None else logits_of(output, V, tokens)
    if logits is not None:
        s.update(roles.split_losses(roles.token_losses(logits, tokens), probe))
    E = embed_unembed(model, heads[0].d_model) if heads else None
    if E is not None:
        W_V = torch.stack([h.W_V for h in heads])  # [L, H, D, dh]
        W_O = torch.stack([h.W_O for h in heads])  # [L, H, dh, D]
        s["copying_score"] = roles.copying_score(*E, W_V, W_O)  # [L, H]
    return s


def default_probe(model: nn.Module, options: Mapping[str, Any], g: torch.Generator):
    """The probe the metric builds once: random tokens with one segment written twice."""
    V = vocab_size(model)
    if V is None:
        raise ValueError(
            "head_roles cannot tell the model's vocabulary size; pass "
            "options={'roles_probe': dynmon.metrics.roles.make_probe(vocab, seq_len, batch, g)}"
        )
    ctx_len = context_length(model)
    T = int(options.get("roles_seq_len", min(ctx_len or MAX_SEQ_LEN, MAX_SEQ_LEN)))
    if ctx_len is not None and T > ctx_len:
        raise ValueError(f"roles_seq_len={T} exceeds the model's context length {ctx_len}")
    seg = options.get("roles_segment_len")
    return roles.make_probe(
        V,
        T,
        int(options.get("roles_batch", DEFAULT_BATCH)),
        g,
        segment_len=None if seg is None else int(seg),
    )


def _probe(ctx: LookContext) -> roles.RepeatProbe:
    given = ctx.options.get("roles_probe")
    if given is not None:
        return roles.check_probe(given)
    snap = ctx.snapshot or {}
    if "probe" in snap:
        return roles.RepeatProbe.from_dict(snap["probe"])
    g = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(0)
    return default_probe(ctx.model, ctx.options, g)


def outputs(s: Mapping[str, Tensor], out: Output) -> Output:
    """Keys of the scores: per head ``dynmon/<score>/L1.H3.attn`` (copying ``.OV``) with layer and
    overall means, the best head of a role ``dynmon/<score>_max``, ``[L, H]`` heatmap arrays, and
    the probe losses ``dynmon/icl_score``, ``dynmon/icl_loss_<kind>``."""
    for name in (*PATTERN_SCORES, "copying_score"):
        if name not in s:
            continue
        target = "OV" if name == "copying_score" else "attn"
        out.scalars.update(head_scalars(name, s[name], target))
        if name not in ("attn_entropy", "sink_mass"):  # the best head of a role
            out.scalars[key(f"{name}_max")] = s[name].max()
        out.arrays[key(name, target)] = s[name]
    for name in LOSSES:
        if name in s:
            out.scalars[key(name if name == "icl_score" else f"icl_{name}")] = s[name]
    return out


def compute(ctx: LookContext) -> Output:
    """One ``head_roles`` look (see the module docstring)."""
    opts = ctx.options
    probe = _probe(ctx)
    patterns_fn = opts.get("roles_patterns")
    hw = ctx.heads  # the Monitor gathers them; a bare LookContext may not
    if not hw:
        try:
            hw = heads(ctx.model)
        except NoAttentionFound:
            if patterns_fn is None:
                raise
            hw = []  # the user's patterns need no heads; the copying score does
    s = role_scores(
        ctx.model, probe, hw, forward=opts.get("roles_forward"), patterns_fn=patterns_fn
    )
    snap = dict(ctx.snapshot or {})
    if opts.get("roles_probe") is None:
        snap["probe"] = probe.as_dict()
    out = outputs(s, Output())
    if opts.get("roles_events", True):
        if "events" in snap:
            det = RoleEvents.from_state(snap["events"])
        else:
            det = RoleEvents(
                RoleEventConfig(
                    threshold=float(opts.get("roles_threshold", 0.4)),
                    hold=int(opts.get("roles_hold", 2)),
                )
            )
        scores = {r: s[r].double().cpu().tolist() for r in det.config.roles}  # sync point
        out.events = det.update(ctx.step, scores)
        snap["events"] = det.state_dict()
    out.snapshot = snap
    return out


HEAD_ROLES = MetricSpec(
    "head_roles",
    compute,
    frozenset({"heads"}),
    "opt-in",
    "previous-token, induction, duplicate-token, copying score, attention entropy and sink mass"
    " per head on a fixed repeated-segment probe, the in-context score, formation events",
)
