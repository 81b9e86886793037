"""The run's ``summary.json`` as grouped tables: headline figures, one table per nested group
(a dict of records becomes one row per record), the run's timings, the Monitor's own counts.

Empty groups are left out, so a measure that never ran is never mentioned.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dynmon.page.compare import flatten

RUN_INFO = (
    "steps_run",
    "seconds",
    "steps_per_s",
    "train_steps_per_s",
    "seconds_measuring",
    "seconds_in_monitor",
    "threads",
    "device",
)
Table = tuple[str, list[str], list[list[Any]]]  # title, column heads, rows


def _is_record(v: Any) -> bool:
    return (
        isinstance(v, Mapping) and bool(v) and all(not isinstance(x, Mapping) for x in v.values())
    )


def _records(title: str, group: Mapping[str, Any]) -> Table:
    """``{name: {field: value}}`` as one row per name (fields in order first seen)."""
    fields = list(dict.fromkeys(f for rec in group.values() for f in rec))
    rows = [[name, *(rec.get(f) for f in fields)] for name, rec in group.items()]
    return title, ["", *fields], rows


def summary_tables(summary: Mapping[str, Any]) -> list[Table]:
    """Grouped tables of a summary (see the module docstring); never an empty one.

    >>> [t[0] for t in summary_tables({"a": 1, "lead": {"x": {"lead": 3}}, "none": {}})]
    ['Headline', 'lead']
    """
    headline: list[list[Any]] = []
    run: list[list[Any]] = []
    groups: list[Table] = []
    for key, value in summary.items():
        if key in RUN_INFO:
            run.append([key, value])
        elif key == "dynmon" and isinstance(value, Mapping):
            rows = [[k, v] for k, v in flatten(value).items() if v not in ({}, [], None)]
            if rows:
                groups.append(("Monitor", ["", "value"], rows))
        elif isinstance(value, Mapping):
            if not value:
                continue  # a measure that never ran
            if all(_is_record(v) for v in value.values()):
                groups.append(_records(key, value))
            else:
                rows = [[k, v] for k, v in flatten(value).items() if v not in ({}, [])]
                if rows:
                    groups.append((key, ["", "value"], rows))
        elif isinstance(value, list) and value and all(isinstance(v, Mapping) for v in value):
            groups.append(_records(key, {str(i): v for i, v in enumerate(value)}))
        elif value not in ([], ""):
            headline.append([key, value])
    tables: list[Table] = []
    if headline:
        tables.append(("Headline", ["", "value"], headline))
    tables.extend(groups)
    if run:
        tables.append(("Run", ["", "value"], run))
    return tables
