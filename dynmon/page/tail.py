"""A run folder read into columns, incrementally: each ``update()`` reads only the lines written
since the last one, so a page of a growing run costs the new lines, not the whole folder again.

``dynmon.load_run`` keeps one dict per logged step, which is the right shape for small runs but
costs seconds and a gigabyte on a 20,000-step run with 300 keys; here every key is a float column
and rows with the same keys are converted in one NumPy call.
"""

from __future__ import annotations

import gc
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dynmon.runfolder import (
    ARRAYS,
    CONFIG,
    EVENTS,
    METRICS,
    NONFINITE,
    SUMMARY,
    parse_line,
    restore,
    step_of,
)

CHUNK = 16 << 20  # bytes read at a time: bounds the memory a huge file costs while it is read


class _Column:
    """A float series (``values [T, ...]``) kept as appended chunks, joined (sorted by step, the
    last write of a step winning) on demand."""

    def __init__(self) -> None:
        self.steps: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self._joined: tuple[np.ndarray, np.ndarray] | None = None

    def append(self, steps: np.ndarray, values: np.ndarray) -> None:
        self.steps.append(steps)
        self.values.append(values)
        self._joined = None

    def joined(self) -> tuple[np.ndarray, np.ndarray]:
        if self._joined is None:
            steps = np.concatenate(self.steps) if self.steps else np.zeros(0, np.int64)
            shapes = sorted({v.shape[1:] for v in self.values})
            if len(shapes) > 1:
                raise ValueError(f"changes shape over the run: {shapes}")
            values = np.concatenate(self.values) if self.values else np.zeros(0)
            order = np.argsort(steps, kind="stable")
            steps, values = steps[order], values[order]
            last = np.r_[steps[1:] != steps[:-1], True]  # a step written twice: the last wins
            self.steps, self.values = [steps[last]], [values[last]]
            self._joined = (self.steps[0], self.values[0])
        return self._joined


class RunTail:
    """The run folder at ``path`` as columns; call ``update()`` to read what was appended since.

    ``series``, ``keys``, ``array_series`` and ``array_names`` answer as ``dynmon.Run`` does.
    ``lines_read`` counts the JSON lines parsed so far (every file), so callers and tests can see
    that an update read only the new ones.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        expected = f"a dynmon run folder with {METRICS} (and {CONFIG}, {EVENTS}, {SUMMARY})"
        if not self.path.is_dir():
            raise FileNotFoundError(f"no run folder at {self.path}: expected {expected}")
        if not (self.path / METRICS).is_file():
            raise FileNotFoundError(f"{self.path} has no {METRICS}: expected {expected}")
        self.config: dict[str, Any] = {}
        self.summary: dict[str, Any] = {}
        self.events: list[dict[str, Any]] = []
        self.lines_read = 0
        self.bad_lines = 0
        self._offsets: dict[str, int] = {}
        self._stamps: dict[str, tuple[int, int]] = {}
        self._columns: dict[str, _Column] = {}
        self._arrays: dict[str, _Column] = {}
        self._last_step: int | None = None
        self._first_step: int | None = None

    @property
    def name(self) -> str:
        """The run's name: its folder's name."""
        return self.path.resolve().name

    @property
    def step_range(self) -> tuple[int, int] | None:
        """First and last logged step, None before any."""
        if self._first_step is None or self._last_step is None:
            return None
        return self._first_step, self._last_step

    # -- reading ----------------------------------------------------------------------------------
    def update(self) -> int:
        """Read the lines appended since the last call (and config/summary if rewritten); returns
        the number of new lines. A line still being written (no newline yet) waits for the next
        call; a line that does not parse is skipped with one warning per call."""
        before, bad_before = self.lines_read, self.bad_lines
        collecting = gc.isenabled()
        gc.disable()  # millions of short-lived floats and lists and no cycles: GC would only cost
        try:
            for lines in self._new_lines(METRICS):
                self._add_metrics(lines)
            for lines in self._new_lines(ARRAYS):
                self._add_arrays(lines)
            for lines in self._new_lines(EVENTS):
                self.events += [restore(obj) for obj in self._parse(lines)]
        finally:
            if collecting:
                gc.enable()
        self.config = self._reread(CONFIG, self.config)
        self.summary = self._reread(SUMMARY, self.summary)
        if self.bad_lines > bad_before:
            warnings.warn(
                f"dynmon: skipped {self.bad_lines - bad_before} unreadable line(s) in {self.path} "
                "(a writer killed mid-line leaves a cut line)",
                RuntimeWarning,
                stacklevel=2,
            )
        return self.lines_read - before

    def _new_lines(self, name: str) -> Iterator[list[bytes]]:
        """Chunks of the complete lines of ``name`` past the saved offset, which each chunk
        advances: a last line without its newline is left for the next update."""
        path = self.path / name
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return
        offset = self._offsets.get(name, 0)
        if size < offset:
            raise RuntimeError(
                f"{path} shrank from {offset} to {size} bytes while being read: run folder files "
                "are append-only, so it was replaced; start the report again"
            )
        with open(path, "rb") as f:
            f.seek(offset)
            carry = b""
            left = size - offset
            while left > 0:
                chunk = f.read(min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                data = carry + chunk
                end = data.rfind(b"\n")
                if end < 0:
                    carry = data
                    continue
                carry = data[end + 1 :]
                offset += end + 1
                self._offsets[name] = offset
                yield data[:end].split(b"\n")

    def _parse(self, lines: list[bytes]) -> Iterator[dict[str, Any]]:
        for line in lines:
            if not line.strip():
                continue
            self.lines_read += 1
            obj = parse_line(line)
            if obj is None:
                self.bad_lines += 1
            else:
                yield obj

    def _add_metrics(self, lines: list[bytes]) -> None:
        """Rows grouped by their key tuple, each group turned into one float matrix."""
        groups: dict[tuple[str, ...], list[list[Any]]] = {}
        for obj in self._parse(lines):
            if "step" not in obj:
                continue
            step = step_of(obj)  # a hand-edited "abc" or a step beyond int64: skipped, counted
            if step is None:
                self.bad_lines += 1
                continue
            obj["step"] = step
            groups.setdefault(tuple(obj), []).append(list(obj.values()))
        for keys, rows in groups.items():
            table = _float_table(rows)  # [rows, keys]
            at = keys.index("step")
            steps = table[:, at].astype(np.int64)
            for j, k in enumerate(keys):
                if j != at:
                    self._columns.setdefault(k, _Column()).append(steps, table[:, j])
            lo, hi = int(steps.min()), int(steps.max())
            self._first_step = lo if self._first_step is None else min(self._first_step, lo)
            self._last_step = hi if self._last_step is None else max(self._last_step, hi)

    def _add_arrays(self, lines: list[bytes]) -> None:
        """Each name's arrays of a chunk stacked in one NumPy call (``[rows, ...]``)."""
        by_name: dict[str, tuple[list[int], list[Any]]] = {}
        for obj in self._parse(lines):
            if "step" not in obj:
                continue
            step = step_of(obj)
            obj.pop("step")
            if step is None:
                self.bad_lines += 1
                continue
            for k, v in obj.items():
                steps, values = by_name.setdefault(k, ([], []))
                steps.append(step)
                values.append(v)
        for k, (steps, values) in by_name.items():
            try:
                stacked = [np.array(values, dtype=np.float64)]  # [rows, ...]
                at = [np.array(steps, dtype=np.int64)]
            except (TypeError, ValueError):  # text cells, or shapes that differ between rows
                stacked, at = [], []
                for step, v in zip(steps, values, strict=True):
                    stacked.append(np.asarray(restore(v), dtype=np.float64)[None])
                    at.append(np.array([step], dtype=np.int64))
            column = self._arrays.setdefault(k, _Column())
            for a, s in zip(stacked, at, strict=True):
                column.append(s, a)

    def _reread(self, name: str, old: dict[str, Any]) -> dict[str, Any]:
        """A small JSON file, read again only when its size or time changed."""
        path = self.path / name
        try:
            st = path.stat()
        except FileNotFoundError:
            return old
        stamp = (st.st_mtime_ns, st.st_size)
        if self._stamps.get(name) == stamp:
            return old
        self._stamps[name] = stamp
        try:
            obj = parse_line(path.read_bytes())
        except OSError as exc:
            obj, why = None, str(exc)
        else:
            why = "not a JSON object"
        if obj is None:
            warnings.warn(f"dynmon: {path} is not valid JSON ({why}); ignored", RuntimeWarning, 3)
            return old
        return restore(obj)

    # -- answering --------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        """Every scalar key logged at least once, in the order first seen."""
        return list(self._columns)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one scalar, sorted by step, last write of a step winning."""
        column = self._columns.get(key)
        if column is None:
            return np.zeros(0, np.int64), np.zeros(0)
        return column.joined()

    def array_names(self) -> list[str]:
        """Every array name logged at least once, in the order first seen."""
        return list(self._arrays)

    def array_series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps [T], values [T, ...])`` of one array, sorted by step (last write wins)."""
        column = self._arrays.get(name)
        if column is None:
            return np.zeros(0, np.int64), np.empty((0,), dtype=np.float64)
        try:
            return column.joined()
        except ValueError as exc:
            raise ValueError(f"array {name!r} {exc}") from None


def _float_table(rows: list[list[Any]]) -> np.ndarray:
    """Rows of JSON values as a float matrix: numbers, bools, ``null`` and the non-finite tokens
    convert in one call; anything else (text, lists) becomes NaN, cell by cell."""
    try:
        return np.array(rows, dtype=np.float64)
    except (TypeError, ValueError):
        return np.array([[_as_float(v) for v in row] for row in rows], dtype=np.float64)


def _as_float(v: Any) -> float:
    if v is None:
        return math.nan
    if isinstance(v, str):
        return NONFINITE.get(v, math.nan)
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan
