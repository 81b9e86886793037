"""The public names of ``dynmon``: each resolves, and the Monitor's parts follow their protocols."""

from __future__ import annotations

import typing

import pytest
import torch

import dynmon
from dynmon.events import default_detectors
from dynmon.monitor import Monitor


@pytest.mark.parametrize("name", dynmon.__all__)
def test_every_exported_name_resolves(name):
    assert getattr(dynmon, name) is not None
    assert name in dir(dynmon)


def _named(hint) -> set:
    """Every type a (nested) annotation names."""
    args = typing.get_args(hint)
    return {hint} if not args else set().union(*(_named(a) for a in args))


def test_protocol_exports_are_the_ones_the_monitor_uses(tmp_path):
    hints = typing.get_type_hints(Monitor.__init__)
    assert _named(hints["sinks"]) == {str, dynmon.Sink, type(None)}
    assert _named(hints["detectors"]) == {dynmon.Detector, type(None)}
    dets = default_detectors(["loss", "train/acc", "test/acc"])
    kinds = {type(d) for d in dets}
    assert {dynmon.PlateauCliffDetector, dynmon.GrokkingDetector} <= kinds
    assert all(isinstance(d, dynmon.Detector) for d in dets)
    with dynmon.Monitor(torch.nn.Linear(2, 2), run_dir=tmp_path, metrics=[]) as mon:
        assert mon.sinks and all(isinstance(s, dynmon.Sink) for s in mon.sinks)
        assert type(mon.sinks[0]).__name__ == "RunFolderSink"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        dynmon.Nope  # noqa: B018
