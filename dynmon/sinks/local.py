"""The default sink: a plain run folder that survives a killed process and a full disk, has one
writer at a time, and reads back with ``dynmon.load_run`` (layout and NaN convention in
``dynmon.runfolder``)."""

from __future__ import annotations

import json
import os
import warnings
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from dynmon.lock import RunFolderLock
from dynmon.runfolder import (
    ARRAYS,
    CONFIG,
    EVENTS,
    METRICS,
    SUMMARY,
    dumps_line,
    encode_float,
    jsonable,
    parse_line,
    restore,
    step_of,
)

MAX_BACKLOG_BYTES = 4 * 2**20  # lines kept in memory while the disk refuses them
UNWRITTEN = "unwritten_lines"  # summary.json key: lines a full disk cost, per file


class RunFolderSink:
    """Append-only JSON-lines files in ``run_dir``, each line handed to the OS as it is written.

    A process killed with SIGKILL keeps every line written before the kill; opening a folder that
    already holds a run appends to it (a resumed run continues) and never truncates it. The
    folder is locked (``dynmon.lock``) from opening to ``close()``: a second writer gets
    ``RunFolderBusy``. When a write fails (disk full, quota, file size limit) the lines wait in
    memory, up to ``max_backlog_bytes``, and go out in order as soon as a write succeeds again;
    lines beyond that bound are counted under ``unwritten_lines`` in ``summary.json``.
    """

    def __init__(self, run_dir: str | Path, *, max_backlog_bytes: int = MAX_BACKLOG_BYTES) -> None:
        if not isinstance(max_backlog_bytes, int) or max_backlog_bytes < 0:
            raise ValueError(
                f"max_backlog_bytes must be a non-negative int, got {max_backlog_bytes!r}"
            )
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._lock = RunFolderLock(self.run_dir)  # before touching any of the run's files
        self.max_backlog_bytes = max_backlog_bytes
        self._fds: dict[str, int] = {}
        self._cut: set[str] = set()  # files whose last line a killed writer left unfinished
        self._backlog: deque[tuple[str, bytes]] = deque()  # (file, bytes still to write)
        self._backlog_bytes = 0
        self._unwritten: dict[str, int] = {}
        self._pending: dict[str, str] = {}  # whole-file writes (config, summary) still due
        self._stall: str | None = None  # the error that stopped writing, while stopped
        self._warned_drop = False
        self._closed = False
        self._summary: dict[str, Any] = {}
        summary = self.run_dir / SUMMARY
        if summary.is_file():  # a resumed run keeps its earlier headline figures
            try:
                self._summary = restore(parse_line(summary.read_bytes()) or {})
            except OSError:
                self._summary = {}
            self._summary.pop(UNWRITTEN, None)  # counted again for this writer
        self._queue(METRICS, b"")  # exists from the start, so a run being written already loads

    # -- writing, with a backlog while the disk refuses -----------------------------------------
    def _open(self, name: str) -> int:
        """The append descriptor of one ``.jsonl`` file, opened on first use."""
        fd = self._fds.get(name)
        if fd is None:
            path = self.run_dir / name
            cut = False
            if path.is_file() and path.stat().st_size:
                with open(path, "rb") as old:  # a killed writer may have left a cut last line:
                    old.seek(-1, os.SEEK_END)  # end it so that our first line stays whole
                    cut = old.read(1) != b"\n"
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._fds[name] = fd
            if cut:
                self._cut.add(name)
        if name in self._cut:
            os.write(fd, b"\n")
            self._cut.discard(name)
        return fd

    def _queue(self, name: str, data: bytes) -> None:
        """Queue ``data`` for ``name`` (dropped and counted if the backlog is full), then drain."""
        if self._closed:
            raise RuntimeError(f"RunFolderSink({self.run_dir}) is closed")
        if not self._backlog and not self._pending:  # the usual case: straight to the OS
            try:
                data = data[os.write(self._open(name), data) :]
            except OSError:
                pass  # nothing written: the backlog below takes it and reports the stall
            if not data:
                return
        if self._backlog and self._backlog_bytes + len(data) > self.max_backlog_bytes:
            self._drain()  # space may be back
            if self._backlog and self._backlog_bytes + len(data) > self.max_backlog_bytes:
                self._unwritten[name] = self._unwritten.get(name, 0) + 1
                if not self._warned_drop:
                    self._warned_drop = True
                    warnings.warn(
                        f"dynmon: {self.run_dir}: {self._backlog_bytes} bytes wait for the disk "
                        f"({self._stall}); newer lines are dropped and counted under "
                        f"{UNWRITTEN!r} in {SUMMARY} until writing works again",
                        RuntimeWarning,
                        4,
                    )
                return
        self._backlog.append((name, data))
        self._backlog_bytes += len(data)
        self._drain()

    def _drain(self) -> bool:
        """Write what waits, in order, until the OS refuses; True when nothing is left."""
        try:
            for name, text in list(self._pending.items()):
                _atomic_write(self.run_dir / name, text)
                del self._pending[name]
            while self._backlog:
                name, data = self._backlog[0]
                fd = self._open(name)
                while data:
                    n = os.write(fd, data)  # to the OS now: survives SIGKILL (not power loss)
                    data = data[n:]
                    self._backlog_bytes -= n
                    self._backlog[0] = (name, data)
                self._backlog.popleft()
        except OSError as exc:  # ENOSPC, EDQUOT, EFBIG...: keep the rest and retry next time
            if self._stall is None:
                self._stall = f"{type(exc).__name__}: {exc}"
                warnings.warn(
                    f"dynmon: cannot write into {self.run_dir} ({self._stall}); keeping up to "
                    f"{self.max_backlog_bytes} bytes in memory and retrying at every write",
                    RuntimeWarning,
                    4,
                )
            return False
        if self._stall is not None:
            lost = sum(self._unwritten.values())
            warnings.warn(
                f"dynmon: writing into {self.run_dir} works again; the backlog is written"
                + (f", {lost} line(s) were lost (see {UNWRITTEN!r} in {SUMMARY})" if lost else ""),
                RuntimeWarning,
                4,
            )
            self._stall, self._warned_drop = None, False
            if lost:  # say so in the summary as soon as it can be written
                self._pending[SUMMARY] = self._summary_text()
                return self._drain()
        return True

    def _whole_file(self, name: str, text: str) -> None:
        """Replace ``name`` atomically now, or as soon as the disk allows (the latest wins)."""
        if self._closed:
            raise RuntimeError(f"RunFolderSink({self.run_dir}) is closed")
        self._pending[name] = text
        self._drain()

    def _summary_text(self) -> str:
        summary = dict(self._summary)
        if self._unwritten:
            summary[UNWRITTEN] = dict(self._unwritten)
        return json.dumps(jsonable(summary), indent=2) + "\n"

    # -- the Sink methods -----------------------------------------------------------------------
    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write ``config.json`` (pretty, JSON-safe), replacing it atomically."""
        self._whole_file(CONFIG, json.dumps(jsonable(config), indent=2) + "\n")

    def write(
        self, step: int, scalars: Mapping[str, float], arrays: Mapping[str, np.ndarray]
    ) -> None:
        """Append a ``metrics.jsonl`` line, and an ``arrays.jsonl`` line when there are arrays."""
        line: dict[str, Any] = {"step": int(step)}
        for k, v in scalars.items():
            line[k] = encode_float(v) if isinstance(v, float) else jsonable(v)
        self._queue(METRICS, (dumps_line(line) + "\n").encode())
        if arrays:
            row = {"step": int(step), **{k: jsonable(v) for k, v in arrays.items()}}
            self._queue(ARRAYS, (dumps_line(row) + "\n").encode())

    def write_event(self, event: Mapping[str, Any]) -> None:
        """Append one ``events.jsonl`` line."""
        self._queue(EVENTS, (dumps_line(jsonable(event)) + "\n").encode())

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Merge into ``summary.json``, rewritten atomically (temp file, then ``os.replace``)."""
        self._summary.update(summary)
        self._whole_file(SUMMARY, self._summary_text())

    def drop_events_after(self, step: int | None) -> int:
        """Remove the events detected after ``step`` (all when None) from ``events.jsonl``, so a
        run resumed from a checkpoint of ``step`` records them once; returns how many went."""
        if not self._drain():
            raise OSError(f"cannot rewrite {self.run_dir / EVENTS}: {self._stall}")
        path = self.run_dir / EVENTS
        if not path.is_file():
            return 0
        fd = self._fds.pop(EVENTS, None)
        if fd is not None:
            os.close(fd)
        self._cut.discard(EVENTS)  # the rewrite below ends every line
        lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
        kept, dropped = [], 0
        for line in lines:
            event = parse_line(line)
            if event is None:  # a killed writer's cut last line
                continue
            ev_step = step_of(event)
            if step is None or (ev_step is not None and ev_step > step):
                dropped += 1
                continue
            kept.append(line)
        if len(kept) != len(lines):
            _atomic_write(path, "".join(f"{x}\n" for x in kept))
        return dropped

    def close(self) -> None:
        """Write what waits (and the summary, with any lines a full disk cost), close the
        files and release the folder; safe to call twice."""
        if self._closed:
            return
        try:
            self._drain()
            for name, data in self._backlog:  # still refused: counted as lost
                if data:
                    self._unwritten[name] = self._unwritten.get(name, 0) + 1
            self._backlog.clear()
            if self._unwritten or SUMMARY in self._pending:
                try:
                    _atomic_write(self.run_dir / SUMMARY, self._summary_text())
                    self._pending.pop(SUMMARY, None)
                except OSError as exc:
                    warnings.warn(
                        f"dynmon: {self.run_dir / SUMMARY} could not be written at close: {exc}",
                        RuntimeWarning,
                        3,
                    )
        finally:
            self._closed = True
            fds, self._fds = self._fds, {}
            for fd in fds.values():
                os.close(fd)
            self._lock.release()

    @property
    def unwritten(self) -> dict[str, int]:
        """Lines each file lost to a full disk so far (empty when none)."""
        return dict(self._unwritten)

    def __repr__(self) -> str:
        return f"RunFolderSink({str(self.run_dir)!r})"


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
