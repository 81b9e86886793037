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


def test_head_roles_section(tmp_path):
    """Best head per role at the last look and the formation events, from a written run."""
    from dynmon.page.build import write_run_page
    from dynmon.runfolder import dumps_line

    (tmp_path / "config.json").write_text('{"dynmon": {}}')
    rows = []
    for step in (0, 10, 20):
        row = {"step": step, "loss": 1.0 / (step + 1), "dynmon/icl_score": -0.1 * step}
        for h in range(2):
            row[f"dynmon/induction_score/L1.H{h}.attn"] = 0.01 * step * (h + 1)
            row[f"dynmon/prev_token_score/L0.H{h}.attn"] = 0.5 - 0.1 * h
        rows.append(dumps_line(row) + "\n")
    (tmp_path / "metrics.jsonl").write_text("".join(rows))
    event = {"kind": "role_formed", "step": 20, "at": 10, "role": "induction", "head": "L1.H1"}
    (tmp_path / "events.jsonl").write_text(dumps_line({**event, "score": 0.4}) + "\n")
    page = write_run_page(tmp_path).read_text()
    section = page[page.index("Head roles") :]
    assert "Best head per role" in section and "L1.H1" in section and "0.4" in section
    assert "prev_token_score" in section and "L0.H0" in section
    assert "role_formed" in section and "-2" in section  # the last in-context score
