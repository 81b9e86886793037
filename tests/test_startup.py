"""``dynmon presets`` and ``dynmon --help`` import no torch (timed: benchmarks/bench_startup.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from dynmon.experiments import PACKS

PROBE = """
import json, sys
from dynmon.cli import main
try:
    main({argv!r})
except SystemExit:  # --help exits
    pass
print(json.dumps(sorted(m for m in ("torch", "transformer_lens", "numpy") if m in sys.modules)))
"""


def _heavy_modules_after(argv: list[str]) -> tuple[str, list[str]]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(argv=argv)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    body, last = out.rstrip("\n").rsplit("\n", 1)
    return body, json.loads(last)


@pytest.mark.parametrize("pack", sorted(PACKS))
def test_presets_lists_every_preset_without_importing_torch(pack):
    from dynmon.experiments import load_pack

    body, heavy = _heavy_modules_after(["presets", pack])
    assert heavy == [], f"dynmon presets {pack} imported {heavy}"
    presets = load_pack(pack).PRESETS
    for name, cfg in presets.items():
        assert name in body and f"steps = {cfg.steps!r}" in body


def test_pack_run_still_loads_on_first_use():
    from dynmon.experiments import load_pack

    pack = load_pack("grokking")
    assert callable(pack.run) and pack.run.__module__.endswith("grokking.train")
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pack.nope  # noqa: B018


def test_help_names_the_packs_in_plain_text_without_torch():
    body, heavy = _heavy_modules_after(["--help"])
    assert heavy == []
    for pack in PACKS:
        assert pack in body
    assert "``" not in body and "`" not in body  # no RST or Markdown quoting in a terminal
