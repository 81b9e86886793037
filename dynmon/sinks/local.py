"""The default sink: a plain run folder that survives a killed process and reads back with
``dynmon.load_run`` (layout and NaN convention in ``dynmon.runfolder``)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import numpy as np

from dynmon.runfolder import (
    ARRAYS,
    CONFIG,
    EVENTS,
    METRICS,
    SUMMARY,
    dumps_line,
    encode_float,
    jsonable,
    restore,
)


class RunFolderSink:
    """Append-only JSON-lines files in ``run_dir``, each line flushed to the OS as it is written.

    A process killed with SIGKILL keeps every line written before the kill; opening a folder that
    already holds a run appends to it (a resumed run continues) and never truncates it.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, IO[str]] = {}
        self._closed = False
        self._summary: dict[str, Any] = {}
        summary = self.run_dir / SUMMARY
        if summary.is_file():  # a resumed run keeps its earlier headline figures
            try:
                self._summary = restore(json.loads(summary.read_text(encoding="utf-8")))
            except (json.JSONDecodeError, OSError):
                self._summary = {}
        self._file(METRICS)  # exists from the start, so a run being written already loads

    def _file(self, name: str) -> IO[str]:
        """The append handle of one ``.jsonl`` file, opened on first use."""
        if self._closed:
            raise RuntimeError(f"RunFolderSink({self.run_dir}) is closed")
        f = self._files.get(name)
        if f is None:
            path = self.run_dir / name
            if path.is_file() and path.stat().st_size:
                with open(path, "rb") as old:  # a killed writer may have left a cut last line:
                    old.seek(-1, os.SEEK_END)  # end it so that our first line stays whole
                    cut = old.read(1) != b"\n"
            else:
                cut = False
            f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open, closed in close()
            if cut:
                f.write("\n")
                f.flush()
            self._files[name] = f
        return f

    def _append(self, name: str, obj: Mapping[str, Any]) -> None:
        f = self._file(name)
        f.write(dumps_line(obj) + "\n")
        f.flush()  # to the OS now: survives SIGKILL (not power loss; that would need fsync)

    def write_config(self, config: Mapping[str, Any]) -> None:
        """Write ``config.json`` (pretty, JSON-safe), replacing it atomically."""
        _atomic_write(self.run_dir / CONFIG, json.dumps(jsonable(config), indent=2) + "\n")

    def write(
        self, step: int, scalars: Mapping[str, float], arrays: Mapping[str, np.ndarray]
    ) -> None:
        """Append a ``metrics.jsonl`` line, and an ``arrays.jsonl`` line when there are arrays."""
        line: dict[str, Any] = {"step": int(step)}
        for k, v in scalars.items():
            line[k] = encode_float(v) if isinstance(v, float) else jsonable(v)
        self._append(METRICS, line)
        if arrays:
            self._append(ARRAYS, {"step": int(step), **{k: jsonable(v) for k, v in arrays.items()}})

    def write_event(self, event: Mapping[str, Any]) -> None:
        """Append one ``events.jsonl`` line."""
        self._append(EVENTS, jsonable(event))

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        """Merge into ``summary.json``, rewritten atomically (temp file, then ``os.replace``)."""
        self._summary.update(summary)
        _atomic_write(self.run_dir / SUMMARY, json.dumps(jsonable(self._summary), indent=2) + "\n")

    def close(self) -> None:
        """Close the files; safe to call twice."""
        self._closed = True
        files, self._files = self._files, {}
        for f in files.values():
            f.close()

    def __repr__(self) -> str:
        return f"RunFolderSink({str(self.run_dir)!r})"


def _atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a reader sees the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
