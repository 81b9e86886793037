"""A language model's vocabulary, context length, embedding ``W_E`` and unembedding ``W_U``.

Read from what the model declares: TransformerLens (``cfg.d_vocab``, ``cfg.n_ctx``, ``W_E``,
``W_U``), Hugging Face (``config.vocab_size``, ``n_positions`` / ``max_position_embeddings``,
``get_input_embeddings`` / ``get_output_embeddings``), nanoGPT (``config.vocab_size``,
``config.block_size``); otherwise the first ``nn.Embedding`` gives the vocabulary and the last
``nn.Linear`` with that many outputs the unembedding.
"""

from __future__ import annotations

from torch import Tensor, nn

from dynmon.adapters.unwrap import unwrap

_VOCAB = ("vocab_size", "d_vocab", "n_vocab")
_CONTEXT = ("n_positions", "max_position_embeddings", "n_ctx", "block_size", "seq_len")


def _config_int(model: nn.Module, names: tuple[str, ...]) -> int | None:
    for holder in (getattr(model, "cfg", None), getattr(model, "config", None), model):
        for name in names:
            v = getattr(holder, name, None)
            if isinstance(v, int) and not isinstance(v, bool) and v > 0:
                return v
    return None


def vocab_size(model: nn.Module) -> int | None:
    """Size of the token vocabulary, or None when the model does not tell."""
    root = unwrap(model)
    v = _config_int(root, _VOCAB)
    if v is None:
        emb = next((m for m in root.modules() if isinstance(m, nn.Embedding)), None)
        v = None if emb is None else emb.num_embeddings
    return v


def context_length(model: nn.Module) -> int | None:
    """Longest sequence the model accepts (learned positions), or None when unbounded/unknown."""
    return _config_int(unwrap(model), _CONTEXT)


def embed_unembed(model: nn.Module, d_model: int) -> tuple[Tensor, Tensor] | None:
    """``W_E [V, D]`` and ``W_U [D, V]`` (detached), or None when they cannot be found."""
    root = unwrap(model)
    V = vocab_size(root)
    if V is None:
        return None
    W_E = W_U = None
    if isinstance(getattr(root, "W_E", None), Tensor) and isinstance(
        getattr(root, "W_U", None), Tensor
    ):
        W_E, W_U = root.W_E, root.W_U  # TransformerLens: [V, D], [D, V]
    elif hasattr(root, "get_input_embeddings") and hasattr(root, "get_output_embeddings"):
        inp, outp = root.get_input_embeddings(), root.get_output_embeddings()
        if inp is not None and outp is not None:
            W_E, W_U = inp.weight, outp.weight.T  # [V, D], Linear [V, D] -> [D, V]
    if W_E is None:
        emb = next(
            (m for m in root.modules() if isinstance(m, nn.Embedding) and m.num_embeddings == V),
            None,
        )
        heads = [m for m in root.modules() if isinstance(m, nn.Linear) and m.out_features == V]
        if emb is None or not heads:
            return None
        W_E, W_U = emb.weight, heads[-1].weight.T  # [V, D], [D, V]
    if tuple(W_E.shape) != (V, d_model) or tuple(W_U.shape) != (d_model, V):
        return None
    return W_E.detach(), W_U.detach()
