"""Progress: a tqdm bar on a terminal, plain log lines otherwise (fake streams, fake clock)."""

from __future__ import annotations

import io
import re

import pytest

from dynmon.progress import Progress

LINE = re.compile(r"^train: step (\d+)/(\d+) \((\d+)%\)(?: loss (\S+))?(?: event (\S+))? \[")


class FakeStream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class FakeClock:
    def __init__(self, tick: float = 0.0) -> None:
        self.t, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.t += self.tick
        return self.t


def _lines(stream: FakeStream) -> list[re.Match]:
    out = [LINE.match(x) for x in stream.getvalue().splitlines()]
    assert all(m is not None for m in out), stream.getvalue()
    return out


def test_log_lines_every_n_steps_with_latest_loss_and_event():
    stream = FakeStream(tty=False)
    with Progress(100, "train", stream=stream, clock=FakeClock()) as bar:
        assert not bar.is_bar
        for step in range(101):
            event = "cliff" if step >= 33 else None  # arrives at 33: a line at once
            bar.update(step, loss=1.0 / (step + 1), event=event)
    lines = _lines(stream)
    steps = [int(m[1]) for m in lines]
    assert steps == [*range(0, 31, 5), *range(33, 99, 5), 100]  # 5 steps from the last line
    for m in lines:
        s = int(m[1])
        assert m[2] == "100" and int(m[3]) == round(s)
        assert float(m[4]) == pytest.approx(1.0 / (s + 1), rel=1e-3)
        assert m[5] == ("cliff" if s >= 33 else None)


def test_every_counts_from_the_last_line():
    stream = FakeStream(tty=False)
    bar = Progress(100, "train", stream=stream, every=5, clock=FakeClock())
    for step in range(101):
        bar.update(step, event="cliff" if step >= 33 else None)
    bar.close()
    expected, last = [], None
    for step in range(101):  # the rule, restated: every 5 from the last line, event, the end
        if last is None or step - last >= 5 or step == 33 or step == 100:
            expected.append(step)
            last = step
    assert [int(m[1]) for m in _lines(stream)] == expected


def test_interval_forces_a_line_and_close_writes_the_last_step():
    stream = FakeStream(tty=False)
    bar = Progress(1000, "train", stream=stream, every=10_000, interval=10.0, clock=FakeClock(1.0))
    for step in range(1, 26):  # the clock moves 1 s per update
        bar.update(step)
    bar.close()
    bar.close()  # twice is fine
    bar.update(30)  # after close: nothing
    assert [int(m[1]) for m in _lines(stream)] == [1, 11, 21, 25]


def test_terminal_gets_a_tqdm_bar_with_loss_and_event():
    pytest.importorskip("tqdm")
    stream = FakeStream(tty=True)
    bar = Progress(40, "train", stream=stream)
    assert bar.is_bar
    for step in range(1, 41):
        bar.update(step, loss=0.5 if step < 40 else 0.125, event="onset" if step > 20 else None)
    bar.close()
    text = stream.getvalue()
    assert "\r" in text and "\n" not in text.rstrip("\n")  # redrawn in place, not lines
    final = text.rstrip("\n").split("\r")[-1]
    assert final.startswith("train:")
    assert "40/40" in final and "100%" in final
    assert "loss=0.125" in final and "event=onset" in final


def test_disabled_writes_nothing_and_bad_total_is_refused():
    stream = FakeStream(tty=True)
    with Progress(10, "train", enabled=False, stream=stream) as bar:
        bar.update(5, loss=1.0, event="x")
    assert stream.getvalue() == ""
    with pytest.raises(ValueError, match="total must be >= 0"):
        Progress(-1, "train")
