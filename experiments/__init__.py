"""Experiment packs: each a model + data + loop + presets (+ theory), run from the CLI.

A pack is a module exposing ``PRESETS: dict[str, <frozen dataclass config>]``,
``DEFAULT_PRESET: str`` and ``run(config, out: Path, *, wandb: bool = False, group: str | None =
None) -> dict`` (the returned dict is the run's summary; ``group`` is the W&B group, handed to
``dynmon.make_sink``).
"""

from __future__ import annotations

import importlib
from types import ModuleType

PACKS: dict[str, str] = {
    "grokking": "dynmon.experiments.grokking",
    "induction": "dynmon.experiments.induction",
    "linear-icl": "dynmon.experiments.linear_icl",
}


def load_pack(name: str) -> ModuleType:
    """Import a pack by its CLI name, with a clear error for unknown or unavailable ones."""
    if name not in PACKS:
        raise ValueError(f"unknown pack {name!r}; available: {', '.join(sorted(PACKS))}")
    try:
        return importlib.import_module(PACKS[name])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("dynmon.experiments"):
            raise ValueError(f"pack {name!r} is not available in this version of dynmon") from None
        raise ModuleNotFoundError(
            f"pack {name!r} needs {exc.name!r}: install it with pip install 'dynmon[all]'"
        ) from exc
