"""The Monitor: on a schedule, gather what the due metrics need, run them in isolation, log.

Only the Monitor owns schedules, state (snapshots, detectors), fault isolation and rank-0 logic;
metrics are pure functions (``dynmon.metrics``), sinks only write (``dynmon.sinks``).

One file (~1,000 lines) on purpose: construction, the schedule, the look (gather inputs, run
metrics in isolation, one host transfer), logging, detectors and checkpointing share the
Monitor's state, and splitting the class would scatter that state; the self-contained guards
(argument checks, output checks, watchdog) are in ``dynmon.guards``.
"""

from __future__ import annotations

import contextlib
import math
import time
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from dynmon import adapters, distributed
from dynmon.curves import Series, default_series
from dynmon.events import Detector, default_detectors
from dynmon.guards import Watchdog, check_monitor_args, check_output, degenerate_heads
from dynmon.keys import is_dynmon_key
from dynmon.metrics.inputs import head_pass
from dynmon.metrics.spec import HEAD_NEEDS, LookContext, MetricSpec, Need, Output
from dynmon.metrics.table import METRICS, PRESETS
from dynmon.runfolder import jsonable, new_run_dir
from dynmon.schedule import Schedule, as_schedule, every, logspace
from dynmon.sinks import Sink, make_sink
from dynmon.threads import intra_op_threads

MAX_EVENTS = 10_000  # events kept in memory (all of them go to the sinks)
KNOWN_NEEDS = frozenset(typing.get_args(Need))  # what a MetricSpec may declare in ``needs``


def default_schedule() -> Schedule:
    """Dense early (log-spaced up to step 1,000), then every 100 steps."""
    return every(100) | logspace(1, 1000, 20)


@dataclass(frozen=True)
class MonitorConfig:
    """The Monitor's resolved configuration, written to ``config.json`` under ``dynmon``."""

    run_dir: str | None
    metrics: dict[str, str]  # metric name -> schedule repr
    schedule: str
    sinks: list[str]
    strict: bool
    options: dict[str, Any]
    reference_step: int | None
    seed: int
    model_class: str
    n_parameters: int
    attention_layers: list[dict[str, Any]]


class MetricError(RuntimeError):
    """A metric raised while ``strict=True``."""


# inputs that read every rank's full matrices: under FSDP2 a look gathers them first
GATHER_NEEDS = HEAD_NEEDS | {"weights", "prev_weights"}
# inputs a sharded model cannot give a single rank: switched off under FSDP2
UNSHARDABLE_NEEDS = frozenset({"grads", "prev_weights", "curvature"})
# inputs the layer-streamed head pass computes; a look that needs only "heads" skips the pass
PASS_NEEDS = HEAD_NEEDS - {"heads"}


_intra_op_threads = intra_op_threads  # the look's thread guard (dynmon/threads.py)


def _to_plain(value: Any) -> Any:
    """JSON-safe data for every sink, non-finite floats kept (the local sink encodes them)."""
    return jsonable(value, encode_nonfinite=False)


def _as_float(name: str, v: Any) -> float:
    """A Python number as a float; an integer too large for a float (``10**400``) becomes ±inf
    with a warning rather than an ``OverflowError`` in the training loop."""
    try:
        return float(v)
    except OverflowError:
        warnings.warn(
            f"dynmon: scalar {name!r} = {str(v)[:20]}... overflows a float; logged as infinite",
            RuntimeWarning,
            4,
        )
        return math.inf if v > 0 else -math.inf


def _to_host(t: Tensor) -> Tensor:
    """The one device-to-host transfer of a flush (``# sync point`` on an accelerator)."""
    return t.cpu()


def _to_host_values(
    rows: list[Mapping[str, Any]], arrays: Mapping[str, Any]
) -> tuple[list[dict[str, float]], dict[str, np.ndarray]]:
    """Rows of scalars (floats or one-number tensors) and per-head arrays, on the host.

    All tensors of one device travel in a single ``torch.cat`` and one ``_to_host`` call.
    """
    out: list[dict[str, float]] = [{} for _ in rows]
    pieces: dict[torch.device, list[tuple[Any, Tensor]]] = {}
    for i, row in enumerate(rows):
        for k, v in row.items():
            if isinstance(v, Tensor):
                pieces.setdefault(v.device, []).append(((i, k), v.detach().reshape(-1)))
            else:
                out[i][k] = float(v)
    host_arrays: dict[str, np.ndarray] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for k, v in arrays.items():
        v = torch.as_tensor(v)
        shapes[k] = tuple(v.shape)
        pieces.setdefault(v.device, []).append((k, v.detach().reshape(-1)))
    for items in pieces.values():
        flat = torch.cat([t.to(torch.float64) for _, t in items])
        host = _to_host(flat).numpy()  # sync point: the only one of a flush on this device
        offset = 0
        for where, t in items:
            n = t.numel()
            if isinstance(where, tuple):
                out[where[0]][where[1]] = float(host[offset])
            else:
                host_arrays[where] = host[offset : offset + n].reshape(shapes[where]).copy()
            offset += n
    return out, host_arrays


class Monitor:
    """Watch a model while it trains; call ``step()`` after every ``optimizer.step()``.

    Args:
        model: any PyTorch model (DDP / ``torch.compile`` wrappers are looked through).
        run_dir: local run folder; a fresh ``runs/<time>`` when None.
        schedule: when to look (``dynmon.every(k)``, ``dynmon.logspace(a, b, n)``, ``a | b``).
        metrics: ``"economy"`` (default), ``"full"``, metric names, your own ``MetricSpec``s
            (exactly those), or a dict ``{name or preset or MetricSpec: schedule}`` (None: the
            Monitor's schedule; False: leave it out). A dict that names no preset *adds* to the
            economy preset: ``{"sharpness": every(500)}`` is economy plus sharpness. A dict with
            a preset key *replaces* it: ``{"full": None, ...}``, or ``{"economy": False,
            "sharpness": every(500)}`` for sharpness alone. A ``MetricSpec`` may not reuse a
            built-in metric's name, and its ``needs`` must be among ``KNOWN_NEEDS``.
        sinks: ``["local"]`` (default), ``"wandb"``, ``"tensorboard"`` or Sink instances.
        strict: raise on a failing metric instead of reporting it once and switching it off.
        loss_fn, probe_batch: ``loss_fn(model, probe_batch) -> scalar`` for curvature metrics.
        optimizer: lets curvature report sharpness × learning rate (edge of stability).
        detectors: event detectors on logged scalars; None picks them from the keys seen.
        config: the run's own configuration (a dataclass or dict), written to ``config.json``.
        reference_step: the look used as reference for ``subspace_dist_ref`` (first look if None).
        options: metric options (``subspace_k``, ``marginal_k``, ``rank_tol``, curvature ``k``...);
            ``threads`` (default 1) is the number of CPU threads a look uses (None: as training);
            ``autocorr_window`` (50 logged losses) for ``dynmon/loss_autocorr_curv`` and
            ``norm_window`` (7 looks), ``norm_log_time`` for ``dynmon/norm_curvature``;
            ``metric_timeout_s`` (default None: off): a metric whose call runs longer is
            reported by a watchdog thread while it runs and switched off after it returns.
            Python cannot interrupt a running metric, so training still waits for that call.
        rank: this process's rank; only rank 0 computes and logs unless ``all_ranks=True``.
            Under DDP the other ranks do nothing. Under FSDP2 (``fully_shard``) every rank must
            create the Monitor and call ``step()``: on look steps, and only then, all ranks
            gather the shards with FSDP2's ``unshard()``; metrics that need gradients, the
            previous weights or the loss (curvature) are switched off there.
    """

    def __init__(
        self,
        model: nn.Module,
        run_dir: str | Path | None = None,
        schedule: Schedule | int | Iterable[int] | Callable[[int], bool] | None = None,
        metrics: str | Iterable[str] | Mapping[str, Any] | None = None,
        sinks: Iterable[str | Sink] | str | None = None,
        strict: bool = False,
        *,
        loss_fn: Callable[[nn.Module, Any], Tensor] | None = None,
        probe_batch: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        detectors: Iterable[Detector] | None = None,
        config: Any = None,
        reference_step: int | None = None,
        options: Mapping[str, Any] | None = None,
        seed: int = 0,
        rank: int | None = None,
        all_ranks: bool = False,
    ) -> None:
        check_monitor_args(model, run_dir, strict, options, seed, reference_step)
        self.model = model
        self.strict = strict
        self.loss_fn, self.probe_batch, self.optimizer = loss_fn, probe_batch, optimizer
        self.options = dict(options or {})
        self.reference_step = reference_step
        self.rank = distributed.rank() if rank is None else int(rank)
        self.active = all_ranks or self.rank == 0
        self.schedule = default_schedule() if schedule is None else as_schedule(schedule)
        self._metrics = self._resolve_metrics(metrics)
        # metrics that compare with the weights one step before: only they make a step copy them
        self._prev_needers = tuple(
            n for n, (spec, _) in self._metrics.items() if "prev_weights" in spec.needs
        )
        self._seconds: dict[str, float] = {}  # where the Monitor's time goes (``seconds``)
        self._generator = torch.Generator().manual_seed(seed)
        self._seed = seed
        self._snapshots: dict[str, Any] = {}
        self._references: dict[str, Any] = {}
        self._disabled: dict[str, str] = {}
        self._prev_weights: dict[str, Tensor] | None = None
        self._next_step = 0
        self._last_step: int | None = None
        self._looks = 0
        self._events: list[dict[str, Any]] = []
        self._summary: dict[str, Any] = {}
        self._user_detectors = detectors is not None
        self._detectors: list[Detector] = list(detectors) if detectors is not None else []
        self._seen_keys: set[str] = set()
        # learning-curve series over logged scalars, streamed with bounded state (dynmon.curves)
        self._series: list[Series] = default_series(self.options)
        self._closed = False
        self._warned_closed = False
        self._pending: list[tuple[int, dict[str, Any]]] = []  # rows not yet converted
        self._pending_tensors = False
        self._flush_every = int(self.options.get("flush_every", 25))
        self._train_threads = torch.get_num_threads()
        self.sinks: list[Sink] = []
        self._dropped_sinks: list[Sink] = []  # failed once; still offered the summary at close
        self.run_dir: Path | None = None
        self._sharded = distributed.is_sharded(model)
        if self._sharded:
            self._disable_unshardable()
        # under FSDP2 the set-up reads full matrices too: every rank gathers once here
        with distributed.gathered(model) if self._sharded else contextlib.nullcontext():
            if not self.active:
                return
            self._check_heads()
            self._open_sinks(run_dir, sinks)
            try:
                self._config = self._make_config(config, sinks)
                self._emit("write_config", self._config)
            except BaseException:  # a failed start must not keep the run folder locked
                for sink in self.sinks:
                    with contextlib.suppress(Exception):
                        sink.close()
                raise

    # -- set-up ---------------------------------------------------------------------------
    def _resolve_metrics(self, metrics: Any) -> dict[str, tuple[MetricSpec, Schedule | None]]:
        """Expand presets and names into ``{name: (spec, own schedule or None)}``.

        A dict that names no preset adds to ``economy``; one with a preset key replaces it; a
        value of False leaves that metric (or preset) out. Presets expand before single names,
        so a name's own schedule wins over its preset's.
        """
        if metrics is None:
            metrics = "economy"
        items: list[tuple[Any, Any]]
        if isinstance(metrics, (str, MetricSpec)):
            items = [(metrics, None)]
        elif isinstance(metrics, Mapping):
            items = list(metrics.items())
            if not any(isinstance(k, str) and k in PRESETS for k in metrics):
                items.insert(0, ("economy", None))  # extras add to the default preset
        elif isinstance(metrics, Iterable) and not isinstance(metrics, (bytes, Tensor)):
            items = [(m, None) for m in metrics]
        else:
            raise TypeError(
                f"metrics={metrics!r} is a {type(metrics).__name__}; pass a preset name "
                f"({', '.join(sorted(PRESETS))}), a list of metric names or MetricSpecs, or a "
                'dict {name: schedule}, e.g. {"sharpness": dynmon.every(500)}'
            )
        items.sort(key=lambda kv: not (isinstance(kv[0], str) and kv[0] in PRESETS))
        resolved: dict[str, tuple[MetricSpec, Schedule | None]] = {}
        for name, sched in items:
            specs = self._specs_of(name)
            if sched is False:
                for spec in specs:
                    resolved.pop(spec.name, None)
                continue
            try:
                own = None if sched is None else as_schedule(sched)
            except (TypeError, ValueError) as exc:
                raise type(exc)(f"metrics[{_label(name)!r}]: {exc}") from None
            for spec in specs:
                held = resolved.get(spec.name)
                if held is not None and held[0] is not spec:
                    raise ValueError(
                        f"two different metrics are named {spec.name!r}; give each MetricSpec "
                        "its own name"
                    )
                resolved[spec.name] = (spec, own)
        curvature = [n for n, (s, _) in resolved.items() if "curvature" in s.needs]
        if curvature and (self.loss_fn is None or self.probe_batch is None):
            raise ValueError(
                f"metrics {curvature} need the loss on a probe batch: pass "
                "loss_fn=lambda model, batch: <scalar loss> and probe_batch=<batch> to Monitor"
            )
        return resolved

    @staticmethod
    def _specs_of(name: Any) -> list[MetricSpec]:
        """The specs one ``metrics`` entry stands for, checked (built-in names are reserved)."""
        if isinstance(name, MetricSpec):
            builtin = METRICS.get(name.name)
            if builtin is not None and builtin is not name:
                raise ValueError(
                    f"your MetricSpec is named {name.name!r}, the name of a built-in metric; "
                    f"rename it (e.g. 'my_{name.name}') so both can be logged"
                )
            if isinstance(name.needs, str) or not all(isinstance(n, str) for n in name.needs):
                raise TypeError(
                    f"MetricSpec {name.name!r}: needs must be a set of strings, e.g. "
                    f"frozenset({{'heads'}}), got {name.needs!r}"
                )
            unknown = sorted(set(name.needs) - KNOWN_NEEDS)
            if unknown:
                raise ValueError(
                    f"MetricSpec {name.name!r} needs {unknown}, which the Monitor does not "
                    f"provide; known needs: {sorted(KNOWN_NEEDS)}"
                )
            if not callable(name.compute):
                raise TypeError(f"MetricSpec {name.name!r}: compute must be callable")
            return [name]
        if not isinstance(name, str):
            raise TypeError(
                f"metrics entry {name!r} is a {type(name).__name__}; use a metric name, a preset "
                "name or a MetricSpec"
            )
        names = PRESETS.get(name, (name,))
        unknown = [n for n in names if n not in METRICS]
        if unknown:
            raise ValueError(
                f"unknown metric {unknown[0]!r}; choose presets {sorted(PRESETS)} or metrics "
                f"{sorted(METRICS)}"
            )
        return [METRICS[n] for n in names]

    def _disable_unshardable(self) -> None:
        """Switch off metrics a sharded (FSDP2) model cannot serve, with one warning."""
        off = [n for n, (s, _) in self._metrics.items() if s.needs & UNSHARDABLE_NEEDS]
        for n in off:
            self._disabled[n] = "not available on an FSDP2-sharded model"
        if off and self.active:
            warnings.warn(
                f"dynmon: metrics {off} need gradients, the previous weights or the loss, which "
                "a fully_shard (FSDP2) model only has in shards; they are switched off. Run them "
                "under DDP or on a single process.",
                RuntimeWarning,
                3,
            )

    def _gather_due(self, step: int) -> bool:
        """Whether ``step`` is a look that reads full matrices, decided alike on every rank.

        Depends only on the step and the metrics asked for (not on which were switched off on
        rank 0), so every rank of a sharded model joins the same gathers.
        """
        return any(
            spec.needs & GATHER_NEEDS and (own or self.schedule)(step)
            for spec, own in self._metrics.values()
        )

    def _check_heads(self) -> None:
        """Drop per-head metrics (with one warning) when the adapters cannot give usable heads:
        no attention they know, an adapter that raises anything, or degenerate shapes."""
        wanted = [n for n, (s, _) in self._metrics.items() if s.needs & HEAD_NEEDS]
        if not wanted:
            return
        try:
            layers = adapters.heads(self.model)
            problem = degenerate_heads(layers)
        except Exception as exc:
            if self.strict:
                raise
            problem = (
                "no attention layers found"
                if isinstance(exc, ValueError)
                else f"the attention adapter failed: {exc!r}"
            )
            detail = f"{type(exc).__name__}: {exc}"
        else:
            if problem is None:
                self._layers = layers
                return
            if self.strict:
                raise ValueError(problem)
            detail = problem
        warnings.warn(
            f"dynmon: per-head metrics {wanted} switched off: {detail}", RuntimeWarning, 3
        )
        for n in wanted:
            self._disabled[n] = problem

    def _open_sinks(
        self, run_dir: str | Path | None, sinks: Iterable[str | Sink] | str | None
    ) -> None:
        specs = ["local"] if sinks is None else ([sinks] if isinstance(sinks, str) else list(sinks))
        if run_dir is not None:
            self.run_dir = Path(run_dir)
        elif any(isinstance(s, str) for s in specs):  # named sinks write into a run folder
            self.run_dir = new_run_dir()
        self.sinks = []
        try:
            for s in specs:
                self.sinks.append(make_sink(s, self.run_dir))
        except BaseException:  # e.g. the folder is locked: release what was opened, and the
            # sinks handed in ready-made (a W&B run a pack started with its group), as a start
            # that fails later closes them too
            handed = [s for s in specs if not isinstance(s, str) and s not in self.sinks]
            for sink in [*self.sinks, *handed]:
                with contextlib.suppress(Exception):
                    sink.close()
            raise

    def _make_config(self, user_config: Any, sinks: Any) -> dict[str, Any]:
        layers = getattr(self, "_layers", [])
        mon = MonitorConfig(
            run_dir=str(self.run_dir),
            metrics={
                n: repr(s) if s is not None else "default" for n, (_, s) in self._metrics.items()
            },
            schedule=repr(self.schedule),
            sinks=[s if isinstance(s, str) else type(s).__name__ for s in (sinks or ["local"])],
            strict=self.strict,
            options=_to_plain(self.options),
            reference_step=self.reference_step,
            seed=self._seed,
            model_class=type(adapters.unwrap(self.model)).__name__,
            n_parameters=sum(p.numel() for p in self.model.parameters()),
            attention_layers=[
                {"name": h.name, "n_heads": h.n_heads, "d_model": h.d_model, "d_head": h.d_head}
                for h in layers
            ],
        )
        cfg: dict[str, Any] = {"dynmon": _to_plain(mon)}
        if user_config is not None:
            cfg["run"] = _to_plain(user_config)
        return cfg

    # -- the hot path ---------------------------------------------------------------------
    def step(
        self, step: int | None = None, loss: Tensor | float | None = None, **scalars: Any
    ) -> None:
        """Record one training step (call after ``optimizer.step()``); look if the schedule says so.

        ``loss`` and ``scalars`` (e.g. ``test_acc=0.9`` or ``**{"test/acc": 0.9}``) are logged
        every call. Tensors stay on their device until the next look, or until
        ``options["flush_every"]`` steps have gathered (default 25, half a detector window), and
        are then converted together in one transfer: no host sync between looks.
        """
        if self._closed:
            if not self._warned_closed:
                self._warned_closed = True
                warnings.warn(
                    "dynmon: Monitor.step() after close() is ignored; create a new Monitor (or "
                    "load_state_dict into one) to keep recording",
                    RuntimeWarning,
                    2,
                )
            return
        step = self._next_step if step is None else self._check_step(step)
        if self._last_step is not None and step <= self._last_step:
            warnings.warn(
                f"dynmon: step {step} does not increase (the last was {self._last_step}); it is "
                "recorded, but load_run keeps only the last row of a repeated step. Pass the "
                "optimizer step count, or step=None to count calls",
                RuntimeWarning,
                2,
            )
        self._next_step = step + 1
        self._last_step = step
        gather = self._sharded and self._gather_due(step)
        if not self.active:
            if gather:  # join rank 0's all-gather; nothing else happens on this rank
                with distributed.gathered(self.model):
                    pass
            return
        t0 = time.perf_counter()
        try:
            with distributed.gathered(self.model) if gather else contextlib.nullcontext():
                self._step(step, loss, scalars)
        finally:
            self._add_seconds("step", t0)

    def _check_step(self, step: Any) -> int:
        """An integer step in the int64 range (what the run folder and its readers can hold)."""
        if isinstance(step, Tensor) and step.numel() == 1:
            step = step.item()  # sync point (pass a Python int to avoid it)
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            if isinstance(step, (float, np.floating)) and float(step).is_integer():
                step = int(step)
            else:
                raise TypeError(
                    f"dynmon: step must be an integer (the optimizer step count), got {step!r}"
                )
        step = int(step)
        if not 0 <= step < 2**63:
            raise ValueError(f"dynmon: step must be in [0, 2**63), got {step}")
        return step

    def _step(self, step: int, loss: Tensor | float | None, scalars: Mapping[str, Any]) -> None:
        """Rank 0's share of ``step``: keep the values, look if due, then write and detect."""
        values: dict[str, Any] = {}
        if loss is not None:
            values["loss"] = loss
        values.update(scalars)
        values = self._checked_values(values)
        due = self._due(step)
        self._pending.append((step, values))
        pending_tensors = self._pending_tensors or any(
            isinstance(v, Tensor) for v in values.values()
        )
        self._pending_tensors = pending_tensors
        if due or not pending_tensors or len(self._pending) >= self._flush_every:
            looked, arrays = self._look(step, due) if due else (None, {})
            t0 = time.perf_counter()
            self._flush(looked, arrays)
            self._add_seconds("rows", t0)
        if self._prev_needers or self._prev_weights is not None:
            self._keep_prev_weights(step + 1)

    def _due(self, step: int) -> list[tuple[str, MetricSpec]]:
        """The metrics due at ``step``, in table order; each distinct schedule is asked once
        (most metrics share the Monitor's)."""
        asked: dict[int, bool] = {}
        due = []
        for n, (spec, own) in self._metrics.items():
            if n in self._disabled:
                continue
            sched = own or self.schedule
            hit = asked.get(id(sched))
            if hit is None:
                hit = asked[id(sched)] = bool(sched(step))
            if hit:
                due.append((n, spec))
        return due

    def _add_seconds(self, part: str, since: float) -> None:
        self._seconds[part] = self._seconds.get(part, 0.0) + time.perf_counter() - since

    def _flush(
        self, looked: Mapping[str, Any] | None = None, arrays: Mapping[str, Any] | None = None
    ) -> None:
        """Convert the pending rows (and a look's outputs, which belong to the last row) in one
        transfer per device, then write each row and feed the detectors, in step order."""
        rows, tensors = self._pending, self._pending_tensors
        self._pending, self._pending_tensors = [], False
        if not rows and not looked:
            return
        if looked is None and not arrays and not tensors:  # Python floats only: nothing to move
            converted: list[dict[str, float]] = [dict(v) for _, v in rows]
            host_arrays: dict[str, np.ndarray] = {}
        else:
            parts: list[Mapping[str, Any]] = [v for _, v in rows] + [looked or {}]
            converted, host_arrays = _to_host_values(parts, arrays or {})
        for i, (row_step, _) in enumerate(rows):
            logged = converted[i]
            last = i == len(rows) - 1
            if last and looked is not None:
                logged.update(converted[-1])
            self._record_row(
                row_step, logged, host_arrays if last else {}, looked is not None and last
            )

    def _record_row(
        self, step: int, logged: dict[str, float], arrays: Mapping[str, np.ndarray], look: bool
    ) -> None:
        """Write one step's row and run the learning-curve series and detectors on it.

        A series' value for this step joins the row; one for an earlier step (a centred
        estimate) is written as its own row after it."""
        later: dict[int, dict[str, float]] = {}
        for series in self._series:
            if any(k in logged for k in series.keys):
                for at, row in series.update(step, logged, look=look).items():
                    (logged if at == step else later.setdefault(at, {})).update(row)
        if logged or arrays:
            self._emit("write", step, logged, dict(arrays))
        for at, row in sorted(later.items()):
            self._emit("write", at, row, {})
        self._detect(step, logged)

    def _checked_values(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Keep one-number tensors (detached, on their device) and finite-or-not Python numbers;
        anything else is reported (or raised when strict) and skipped."""
        out: dict[str, Any] = {}
        for k, v in values.items():
            if isinstance(v, Tensor):
                if v.numel() != 1:
                    self._bad_input(f"scalar {k!r} has shape {tuple(v.shape)}; log one number")
                    continue
                out[k] = v.detach().reshape(())
            elif isinstance(v, (bool, int, float, np.floating, np.integer)):
                out[k] = _as_float(k, v)
            else:
                self._bad_input(f"scalar {k!r} is a {type(v).__name__}; log a number or tensor")
        return out

    def _bad_input(self, message: str) -> None:
        if self.strict:
            raise TypeError(message)
        warnings.warn(f"dynmon: {message}; skipped", RuntimeWarning, 3)

    def _keep_prev_weights(self, next_step: int) -> None:
        """Copy the weights when a metric due at the next step compares against them."""
        needs_prev = any(
            (self._metrics[n][1] or self.schedule)(next_step)
            for n in self._prev_needers
            if n not in self._disabled
        )
        if needs_prev:
            with torch.no_grad():
                self._prev_weights = {
                    k: w.detach().clone() for k, w in adapters.weights(self.model).items()
                }
        else:
            self._prev_weights = None

    def _look(self, step: int, due: list[tuple[str, MetricSpec]]) -> tuple[dict, dict]:
        """Gather the merged needs of the due metrics once, run each metric in isolation.

        float32 matmuls run at full precision during a look (a training run that allows TF32
        or bf16 reductions would otherwise round the Gram matrices), restored afterwards."""
        self._train_threads = torch.get_num_threads()
        precision = torch.get_float32_matmul_precision()
        torch.set_float32_matmul_precision("highest")
        try:
            with _intra_op_threads(self.options.get("threads", 1)):
                return self._look_inner(step, due)
        finally:
            torch.set_float32_matmul_precision(precision)

    def _look_inner(self, step: int, due: list[tuple[str, MetricSpec]]) -> tuple[dict, dict]:
        needs = set().union(*(spec.needs for _, spec in due))
        scalars: dict[str, Tensor | float] = {}
        arrays: dict[str, Tensor] = {}
        is_reference = (self.reference_step is None and self._looks == 0) or (
            step == self.reference_step
        )
        t0 = time.perf_counter()
        with torch.no_grad():
            ctx = self._context(step, needs, due, is_reference)
        self._add_seconds("inputs", t0)
        if ctx is None:
            return {}, {}
        for name, spec in due:
            ctx.snapshot = self._snapshots.get(name)
            ctx.reference = self._references.get(name)
            t0 = time.perf_counter()
            out = self._run_metric(name, spec, ctx, step)
            self._add_seconds(f"metric/{name}", t0)
            if out is None:
                continue
            scalars.update(out.scalars)
            arrays.update(out.arrays)
            # -- events a metric detected (Output.events, e.g. head_roles formation events)
            for ev in out.events:
                self._record_event(ev)
            # --
            if out.snapshot is not None:
                self._snapshots[name] = out.snapshot
                if is_reference:
                    self._references[name] = out.snapshot
        ctx = None  # drop this look's inputs before converting
        self._looks += 1
        return scalars, arrays

    def _context(
        self, step: int, needs: set[str], due: list[tuple[str, MetricSpec]], is_reference: bool
    ) -> LookContext | None:
        ctx = LookContext(
            step=step,
            model=self.model,
            loss_fn=self.loss_fn,
            probe_batch=self.probe_batch,
            optimizer=self.optimizer,
            generator=self._generator,
            options=self.options,
            prev_weights=self._prev_weights,
        )
        try:
            if needs & HEAD_NEEDS:
                self._head_inputs(ctx, needs, due, is_reference)
            if needs & {"weights", "prev_weights"}:
                ctx.weights = adapters.weights(self.model)
            if "grads" in needs:
                ctx.grads = adapters.grads(self.model)
        except Exception as exc:  # an input nobody can compute: switch off whoever needs it
            for name, (spec, _) in self._metrics.items():
                if spec.needs & needs and name not in self._disabled:
                    self._fail(name, step, exc)
            return None
        return ctx

    def _head_inputs(
        self, ctx: LookContext, needs: set[str], due: list[tuple[str, MetricSpec]], ref: bool
    ) -> None:
        """One layer-streamed pass over the attention layers (``metrics.inputs.head_pass``), when a
        due metric needs spectra, subspaces or vectors (``PASS_NEEDS``); ``heads`` alone is the
        adapters' per-head weights.

        The drift state belongs to the metric that needs ``head_subspace``: its snapshot and
        reference go in, the new state comes out as ``ctx.head_state``.
        """
        if "heads" in needs:
            ctx.heads = adapters.heads(self.model)
        if not needs & PASS_NEEDS:  # per-head weights alone (head_roles): no spectra to take
            return
        layers = ctx.heads if ctx.heads else adapters.iter_heads(self.model, expand_kv=False)
        tracker = next((n for n, spec in due if "head_subspace" in spec.needs), None)
        result = head_pass(
            layers,
            track=tracker is not None,
            prev=self._snapshots.get(tracker) if tracker else None,
            ref=self._references.get(tracker) if tracker else None,
            is_reference=ref,
            store_device=self.options.get("snapshot_device"),
            vectors="head_svd" in needs,
        )
        ctx.spectra, ctx.n_heads, ctx.head_ranks = result.spectra, result.n_heads, result.ranks
        ctx.head_blocks, ctx.head_state, ctx.svd = result.blocks, result.state, result.svd

    def _run_metric(
        self, name: str, spec: MetricSpec, ctx: LookContext, step: int
    ) -> Output | None:
        """Run one metric; any exception or a result that is not an ``Output`` switches it off.

        With ``options["metric_timeout_s"]`` a watchdog thread warns while a call overruns and
        the metric is switched off once it returns (its result is still logged): Python cannot
        interrupt a running call, so training waits for it.
        """
        timeout = self.options.get("metric_timeout_s")
        watch = Watchdog(name, step, float(timeout)) if timeout else None
        try:
            with watch or contextlib.nullcontext():
                if "curvature" in spec.needs:  # forward/backward passes: the training's threads
                    with _intra_op_threads(self._train_threads):
                        out = spec.compute(ctx)
                else:
                    with torch.no_grad():
                        out = spec.compute(ctx)
            out = check_output(name, out)
        except Exception as exc:
            self._fail(name, step, exc)
            return None
        if watch is not None and watch.elapsed > watch.timeout_s:
            self._fail(
                name,
                step,
                TimeoutError(
                    f"took {watch.elapsed:.1f} s, over metric_timeout_s={watch.timeout_s:g}"
                ),
                kind="metric_timeout",
            )
        return out

    def _fail(self, name: str, step: int, exc: Exception, kind: str = "metric_error") -> None:
        """Report a failing metric once and switch it off (or raise when strict)."""
        if self.strict:
            raise MetricError(f"metric {name!r} failed at step {step}: {exc!r}") from exc
        self._disabled[name] = repr(exc)
        warnings.warn(
            f"dynmon: metric {name!r} failed at step {step} and is switched off: {exc!r}",
            RuntimeWarning,
            4,
        )
        self.log_event(
            kind,
            step,
            metric=name,
            error=repr(exc),
            message=f"metric {name} failed and was switched off: {exc}",
        )

    # -- events ---------------------------------------------------------------------------
    def _detect(self, step: int, values: Mapping[str, float]) -> None:
        """Feed logged scalars to the event detectors; write each event as soon as it is known."""
        user = {k: v for k, v in values.items() if not is_dynmon_key(k)}
        if not user:
            return
        if not self._user_detectors and not user.keys() <= self._seen_keys:
            self._seen_keys |= user.keys()
            self._add_default_detectors()
        for det in self._detectors:
            if not any(k in user for k in det.keys):
                continue
            try:
                events = det.update(step, user)
            except Exception as exc:
                if self.strict:
                    raise
                warnings.warn(
                    f"dynmon: detector {det!r} failed: {exc!r}; removed", RuntimeWarning, 2
                )
                self._detectors.remove(det)
                continue
            for ev in events:
                self._record_event(ev)

    def _add_default_detectors(self) -> None:
        """Add the default detectors for the keys seen so far (each kind and key once)."""
        have = {(type(d).__name__, tuple(d.keys)) for d in self._detectors}
        for det in default_detectors(sorted(self._seen_keys)):
            ident = (type(det).__name__, tuple(det.keys))
            if ident not in have:
                self._detectors.append(det)
                have.add(ident)

    def log_event(self, kind: str, step: int, **fields: Any) -> dict[str, Any]:
        """Record an event of the run's own (e.g. an experiment's phase boundary)."""
        event = {"step": int(step), "kind": kind, **_to_plain(fields)}
        self._record_event(event)
        return event

    def _record_event(self, event: Mapping[str, Any]) -> None:
        event = _to_plain(dict(event))
        if "step" not in event:  # every event carries the step it was detected at (resume)
            event["step"] = self._last_step if self._last_step is not None else 0
        if len(self._events) < MAX_EVENTS:
            self._events.append(event)
        self._emit("write_event", event)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Events so far (detected, reported by the run, or metric errors)."""
        return list(self._events)

    @property
    def last_event(self) -> dict[str, Any] | None:
        """The newest event (cheap to poll every step, unlike ``events``), or None."""
        return self._events[-1] if self._events else None

    @property
    def seconds(self) -> dict[str, float]:
        """Wall seconds spent inside the Monitor so far, by part: ``step`` (all of ``step()``),
        ``inputs`` (a look's shared inputs: head pass, weights, gradients), ``metric/<name>``
        (each metric's calls) and ``rows`` (converting, writing and running the series and
        detectors on logged rows). Timings, to find where a run's monitoring time goes."""
        return dict(self._seconds)

    @property
    def disabled(self) -> dict[str, str]:
        """Metrics switched off, with the reason."""
        return dict(self._disabled)

    # -- summary, sinks, lifecycle ----------------------------------------------------------
    def update_summary(self, figures: Mapping[str, Any] | None = None, **more: Any) -> None:
        """Merge headline figures into ``summary.json`` (and the other sinks)."""
        if not self.active:
            return
        self._summary.update(_to_plain({**(figures or {}), **more}))
        self._emit("write_summary", self._summary)

    def _emit(self, method: str, *args: Any) -> None:
        for sink in list(self.sinks):
            try:
                getattr(sink, method)(*args)
            except Exception as exc:
                if self.strict:
                    raise
                warnings.warn(
                    f"dynmon: sink {type(sink).__name__} failed in {method} and is dropped: "
                    f"{exc!r}; the other sinks keep recording",
                    RuntimeWarning,
                    3,
                )
                self.sinks.remove(sink)
                self._dropped_sinks.append(sink)

    def close(self) -> None:
        """Finish open events, write the summary and flush every sink. Safe to call twice.

        The summary is always attempted, also when a detector fails here or a sink was dropped
        earlier (a sink that failed to write rows may still take its summary)."""
        if self._closed or not self.active:
            self._closed = True
            return
        self._closed = True
        try:  # rows still waiting for their one transfer
            self._flush()
        except Exception as exc:
            warnings.warn(f"dynmon: writing the last rows failed: {exc!r}", RuntimeWarning, 2)
        step = self._last_step if self._last_step is not None else 0
        try:
            for series in self._series:
                try:
                    for at, row in sorted(series.finalize(step).items()):
                        self._emit("write", at, row, {})
                except Exception as exc:  # never lose the rest of the close
                    warnings.warn(
                        f"dynmon: series {series.name!r} failed at close: {exc!r}",
                        RuntimeWarning,
                        2,
                    )
            for det in self._detectors:
                try:
                    for ev in det.finalize(step):
                        self._record_event(ev)
                except Exception as exc:  # never lose the rest of the close
                    warnings.warn(
                        f"dynmon: detector {det!r} failed at close: {exc!r}", RuntimeWarning, 2
                    )
        finally:
            self._summary.setdefault("dynmon", {})
            self._summary["dynmon"] = {
                "last_step": self._last_step,
                "looks": self._looks,
                "events": len(self._events),
                "disabled_metrics": dict(self._disabled),
            }
            for sink in [*self.sinks, *self._dropped_sinks]:
                try:
                    sink.write_summary(self._summary)
                except Exception as exc:
                    warnings.warn(
                        f"dynmon: {type(sink).__name__} could not write the summary: {exc!r}",
                        RuntimeWarning,
                        2,
                    )
                try:
                    sink.close()
                except Exception as exc:
                    warnings.warn(
                        f"dynmon: closing {type(sink).__name__} failed: {exc!r}", RuntimeWarning, 2
                    )

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state ----------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs to continue its histories (``torch.save``-able).

        Pending rows are written first, so the saved state and the run folder agree."""
        if self.active and not self._closed:
            self._flush()
        return {
            "version": 3,
            "next_step": self._next_step,
            "last_step": self._last_step,
            "looks": self._looks,
            "snapshots": self._snapshots,
            "references": self._references,
            "disabled": dict(self._disabled),
            "generator": self._generator.get_state(),
            "summary": dict(self._summary),
            "events": list(self._events),
            "detectors": [
                {"type": type(d).__name__, "keys": list(d.keys), "state": d.state_dict()}
                for d in self._detectors
            ],
            "seen_keys": sorted(self._seen_keys),
            "series": {s.name: s.state_dict() for s in self._series},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state_dict()``: step counter, snapshots, references, detectors, events.

        The events detected after the saved step (by the run that crashed after saving it) are
        dropped from the sinks that can (``events.jsonl``), since the resumed run detects them
        again: a crash-and-resume run ends with the events of an uninterrupted one.
        """
        if not isinstance(state, Mapping) or state.get("version") not in (1, 2, 3):
            got = state.get("version") if isinstance(state, Mapping) else type(state).__name__
            raise ValueError(
                f"unknown dynmon Monitor state version {got!r}: pass what Monitor.state_dict() "
                "returned (versions 1 to 3 are read)"
            )
        self._next_step = int(state["next_step"])
        self._last_step = state["last_step"]
        self._looks = int(state["looks"])
        self._snapshots = dict(state["snapshots"])
        self._references = dict(state["references"])
        self._disabled = dict(state["disabled"])
        self._generator.set_state(state["generator"])
        self._summary = dict(state.get("summary", {}))
        self._seen_keys = set(state.get("seen_keys", []))
        self._events = [dict(e) for e in state.get("events", [])]
        if self.active:
            self._drop_events_after(self._last_step)
        # version 2 kept the two series at the top level, under their names
        saved_series = state.get("series") or {
            s.name: state[s.name] for s in self._series if s.name in state
        }
        for series in self._series:
            if series.name in saved_series:
                series.load_state_dict(saved_series[series.name])
        if not self._user_detectors and self._seen_keys:
            self._detectors = []
            self._add_default_detectors()
        by_id = {(type(d).__name__, tuple(d.keys)): d for d in self._detectors}
        for saved in state.get("detectors", []):
            det = by_id.get((saved["type"], tuple(saved["keys"])))
            if det is not None:
                det.load_state_dict(saved["state"])

    def _drop_events_after(self, step: int | None) -> None:
        """Ask each sink that can (the run folder) to forget events detected after ``step``."""
        for sink in self.sinks:
            drop = getattr(sink, "drop_events_after", None)
            if drop is None:
                continue
            try:
                drop(step)
            except Exception as exc:
                if self.strict:
                    raise
                warnings.warn(
                    f"dynmon: {sink!r} could not drop the events after step {step} on resume "
                    f"({exc!r}); they may appear twice",
                    RuntimeWarning,
                    3,
                )


def _label(name: Any) -> str:
    return name.name if isinstance(name, MetricSpec) else str(name)
