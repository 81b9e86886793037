"""Attention patterns of every attention layer, from one no-grad forward of the model itself.

Each layer's pattern ``[B, H, T, T]`` comes from the model's own computation where it exposes it:

- **TransformerLens** bridges: the ``hook_pattern`` hook point of each ``AttentionBridge``;
- **Hugging Face** attention modules: switched to eager attention (``set_attn_implementation``,
  restored afterwards) and run with ``output_attentions=True``; the weights each module returns;
- **position-free modules** (``nn.MultiheadAttention``, nanoGPT's ``CausalSelfAttention``):
  recomputed as ``softmax(q kᵀ/√dh + mask)`` from ``HeadWeights`` and the module's captured
  inputs (nanoGPT's flash path never forms the pattern). The recomputed layer output is checked
  against the module's real output, so a module that adds positions inside (rotary, ALiBi) or
  masks we do not see is refused with an error instead of being scored wrongly.

Nothing about training changes: the forward runs under ``no_grad`` in eval mode (every module's
``training`` flag restored), on the unwrapped model (no DDP collective, no compiled graph), inside
a forked RNG, and every hook and attention implementation is restored, also on error.
"""

from __future__ import annotations

import contextlib
import inspect
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from dynmon.adapters import nanogpt, tl, torch_mha
from dynmon.adapters.base import HeadWeights
from dynmon.adapters.unwrap import unwrap

# relative error of a recomputed layer output above which recomputation is refused (float32)
RECOMPUTE_RTOL = 1e-3
Forward = Callable[[nn.Module, Tensor], Any]


class PatternError(RuntimeError):
    """The patterns of some attention layer cannot be taken from the model."""


def source(module: nn.Module) -> str:
    """Where a layer's pattern comes from: ``"hook_pattern"``, ``"hf_eager"`` or ``"recompute"``."""
    if tl.match(module):
        return "hook_pattern"
    if type(module).__module__.startswith("transformers."):
        return "hf_eager"
    if torch_mha.match(module) or nanogpt.match(module):
        return "recompute"
    raise PatternError(
        f"dynmon cannot read the attention pattern of {type(module).__name__}: it is neither a "
        "TransformerLens bridge, a Hugging Face module (eager attention) nor a position-free "
        "module it can recompute (nn.MultiheadAttention, nanoGPT). Pass "
        "options={'roles_patterns': fn} where fn(model, tokens) returns (output, patterns "
        "[L, B, H, T, T]), or leave head_roles off for this model"
    )


def default_forward(model: nn.Module, tokens: Tensor) -> Any:
    """``model(tokens)``; Hugging Face models get ``input_ids=`` and ``output_attentions=True``."""
    if _is_hf_model(model):
        return model(input_ids=tokens, output_attentions=True)
    return model(tokens)


def logits_of(output: Any, vocab: int, tokens: Tensor) -> Tensor | None:
    """The ``[B, T, V]`` logits inside a model's output (tensor, ``.logits`` or tuple), or None."""
    cands = [output, getattr(output, "logits", None)]
    if isinstance(output, (tuple, list)):
        cands += list(output)
    for c in cands:
        if isinstance(c, Tensor) and tuple(c.shape) == (*tokens.shape, vocab):
            return c
    return None


def forward_with_patterns(
    model: nn.Module,
    tokens: Tensor,
    heads: list[HeadWeights],
    forward: Forward | None = None,
) -> tuple[Any, Tensor]:
    """The model's output and every layer's pattern ``[L, B, H, T, T]``, from one forward.

    ``heads`` are ``dynmon.heads(model)`` (names index the unwrapped model); ``forward(model,
    tokens)`` runs the model (default ``default_forward``).
    """
    if not heads:
        raise PatternError("no attention layers to read patterns from (heads is empty)")
    root = unwrap(model)
    modules = [root.get_submodule(h.name) for h in heads]
    kinds = [source(m) for m in modules]
    store: dict[int, Tensor] = {}
    inputs: dict[int, dict[str, Any]] = {}
    outputs: dict[int, Any] = {}
    run = forward or default_forward
    with contextlib.ExitStack() as stack:
        stack.enter_context(_eval_mode(root))
        stack.enter_context(torch.no_grad())
        stack.enter_context(_forked_rng(root))
        if "hf_eager" in kinds:
            stack.enter_context(eager_attention(root))
        for i, (m, kind) in enumerate(zip(modules, kinds, strict=True)):
            stack.enter_context(_hooks(i, m, kind, store, inputs, outputs))
        out = run(root, tokens)
    for i, (hw, kind) in enumerate(zip(heads, kinds, strict=True)):
        if kind == "recompute" and i in inputs:
            store[i] = _recompute(hw, modules[i], inputs[i], outputs[i])
    missing = [heads[i].name for i in range(len(heads)) if i not in store]
    if missing:
        raise PatternError(
            f"attention layers {missing} gave no pattern in the forward (never called, e.g. "
            "cross-attention without encoder states, or their weights were not returned)"
        )
    shapes = {tuple(p.shape) for p in store.values()}
    if len(shapes) != 1:
        raise PatternError(f"attention layers gave patterns of different shapes {sorted(shapes)}")
    return out, torch.stack([store[i] for i in range(len(heads))])  # [L, B, H, T, T]


# -- the model's own paths ----------------------------------------------------------------------


def _is_hf_model(module: nn.Module) -> bool:
    return any(
        c.__name__ == "PreTrainedModel" and c.__module__.startswith("transformers.")
        for c in type(module).__mro__
    )


@contextlib.contextmanager
def eager_attention(root: nn.Module) -> Iterator[None]:
    """Every Hugging Face model inside ``root`` on eager attention, restored afterwards."""
    changed: list[tuple[nn.Module, Any]] = []
    try:
        for m in root.modules():
            if not _is_hf_model(m) or any(m in set(c.modules()) for c, _ in changed):
                continue
            before = m.config._attn_implementation
            if before != "eager":
                m.set_attn_implementation("eager")
                changed.append((m, before))
        yield
    finally:
        for m, before in reversed(changed):
            m.set_attn_implementation(before)


@contextlib.contextmanager
def _eval_mode(root: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the probe forward; every module's own flag restored."""
    modes = [(m, m.training) for m in root.modules()]
    try:
        root.eval()
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _forked_rng(root: nn.Module) -> contextlib.AbstractContextManager:
    """Keep the global (and CUDA) RNG untouched whatever the forward draws."""
    cuda = sorted(
        {
            p.device.index if p.device.index is not None else torch.cuda.current_device()
            for p in root.parameters()
            if p.device.type == "cuda"
        }
    )
    return torch.random.fork_rng(devices=cuda)


@contextlib.contextmanager
def _hooks(
    i: int,
    module: nn.Module,
    kind: str,
    store: dict[int, Tensor],
    inputs: dict[int, dict[str, Any]],
    outputs: dict[int, Any],
) -> Iterator[None]:
    """Register the hooks that capture layer ``i``'s pattern (or its inputs); remove them after."""
    handles = []
    if kind == "hook_pattern":

        def keep(_m: nn.Module, _a: object, out: Tensor) -> None:
            store[i] = out.detach()  # [B, H, T, T]

        handles.append(module.hook_pattern.register_forward_hook(keep))
    elif kind == "hf_eager":

        def keep_hf(m: nn.Module, _a: object, out: Any) -> None:
            w = out[1] if isinstance(out, (tuple, list)) and len(out) > 1 else None
            if not isinstance(w, Tensor):
                raise PatternError(
                    f"{type(m).__name__} returned no attention weights under eager attention"
                )
            store[i] = w.detach()  # [B, H, T, T]

        handles.append(module.register_forward_hook(keep_hf))
    else:

        def keep_in(m: nn.Module, args: tuple, kwargs: dict) -> None:
            bound = inspect.signature(m.forward).bind(*args, **kwargs)
            inputs[i] = dict(bound.arguments)

        def keep_out(_m: nn.Module, _a: object, out: Any) -> None:
            outputs[i] = out[0] if isinstance(out, (tuple, list)) else out

        handles.append(module.register_forward_pre_hook(keep_in, with_kwargs=True))
        handles.append(module.register_forward_hook(keep_out))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


# -- recomputation for position-free modules ------------------------------------------------------


def _project(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """``x @ W[h] + b[h]``: ``[B, T, D]`` -> ``[B, H, T, dh]``."""
    y = torch.einsum("btd,hde->bhte", x, W.to(x.dtype))  # [B, H, T, dh]
    return y if b is None else y + b.to(x.dtype)[None, :, None, :]


def recompute_pattern(
    hw: HeadWeights, x: Tensor, x_kv: Tensor | None = None, mask: Tensor | None = None
) -> Tensor:
    """``softmax(q kᵀ/√dh + mask)`` ``[B, H, T, S]``; ``mask`` additive, broadcast to that shape."""
    x_kv = x if x_kv is None else x_kv
    q = _project(x, hw.W_Q, hw.b_Q)  # [B, H, T, dh]
    k = _project(x_kv, hw.W_K, hw.b_K)  # [B, H, S, dh]
    scores = q @ k.transpose(-1, -2) / math.sqrt(hw.d_head)  # [B, H, T, S]
    if mask is not None:
        scores = scores + mask
    return scores.softmax(-1)


def _additive(mask: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """A boolean mask (True = not allowed) as ``−inf`` / 0; a float mask as it is."""
    if mask is None:
        return None
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            mask, float("-inf")
        )
    return mask.to(dtype)


def _causal(T: int, S: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    future = torch.ones(T, S, dtype=torch.bool, device=device).triu(S - T + 1)  # [T, S]
    return _additive(future, dtype)  # type: ignore[return-value]


def _mha_inputs(m: nn.MultiheadAttention, a: dict[str, Any]) -> tuple[Tensor, Tensor, Tensor, Any]:
    """Query, key, value ``[B, ., D]`` and the additive mask ``[B, H, T, S]`` of an MHA call."""
    q, k, v = a["query"], a["key"], a["value"]
    if q.dim() == 3 and not m.batch_first:
        q, k, v = (t.transpose(0, 1) for t in (q, k, v))  # [T, B, D] -> [B, T, D]
    if q.dim() == 2:
        q, k, v = q[None], k[None], v[None]  # unbatched [T, D] -> [1, T, D]
    B, T, S, H = q.shape[0], q.shape[1], k.shape[1], m.num_heads
    mask = _additive(a.get("attn_mask"), q.dtype)
    if mask is None and a.get("is_causal", False):
        mask = _causal(T, S, q.dtype, q.device)
    if mask is not None:
        mask = mask.reshape(-1, H, T, S) if mask.dim() == 3 else mask  # [B, H, T, S] or [T, S]
    pad = _additive(a.get("key_padding_mask"), q.dtype)
    if pad is not None:
        pad = pad.reshape(B, 1, 1, S)
        mask = pad if mask is None else mask + pad
    return q, k, v, mask


def _recompute(hw: HeadWeights, module: nn.Module, args: dict[str, Any], out: Any) -> Tensor:
    """The pattern of a position-free module from its inputs, checked against its real output."""
    if isinstance(module, nn.MultiheadAttention):
        if module.bias_k is not None or module.add_zero_attn:
            raise PatternError(
                "nn.MultiheadAttention with add_bias_kv or add_zero_attn has attention slots "
                "that are no token; its pattern cannot be recomputed"
            )
        x, x_kv, x_v, mask = _mha_inputs(module, args)
    else:  # nanoGPT: causal self-attention on x
        x = args["x"] if "x" in args else next(iter(args.values()))
        x_kv = x_v = x
        mask = _causal(x.shape[1], x.shape[1], x.dtype, x.device)
    p = recompute_pattern(hw, x, x_kv, mask)  # [B, H, T, S]
    z = p @ _project(x_v, hw.W_V, hw.b_V)  # [B, H, T, dh]
    y = torch.einsum("bhte,hed->btd", z, hw.W_O.to(z.dtype))  # [B, T, D]
    y = y if hw.b_O is None else y + hw.b_O.to(y.dtype)
    real = out
    if isinstance(module, nn.MultiheadAttention) and real.dim() == 3 and not module.batch_first:
        real = real.transpose(0, 1)  # [T, B, D] -> [B, T, D]
    real = real.reshape(y.shape)
    err = float((y - real).norm() / real.norm().clamp_min(1e-30))  # sync point
    if not err <= RECOMPUTE_RTOL:
        raise PatternError(
            f"recomputing {type(module).__name__}'s attention from its weights does not reproduce "
            f"its output (relative error {err:.2g}): it likely applies positions inside (rotary, "
            "ALiBi) or a mask dynmon does not see. dynmon never scores such a model by a "
            "recomputation that ignores positions; pass options={'roles_patterns': fn}"
        )
    return p
