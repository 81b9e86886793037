"""The ``>>>`` examples in the public functions' docstrings run as tests, so they stay true.

Each module's examples are small, exact (closed forms: equal singular values, orthogonal axes,
a diagonal matrix's trace) and fast; a module listed here must hold at least one example.
"""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "dynmon.metrics.spectral",  # erank, stable_rank, participation_ratio, numerical_rank, ...
    "dynmon.metrics.subspace",  # subspace_distance, principal_angles
    "dynmon.metrics.norms",  # global_norm, update_ratio
    "dynmon.schedule",  # every, logspace and their union
    "dynmon.keys",  # key, head_scalars
    "dynmon.runfolder",  # encode_float, restore
    "dynmon.linalg",  # hutchinson_trace
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.attempted > 0, f"{name} has no >>> examples; add one or drop it from MODULES"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed"
