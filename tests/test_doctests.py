"""The ``>>>`` examples in the public functions' docstrings run as tests, so they stay true.

Each module's examples are small, exact (closed forms: equal singular values, orthogonal axes,
a diagonal matrix's trace) and fast; a module listed here must hold at least one example. The
citations ``docs/metrics.md#erank`` in the code must name headings that exist.
"""

from __future__ import annotations

import doctest
import importlib
import re
from pathlib import Path

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


# -- citations of docs/ anchors --------------------------------------------------------------------
ROOT = Path(__file__).resolve().parents[1]
CITATION = re.compile(r"docs/([a-z\-]+\.md)#([A-Za-z0-9_\-]+)")
SOURCES = ("dynmon", "integrations", "experiments", "tests", "benchmarks", "scripts")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", doc.read_text("utf-8"), re.M)}


def test_every_cited_docs_anchor_exists() -> None:
    """``docs/metrics.md#erank`` in code, tests or the README names a heading that exists."""
    anchors = {doc.name: _anchors(doc) for doc in (ROOT / "docs").glob("*.md")}
    files = [ROOT / "README.md"]
    for folder in SOURCES:
        files += [p for p in (ROOT / folder).rglob("*.py") if ".peers-venv" not in p.parts]
    cited, missing = 0, []
    for path in files:
        for m in CITATION.finditer(path.read_text("utf-8", errors="replace")):
            cited += 1
            if m.group(2) not in anchors.get(m.group(1), set()):
                missing.append(f"{path.relative_to(ROOT)}: docs/{m.group(1)}#{m.group(2)}")
    assert cited > 0
    assert not missing, f"citations of headings that do not exist: {missing}"


def test_links_between_docs_resolve() -> None:
    """Links like ``[x](run-folder.md#keys)`` or ``[x](#erank)`` inside docs/ land on a heading."""
    docs = ROOT / "docs"
    anchors = {doc.name: _anchors(doc) for doc in docs.glob("*.md")}
    missing = []
    for doc in docs.glob("*.md"):
        for m in re.finditer(r"\]\(([\w\-]*\.md)?#([^)\s]+)\)", doc.read_text("utf-8")):
            target = m.group(1) or doc.name
            if m.group(2) not in anchors.get(target, set()):
                missing.append(f"{doc.name}: {target}#{m.group(2)}")
    assert not missing, f"links to headings that do not exist: {missing}"
