"""Checkpoints on disk: find them, read their state dicts safely, load them into a model.

Checkpoints are found under ``CKPT_DIR`` (recursively): files ending in ``.pt``, ``.pth``,
``.bin``, ``.ckpt`` or ``.safetensors`` whose path relative to ``CKPT_DIR`` holds a number; the
*last* number in that path (extension dropped) is the training step: ``step_000100.pt`` -> 100,
``checkpoint-100/pytorch_model.bin`` -> 100, ``epoch=3-step=500.ckpt`` -> 500. Trainer state
saved beside the weights (``optimizer*``, ``scheduler*``, ``rng_state*``, ``scaler*``,
``training_args*``, ``trainer_state*``) is skipped; two weight files for one step are an error.

Each file is read with ``torch.load(weights_only=True, map_location="cpu")`` (``.safetensors``
with ``safetensors``): a state dict, or a dict holding one under ``state_dict`` (Lightning),
``model_state_dict`` or ``model``. Anything needing arbitrary unpickling is refused.

A state dict needs a model to load into (:func:`model_builder`), given by one of:

* ``model="module:factory"`` or ``"path/to/file.py:factory"``: a callable with no arguments
  returning the ``nn.Module`` (weights are then overwritten by each checkpoint);
* ``CKPT_DIR/config.json`` holding TransformerLens ``TransformerBridgeConfig`` keyword arguments
  (:func:`save_tl_config` writes it; the model is booted natively, offline), or a Hugging Face
  config with ``model_type`` (built with ``AutoModelForCausalLM.from_config``); without one,
  the ``config.json`` beside the first checkpoint (a HF Trainer's ``checkpoint-N/``).

``dynmon analyze`` (``dynmon/analyze.py``) drives a Monitor over what this module reads.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")
NOT_WEIGHTS = ("optimizer", "scheduler", "rng_state", "scaler", "training_args", "trainer_state")
STATE_KEYS = ("state_dict", "model_state_dict", "model")  # where wrapped state dicts live
STRIP_PREFIXES = ("model.", "module.", "_orig_mod.")  # Lightning, DDP, torch.compile
MODEL_CONFIG = "config.json"


class CheckpointError(ValueError):
    """A checkpoint directory or file dynmon cannot analyze; the message says what to do."""


@dataclass(frozen=True)
class Checkpoint:
    """One saved model: its training step and file."""

    step: int
    path: Path


# -- finding and reading checkpoints -------------------------------------------------------------
def find_checkpoints(ckpt_dir: str | Path) -> list[Checkpoint]:
    """Weight files under ``ckpt_dir`` with their step (the last number in the relative path),
    sorted by step."""
    root = Path(ckpt_dir)
    if not root.is_dir():
        raise CheckpointError(f"{root} is not a directory; pass the folder holding the checkpoints")
    by_step: dict[int, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in SUFFIXES or path.name.startswith(NOT_WEIGHTS):
            continue
        rel = path.relative_to(root).with_suffix("").as_posix()
        numbers = re.findall(r"\d+", rel)
        if not numbers:
            continue
        if re.search(r"\d+-of-\d+", path.name):
            raise CheckpointError(
                f"{path} is one shard of a sharded checkpoint; dynmon analyze reads one file per "
                "step: merge the shards (e.g. save_pretrained(..., max_shard_size='100GB'))"
            )
        by_step.setdefault(int(numbers[-1]), []).append(path)
    clash = {s: p for s, p in by_step.items() if len(p) > 1}
    if clash:
        step, paths = min(clash.items())
        raise CheckpointError(
            f"several weight files for step {step}: {[str(p) for p in paths]}; keep one per step "
            "in CKPT_DIR (the step is the last number in each file's path)"
        )
    if not by_step:
        raise CheckpointError(
            f"no checkpoints in {root}: expected files ending in {', '.join(SUFFIXES)} with the "
            "step in their path, e.g. step_000100.pt or checkpoint-100/model.safetensors"
        )
    return [Checkpoint(s, p[0]) for s, p in sorted(by_step.items())]


def load_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A checkpoint's state dict, read without arbitrary unpickling (``weights_only=True``)."""
    path = Path(path)
    what = f"{path} (a link to {path.resolve()})" if path.is_symlink() else str(path)
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{path} is a .safetensors file: pip install safetensors to read it"
            ) from None
        try:
            return _unwrap_state(load_file(str(path), device="cpu"), path)
        except CheckpointError:
            raise
        except Exception as exc:  # SafetensorError, OSError...: a cut or foreign file
            raise CheckpointError(
                f"{what} is not a readable safetensors file ({_reason(exc)}); it may be cut short "
                "or not a checkpoint: save it again, or move it out of CKPT_DIR"
            ) from None
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        reason = _reason(exc)
        if "weights only" not in str(exc).lower() or not _torch_magic(path):  # damaged/foreign
            raise CheckpointError(
                f"{what} is not a readable PyTorch checkpoint ({reason}); it may be cut short, "
                "empty or another kind of file: save it again, or move it out of CKPT_DIR"
            ) from None
        raise CheckpointError(
            f"{path} cannot be read with torch.load(weights_only=True): {reason}. It holds Python "
            "objects other than tensors, which dynmon does not unpickle (unpickling can run "
            "code). Save only the weights, torch.save(model.state_dict(), path), or, if you "
            "trust the file, load it yourself and re-save its state_dict."
        ) from None
    except Exception as exc:  # EOFError (empty), OSError, IndexError...: not a checkpoint
        raise CheckpointError(
            f"{what} is not a readable PyTorch checkpoint ({_reason(exc)}); it may be cut short, "
            "empty or another kind of file: save it again, or move it out of CKPT_DIR"
        ) from None
    return _unwrap_state(obj, path)


def _torch_magic(path: Path) -> bool:
    """Whether the file starts like ``torch.save`` output: a zip archive or a pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return head == b"PK" or head[:1] == b"\x80"


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message, with its type."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _is_state(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and bool(obj) and any(isinstance(v, Tensor) for v in obj.values())
    )


def _unwrap_state(obj: Any, path: Path) -> dict[str, Tensor]:
    """The tensors of a state dict, or of one wrapped under ``STATE_KEYS``."""
    if isinstance(obj, Mapping):
        for k in STATE_KEYS:
            if _is_state(obj.get(k)):
                obj = obj[k]
                break
    if not _is_state(obj):
        what = (
            f"a dict with keys {sorted(map(str, obj))[:10]}"
            if isinstance(obj, Mapping)
            else (f"a {type(obj).__name__}")
        )
        raise CheckpointError(
            f"{path} holds {what}, not a state dict of tensors; save model.state_dict() (or a "
            f"dict with it under one of {list(STATE_KEYS)})"
        )
    return {str(k): v for k, v in obj.items() if isinstance(v, Tensor)}


def load_into(model: nn.Module, state: Mapping[str, Tensor], path: str | Path = "") -> None:
    """Copy ``state`` into ``model``; a common ``model.``/``module.`` prefix is dropped, weights
    tied to loaded ones may be absent, anything else missing or unexpected is an error."""
    own = model.state_dict(keep_vars=True)
    for prefix in ("", *STRIP_PREFIXES):
        if all(k.startswith(prefix) for k in state):
            cand = {k[len(prefix) :]: v for k, v in state.items()}
            if set(cand) & set(own):
                state = cand
                break
    loaded = {own[k].data_ptr() for k in state if k in own}
    missing = [k for k in own if k not in state and own[k].data_ptr() not in loaded]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: the state dict does not fit the model {type(model).__name__}: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
            f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; pass the model class that "
            "saved it with --model module:factory"
        )
    model.load_state_dict(state, strict=False)


# -- the model -----------------------------------------------------------------------------------
def load_factory(spec: str) -> Callable[[], nn.Module]:
    """``"pkg.module:factory"`` or ``"path/file.py:factory"`` -> the callable."""
    mod_name, sep, attr = spec.rpartition(":")
    if not sep or not mod_name or not attr:
        raise CheckpointError(
            f"--model {spec!r}: expected module:factory or path/to/file.py:factory, a callable "
            "with no arguments that returns the nn.Module the checkpoints were saved from"
        )
    if mod_name.endswith(".py"):
        file = Path(mod_name)
        if not file.is_file():
            raise CheckpointError(f"--model {spec!r}: no file {file}")
        mod_spec = importlib.util.spec_from_file_location(f"_dynmon_model_{file.stem}", file)
        module = importlib.util.module_from_spec(mod_spec)  # type: ignore[arg-type]
        mod_spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        try:
            module = importlib.import_module(mod_name)
        except ImportError as exc:
            raise CheckpointError(f"--model {spec!r}: cannot import {mod_name!r}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise CheckpointError(f"--model {spec!r}: {mod_name} has no callable {attr!r}")
    return fn


def save_tl_config(cfg: Any, ckpt_dir: str | Path) -> Path:
    """Write a ``TransformerBridgeConfig``'s non-default fields to ``ckpt_dir/config.json`` so
    ``analyze`` can boot the same TransformerLens model."""
    fields = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        default = f.default if f.default is not dataclasses.MISSING else dataclasses.MISSING
        if f.name in ("device", "n_params") or value == default:
            continue
        if isinstance(value, torch.dtype):
            value = str(value).removeprefix("torch.")
        json.dumps(value)  # fails loudly on a field JSON cannot hold
        fields[f.name] = value
    path = Path(ckpt_dir) / MODEL_CONFIG
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fields, indent=2, sort_keys=True))
    return path


def _tl_model(fields: dict[str, Any]) -> nn.Module:
    from transformer_lens.config import TransformerBridgeConfig
    from transformer_lens.model_bridge import TransformerBridge

    fields = dict(fields, device="cpu")
    if isinstance(fields.get("dtype"), str):
        fields["dtype"] = getattr(torch, fields["dtype"])
    return TransformerBridge.boot_native(TransformerBridgeConfig(**fields))


def _hf_model(fields: dict[str, Any]) -> nn.Module:
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(fields)
    config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    return AutoModelForCausalLM.from_config(config)


def model_builder(
    ckpt_dir: str | Path, model: str | None = None, beside: Path | None = None
) -> tuple[Callable, str]:
    """The callable building the model, and how it was chosen (for ``config.json``): the
    factory, else ``CKPT_DIR/config.json``, else a ``config.json`` in the folder ``beside``
    (a Hugging Face Trainer writes one into every ``checkpoint-N/``)."""
    if model:
        return load_factory(model), model
    path = Path(ckpt_dir) / MODEL_CONFIG
    if not path.is_file() and beside is not None:
        path = beside / MODEL_CONFIG if (beside / MODEL_CONFIG).is_file() else path
    if not path.is_file():
        raise CheckpointError(
            f"no model to load the checkpoints into: pass --model module:factory (a callable "
            f"returning the nn.Module), or write {path} (TransformerBridgeConfig fields: "
            "dynmon.checkpoints.save_tl_config, or a Hugging Face config with model_type)"
        )
    fields = json.loads(path.read_text())
    if not isinstance(fields, dict):
        raise CheckpointError(f"{path} must hold a JSON object of model configuration fields")
    if "model_type" in fields:
        return (lambda: _hf_model(fields)), f"huggingface {path}"
    if {"d_model", "n_heads", "n_layers"} <= fields.keys():
        return (lambda: _tl_model(fields)), f"transformer_lens {path}"
    raise CheckpointError(
        f"{path} is neither a TransformerBridgeConfig (needs d_model, n_heads, n_layers, ...) nor "
        "a Hugging Face config (needs model_type); pass --model module:factory instead"
    )
