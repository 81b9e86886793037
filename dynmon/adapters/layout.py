"""Turn the weight layouts that modules store into the per-head layout ``HeadWeights`` uses."""

from __future__ import annotations

from torch import Tensor

from dynmon.adapters.base import HeadWeights


def head_weights(
    W_Q: Tensor,
    W_K: Tensor,
    W_V: Tensor,
    W_O: Tensor,
    b_Q: Tensor | None = None,
    b_K: Tensor | None = None,
    b_V: Tensor | None = None,
    b_O: Tensor | None = None,
    *,
    n_kv_heads: int | None = None,
) -> HeadWeights:
    """A HeadWeights without name and layer, for an adapter's ``extract`` (``heads`` fills both)."""
    return HeadWeights(
        name="",
        layer=-1,
        W_Q=W_Q,
        W_K=W_K,
        W_V=W_V,
        W_O=W_O,
        b_Q=b_Q,
        b_K=b_K,
        b_V=b_V,
        b_O=b_O,
        n_kv_heads=n_kv_heads,
    )


def linear_in_heads(weight: Tensor, n_heads: int) -> Tensor:
    """``[H*dh, D]`` (``nn.Linear`` rows, head-major) to ``[H, D, dh]``, as a view."""
    d_in = weight.shape[1]
    return weight.reshape(n_heads, -1, d_in).transpose(1, 2)  # [H, dh, D] -> [H, D, dh]


def conv1d_in_heads(weight: Tensor, n_heads: int) -> Tensor:
    """``[D, H*dh]`` (``Conv1D`` columns, head-major) to ``[H, D, dh]``, as a view."""
    d_in = weight.shape[0]
    return weight.reshape(d_in, n_heads, -1).permute(1, 0, 2)  # [D, H, dh] -> [H, D, dh]


def linear_out_heads(weight: Tensor, n_heads: int) -> Tensor:
    """``[D, H*dh]`` (``nn.Linear`` output projection) to ``[H, dh, D]``, as a view."""
    d_out = weight.shape[0]
    return weight.T.reshape(n_heads, -1, d_out)  # [H*dh, D] -> [H, dh, D]


def conv1d_out_heads(weight: Tensor, n_heads: int) -> Tensor:
    """``[H*dh, D]`` (``Conv1D`` output projection) to ``[H, dh, D]``, as a view."""
    d_out = weight.shape[1]
    return weight.reshape(n_heads, -1, d_out)  # [H, dh, D]


def bias_heads(bias: Tensor | None, n_heads: int) -> Tensor | None:
    """``[H*dh]`` to ``[H, dh]`` (None stays None), as a view."""
    return None if bias is None else bias.reshape(n_heads, -1)  # [H, dh]


def expand_kv(t: Tensor | None, n_heads: int) -> Tensor | None:
    """Repeat each of the ``H_kv`` key/value heads for its ``H / H_kv`` query heads (GQA order)."""
    if t is None or t.shape[0] == n_heads:
        return t
    n_kv = t.shape[0]
    if n_heads % n_kv:
        raise ValueError(f"{n_heads} query heads cannot share {n_kv} key/value heads evenly")
    return t.repeat_interleave(n_heads // n_kv, dim=0)  # [H_kv, ...] -> [H, ...]
