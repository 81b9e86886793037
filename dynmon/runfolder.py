"""The run folder on disk: its file names, its JSON value convention, reading it back, naming it.

Layout (written by ``dynmon.sinks.local.RunFolderSink``)::

    config.json     the fully resolved configuration (pretty JSON)
    metrics.jsonl   one object per logged step: {"step": 12, "loss": 2.3, <dynmon key>: 5.1, ...}
    arrays.jsonl    one object per step that has arrays: {"step": 12, <dynmon key>: [[..]], ...}
    events.jsonl    one object per event: {"step": 300, "kind": "cliff", ...}
    summary.json    headline figures, merged and rewritten atomically
    hindsight.jsonl a pack's end-of-run series, one object per step (``write_hindsight``)

Every file is strict JSON (``jq``, pandas and browsers read it). JSON has no NaN or infinity, so
non-finite floats are written as the strings ``"NaN"``, ``"Infinity"`` and ``"-Infinity"``
(Python's own tokens, quoted); ``load_run`` turns those exact strings back into floats, and so does
``pandas.Series.astype(float)``. A ``null`` value, or Python's unquoted ``NaN`` token, also reads
back as NaN.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import numpy as np

try:  # a dependency; the standard library is the fallback
    from orjson import loads as _fast_loads
except ImportError:  # pragma: no cover
    _fast_loads = json.loads

CONFIG, METRICS, ARRAYS, EVENTS, SUMMARY, HINDSIGHT = (
    "config.json",
    "metrics.jsonl",
    "arrays.jsonl",
    "events.jsonl",
    "summary.json",
    "hindsight.jsonl",
)
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
INT64 = (-(2**63), 2**63 - 1)  # the steps NumPy's int64 arrays hold


# -- the value convention -------------------------------------------------------------------------
def encode_float(x: float) -> float | str:
    """A float as strict JSON allows it: itself when finite, else ``"NaN"``/``"±Infinity"``.

    >>> encode_float(1.5), encode_float(float("nan")), encode_float(-math.inf)
    (1.5, 'NaN', '-Infinity')
    """
    if math.isfinite(x):
        return x
    return "NaN" if math.isnan(x) else ("Infinity" if x > 0 else "-Infinity")


def jsonable(value: Any, *, encode_nonfinite: bool = True) -> Any:
    """JSON-safe data from dataclasses, paths, enums, NumPy and torch values (repr otherwise).

    Non-finite floats become ``"NaN"``/``"±Infinity"`` (the run folder's convention), or stay
    floats with ``encode_nonfinite=False``: what the Monitor hands every sink (W&B and
    TensorBoard take NaN floats; the local sink encodes them when it writes).

    >>> jsonable({"x": float("nan"), "n": (1, 2)})
    {'x': 'NaN', 'n': [1, 2]}
    >>> jsonable({"x": float("nan")}, encode_nonfinite=False)
    {'x': nan}
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return encode_float(float(value)) if encode_nonfinite else float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return _encode_array(value, encode_nonfinite)
    if hasattr(value, "detach") and hasattr(value, "is_floating_point"):  # torch, not imported
        t = value.detach().cpu()
        return _encode_array((t.double() if t.is_floating_point() else t).numpy(), encode_nonfinite)

    def inner(v: Any) -> Any:
        return jsonable(v, encode_nonfinite=encode_nonfinite)

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: inner(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): inner(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [inner(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [inner(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return inner(value.value)
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def _encode_array(a: np.ndarray, encode_nonfinite: bool = True) -> Any:
    """Nested lists, non-finite entries as their string tokens (kept as floats if asked)."""
    finite = a.dtype.kind == "f" and (not encode_nonfinite or bool(np.isfinite(a).all()))
    if a.dtype.kind in "iub" or finite:
        return a.tolist()
    return jsonable(a.tolist(), encode_nonfinite=encode_nonfinite)


def restore(value: Any) -> Any:
    """Undo the convention: ``"NaN"``/``"Infinity"``/``"-Infinity"`` back to floats, recursively.

    >>> restore({"loss": "NaN", "acc": [0.5, "Infinity"], "name": "run"})
    {'loss': nan, 'acc': [0.5, inf], 'name': 'run'}
    """
    if isinstance(value, str):
        return NONFINITE.get(value, value)
    if isinstance(value, list):
        return [restore(v) for v in value]
    if isinstance(value, dict):
        return {k: restore(v) for k, v in value.items()}
    return value


def dumps_line(obj: Mapping[str, Any]) -> str:
    """One compact strict-JSON line (no newline) for an already JSON-safe mapping."""
    return json.dumps(obj, allow_nan=False, ensure_ascii=False, separators=(",", ":"))


# -- reading a run back ---------------------------------------------------------------------------
@dataclass
class Run:
    """A run folder read back into memory; ``series`` and ``array_series`` give aligned arrays."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    arrays: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    hindsight: list[dict[str, Any]] = field(default_factory=list)
    _keys: tuple[int, list[str]] = field(default=(-1, []), init=False, repr=False, compare=False)

    @property
    def name(self) -> str:
        """The run's name: its folder's name."""
        return self.path.resolve().name

    def keys(self) -> list[str]:
        """Every scalar key logged at least once, in the order first seen."""
        if self._keys[0] != len(self.metrics):  # cached until rows are added
            self._keys = (len(self.metrics), _names(self.metrics))
        return list(self._keys[1])

    def array_names(self) -> list[str]:
        """Every array name logged at least once, in the order first seen."""
        return _names(self.arrays)

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one scalar, sorted by step, skipping steps that lack it.

        A step logged twice (a run resumed from an earlier checkpoint) keeps the value written last.
        """
        return _series_of(self.metrics, key)

    def array_series(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps [T], values [T, ...])`` of one array, sorted by step (last write wins)."""
        by_step: dict[int, np.ndarray] = {}
        for row in self.arrays:
            step = step_of(row)
            if name in row and step is not None:
                by_step[step] = row[name]
        steps = np.array(sorted(by_step), dtype=np.int64)
        if not by_step:
            return steps, np.empty((0,), dtype=np.float64)
        shapes = {by_step[s].shape for s in by_step}
        if len(shapes) > 1:
            raise ValueError(f"array {name!r} changes shape over the run: {sorted(shapes)}")
        return steps, np.stack([by_step[s] for s in steps.tolist()])

    def hindsight_keys(self) -> list[str]:
        """Every key of ``hindsight.jsonl``, in the order first seen."""
        return _names(self.hindsight)

    def hindsight_series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one ``hindsight.jsonl`` series, as ``series`` reads metrics."""
        return _series_of(self.hindsight, key)


def _names(rows: list[dict[str, Any]]) -> list[str]:
    """Every key of ``rows`` but ``step``, in the order first seen."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    seen.pop("step", None)
    return list(seen)


def _series_of(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """``(steps, values)`` of one scalar over rows, sorted by step (a step's last write kept)."""
    by_step: dict[int, float] = {}
    for row in rows:
        step = step_of(row)
        if key in row and step is not None:
            by_step[step] = _as_float(row[key])
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps.tolist()], dtype=np.float64)


def step_of(row: Mapping[str, Any]) -> int | None:
    """A row's ``"step"`` as an int NumPy can hold, or None when it is missing or not one (a
    hand-edited ``"abc"`` or ``12.5``, a bool, a step beyond int64)."""
    step = row.get("step")
    if isinstance(step, float) and step.is_integer():
        step = int(step)
    if not isinstance(step, int) or isinstance(step, bool):
        return None
    return step if INT64[0] <= step <= INT64[1] else None


def _valid_steps(rows: list[dict[str, Any]], path: Path) -> list[dict[str, Any]]:
    """Rows whose step is usable, steps normalised to int; the others skipped with one warning."""
    kept, bad = [], []
    for row in rows:
        step = step_of(row)
        if step is None:
            bad.append(row.get("step"))
            continue
        row["step"] = step
        kept.append(row)
    if bad:
        warnings.warn(
            f"dynmon: skipped {len(bad)} row(s) of {path} whose step is not an integer within "
            f"int64 (e.g. {bad[0]!r}); fix or remove those lines",
            RuntimeWarning,
            stacklevel=3,
        )
    return kept


def _as_float(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(NONFINITE.get(v, v)) if isinstance(v, str) else float(v)
    except (TypeError, ValueError):
        return math.nan


def load_run(path: str | Path) -> Run:
    """Read a run folder written by ``RunFolderSink`` (a run still being written is fine)."""
    path = Path(path)
    expected = f"a dynmon run folder with {METRICS} (and {CONFIG}, {EVENTS}, {SUMMARY})"
    if not path.is_dir():
        raise FileNotFoundError(f"no run folder at {path}: expected {expected}")
    if not (path / METRICS).is_file():
        raise FileNotFoundError(f"{path} has no {METRICS}: expected {expected}")
    arrays = [
        {k: v if k == "step" else _as_array(v) for k, v in row.items()}
        for row in _valid_steps(
            [r for r in read_jsonl(path / ARRAYS) if "step" in r], path / ARRAYS
        )
    ]
    metrics = [r for r in read_jsonl(path / METRICS) if "step" in r]
    return Run(
        path=path,
        config=_read_json(path / CONFIG),
        metrics=[restore(r) for r in _valid_steps(metrics, path / METRICS)],
        arrays=arrays,
        events=[restore(r) for r in _valid_steps(read_jsonl(path / EVENTS), path / EVENTS)],
        summary=_read_json(path / SUMMARY),
        hindsight=[
            restore(r) for r in _valid_steps(read_jsonl(path / HINDSIGHT), path / HINDSIGHT)
        ],
    )


def write_hindsight(run_dir: str | Path, rows: list[Mapping[str, Any]]) -> Path:
    """Write a pack's end-of-run series to ``hindsight.jsonl`` (replacing it), one row per step.

    Every row needs an integer ``"step"``; values take the run folder's convention (non-finite
    floats as ``"NaN"``/``"±Infinity"``), so ``load_run(...).hindsight_series`` reads them back.
    Written to a temporary file first, then renamed: a failed write leaves the old file whole.
    """
    path = Path(run_dir) / HINDSIGHT
    lines = []
    for i, row in enumerate(rows):
        if step_of(row) is None:
            raise ValueError(
                f"hindsight row {i} has no integer 'step' (got {row.get('step')!r}); give every "
                "row the training step it belongs to"
            )
        lines.append(dumps_line(jsonable({**row, "step": step_of(row)})) + "\n")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(lines), encoding="utf-8")
    os.replace(tmp, path)
    return path


def _as_array(v: Any) -> np.ndarray:
    """An ``arrays.jsonl`` value as float64 (entries that are not numbers read as NaN)."""
    try:
        return np.asarray(restore(v), dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray(math.nan)


def parse_line(line: bytes | str) -> dict[str, Any] | None:
    """One JSON object (a JSON-lines row, or a whole config/summary file), or None when it does
    not parse (a killed writer's cut line) or is not an object. The one parser of run files:
    orjson where present (about 4x faster on float-heavy rows), Python's json for the bare
    ``NaN``/``Infinity`` tokens strict parsers refuse."""
    try:
        obj = _fast_loads(line)
    except ValueError:
        try:
            obj = json.loads(line)
        except ValueError:
            return None
    return obj if isinstance(obj, dict) else None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """The objects of a JSON-lines file; lines that do not parse (a killed writer's last, cut
    line) are skipped with one warning. A missing file reads as empty."""
    if not path.is_file():
        return []
    rows, bad = [], []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = parse_line(line)
            if obj is None:
                bad.append(lineno)
            else:
                rows.append(obj)
    if bad:
        warnings.warn(
            f"dynmon: skipped {len(bad)} unreadable line(s) of {path} (line {bad[:5]}); a writer "
            "killed mid-line leaves a cut last line",
            RuntimeWarning,
            stacklevel=3,
        )
    return rows


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        warnings.warn(f"dynmon: {path} is not valid JSON ({exc}); ignored", RuntimeWarning, 3)
        return {}
    return restore(obj) if isinstance(obj, dict) else {}


# -- naming a new run -----------------------------------------------------------------------------
def new_run_dir(root: str | Path = "runs", prefix: str | None = None) -> Path:
    """Create and return a fresh ``root/[prefix-]YYYYmmdd-HHMMSS[-n]`` folder (unique even when
    several runs start within the same second)."""
    root = Path(root)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = f"{prefix}-{stamp}" if prefix else stamp
    for n in itertools.count():
        candidate = root / (base if n == 0 else f"{base}-{n}")
        try:
            candidate.mkdir(parents=True)
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")


# -- reusing an output folder ---------------------------------------------------------------------
class UnsafeOutput(ValueError):
    """An output folder dynmon will not write into or delete; the message says why."""


def is_run_folder(path: str | Path) -> bool:
    """Whether ``path`` is a run folder dynmon wrote: it holds the writer's lock file, or a
    ``config.json`` with a ``dynmon`` section."""
    from dynmon.lock import LOCK_NAME

    path = Path(path)
    if (path / LOCK_NAME).is_file():
        return True
    try:
        config = json.loads((path / CONFIG).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and isinstance(config.get("dynmon"), dict)


def removal_refusal(path: str | Path) -> str | None:
    """Why ``--overwrite`` must not delete ``path`` (None: it is a dynmon run folder nobody is
    writing, and not the current directory, one of its parents, the home folder, ``/`` or a
    git repository)."""
    from dynmon.lock import holder, is_locked

    path = Path(path)
    if path.is_symlink():
        return f"{path} is a symbolic link; dynmon deletes only real run folders"
    if not path.is_dir():
        return f"{path} is not a folder"
    real = path.resolve()
    cwd = Path.cwd().resolve()
    if real == Path(real.anchor):
        return f"{path} is the file system root"
    if real == cwd or real in cwd.parents:
        return f"{path} is the current directory or one of its parents"
    home = Path.home().resolve()
    if real == home or real in home.parents:
        return f"{path} is your home folder or one of its parents"
    if (real / ".git").exists():
        return f"{path} is a git repository"
    if not is_run_folder(real):
        return (
            f"{path} is not a dynmon run folder (no {CONFIG} with a dynmon section and no lock "
            "file), so it may hold files dynmon did not write"
        )
    if is_locked(real):
        return f"{path} is being written right now by {holder(real)}"
    return None


def prepare_output(path: str | Path, *, overwrite: bool = False, command: str = "dynmon") -> Path:
    """Make ``path`` ready for a new run: absent or empty is fine; a used folder is refused, or,
    with ``overwrite``, deleted when ``removal_refusal`` allows it. Raises ``UnsafeOutput``."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UnsafeOutput(f"{command}: {path} is a file, not a folder; choose another output")
    if not path.is_dir() or not any(path.iterdir()):
        return path
    if not overwrite:
        what = (
            "already holds a dynmon run (appending would mix two runs in one metrics.jsonl); "
            "choose another output, or pass --overwrite to delete it and start again"
            if is_run_folder(path)
            else "is not empty and holds no dynmon run; choose a new or empty folder (--overwrite "
            "deletes only dynmon run folders)"
        )
        raise UnsafeOutput(f"{command}: {path} {what}")
    reason = removal_refusal(path)
    if reason is not None:
        raise UnsafeOutput(
            f"{command}: --overwrite refused: {reason}; nothing was deleted. Choose another output"
        )
    shutil.rmtree(path)
    return path
