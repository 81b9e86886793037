"""The summary on the page: grouped tables, nothing about measures that never ran."""

from __future__ import annotations

import doctest

from dynmon.page import summary as summary_mod
from dynmon.page.summary import summary_tables


def test_doctests():
    assert doctest.testmod(summary_mod).failed == 0


def test_groups_records_run_info_and_skips_empty():
    summary = {
        "grokking_step": 850,
        "delay_ratio": 8.5,
        "lead_times": {
            "dynmon/erank/QK": {"moved_step": 190, "lead": 660},
            "dynmon/sharpness": {"moved_step": 300, "lead": 550, "scale": "log"},
        },
        "hessian_trace": {},  # never computed: not mentioned
        "plateaus": [{"start": 0, "end": 10}, {"start": 20, "end": 30}],
        "seconds": 12.5,
        "threads": 1,
        "dynmon": {"looks": 3, "events": 2, "disabled_metrics": {}},
    }
    tables = {title: (head, rows) for title, head, rows in summary_tables(summary)}
    assert list(tables) == ["Headline", "lead_times", "plateaus", "Monitor", "Run"]
    assert tables["Headline"][1] == [["grokking_step", 850], ["delay_ratio", 8.5]]
    head, rows = tables["lead_times"]
    assert head == ["", "moved_step", "lead", "scale"]
    assert rows == [["dynmon/erank/QK", 190, 660, None], ["dynmon/sharpness", 300, 550, "log"]]
    assert tables["Run"][1] == [["seconds", 12.5], ["threads", 1]]
    assert ["disabled_metrics", {}] not in tables["Monitor"][1]
    assert "hessian_trace" not in tables
