"""The page's "Head roles" section: each role's best head at the last look and the formation
events of ``head_roles`` (docs/metrics.md#head_roles). Empty when the metric never ran."""

from __future__ import annotations

import math
from typing import Any

from dynmon.keys import HEAD_KEY, key

ROLES = ("prev_token_score", "induction_score", "duplicate_token_score", "copying_score")
EVENT_KINDS = ("role_onset", "role_formed")


def best_heads(tail: Any) -> list[list[Any]]:
    """Rows ``[role, head, score at the last look, step]``, one per role that was logged."""
    best: dict[str, tuple[float, str, int]] = {}
    for k in tail.keys():
        m = HEAD_KEY.match(k)
        if not m or m["metric"] not in ROLES:
            continue
        steps, values = tail.series(k)
        if not len(values) or math.isnan(values[-1]):
            continue
        head = f"L{m['layer']}.H{m['head']}"
        if m["metric"] not in best or values[-1] > best[m["metric"]][0]:
            best[m["metric"]] = (float(values[-1]), head, int(steps[-1]))
    return [[r, best[r][1], best[r][0], best[r][2]] for r in ROLES if r in best]


def role_events(events: list[dict[str, Any]]) -> list[list[Any]]:
    """Rows ``[step it happened, kind, role, head, score]`` of the formation events."""
    rows = []
    for ev in events:
        if ev.get("kind") in EVENT_KINDS:
            at = ev.get("at", ev.get("step"))
            rows.append([at, ev["kind"], ev.get("role"), ev.get("head"), ev.get("score")])
    return sorted(rows, key=lambda r: (r[0] is None, r[0]))


def icl_rows(tail: Any) -> list[list[Any]]:
    """The in-context score at the first and last look, when logged."""
    if key("icl_score") not in tail.keys():
        return []
    steps, values = tail.series(key("icl_score"))
    if not len(values):
        return []
    return [
        ["first look", int(steps[0]), float(values[0])],
        ["last look", int(steps[-1]), float(values[-1])],
    ]
