"""Every ``dynmon/...`` key is spelled in ``dynmon/keys.py`` only (issue 13's grep, as a test)."""

from __future__ import annotations

import re
from pathlib import Path

from dynmon import keys

ROOT = Path(__file__).resolve().parents[1]
LITERAL = re.compile(r"""["']dynmon/""")  # a string that starts with the key prefix
# files still spelling keys by hand, each being rewritten elsewhere; remove a file once it is done
PENDING: set[str] = set()


def _spelled_by_hand() -> dict[str, list[int]]:
    found: dict[str, list[int]] = {}
    for folder in ("dynmon", "integrations", "experiments"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            lines = path.read_text(encoding="utf-8").splitlines()
            hits = [i + 1 for i, line in enumerate(lines) if LITERAL.search(line)]
            if hits and rel != "dynmon/keys.py":
                found[rel] = hits
    return found


def test_keys_are_spelled_only_in_keys_py():
    found = _spelled_by_hand()
    new = {f: lines for f, lines in found.items() if f not in PENDING}
    assert not new, f"use dynmon.keys (key(), the *_KEY constants) instead of literals: {new}"


def test_the_named_keys_are_the_ones_sinks_and_readers_share():
    assert keys.key("erank", "L0.H1.QK") == "dynmon/erank/L0.H1.QK"
    assert keys.STEP_KEY == "dynmon/step" and keys.EVENTS_KEY == "dynmon/events"
    assert keys.heatmap_key(keys.key("erank", "QK")) == "dynmon/heatmap/erank/QK"
    assert keys.heatmap_key("loss") == "dynmon/heatmap/loss"
    assert keys.event_key("cliff") == "dynmon/event/cliff"
    assert keys.strip_prefix(keys.key("a", "b")) == "a/b" and keys.strip_prefix("a/b") == "a/b"
    assert keys.is_dynmon_key(keys.key("x")) and not keys.is_dynmon_key("dynmonx/y")
    assert keys.HEAD_KEY.match(keys.key("erank", "L2.H3.OV")).group("layer") == "2"


def test_layer_and_head_patterns_do_not_overlap():
    layer = keys.LAYER_KEY.match(keys.key("erank", "L3.QK"))
    assert layer is not None and (layer.group("metric"), layer.group("layer")) == ("erank", "3")
    assert layer.group("circuit") == "QK"
    assert keys.LAYER_KEY.match(keys.key("erank", "L3.H1.QK")) is None  # a head, not a layer
    assert keys.HEAD_KEY.match(keys.key("erank", "L3.QK")) is None
    assert keys.LAYER_KEY.match(keys.key("erank", "QK")) is None  # the overall mean
