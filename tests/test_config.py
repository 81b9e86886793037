"""--set KEY=VALUE overrides are parsed by the field's type and refuse unknown keys."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from dynmon.config import apply_overrides


@dataclass(frozen=True)
class Cfg:
    p: int = 53
    lr: float = 1e-3
    op: str = "add"
    float64_loss: bool = False
    spectrum: tuple = (0.4, 0.3)
    extra: object = None


def test_types():
    c = apply_overrides(
        Cfg(),
        [
            "p=113",
            "lr=3e-3",
            "op=sub",
            "float64_loss=true",
            "spectrum=[0.5,0.25,0.25]",
            "extra=linear",
        ],
    )
    assert c == Cfg(113, 3e-3, "sub", True, (0.5, 0.25, 0.25), "linear")
    assert apply_overrides(Cfg(), ["p=1e4"]).p == 10_000
    assert apply_overrides(Cfg(), ["spectrum=1,2"]).spectrum == (1.0, 2.0)
    assert apply_overrides(Cfg(), ["spectrum=[.4, .3,.2]"]).spectrum == (0.4, 0.3, 0.2)  # not JSON


@pytest.mark.parametrize(
    "item, match",
    [
        ("q=1", "unknown key.*'p'"),
        ("p=1.5", "integer"),
        ("p=abc", "cannot read"),
        ("float64_loss=maybe", "true/false"),
        ("p", "KEY=VALUE"),
    ],
)
def test_errors(item, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(Cfg(), [item])
